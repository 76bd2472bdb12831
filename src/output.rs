//! Samples for external evaluators: one PNG per image, and NumPy `.npz` archives.
//!
//! The `.npz` holds one uint8 array N×H×W×C under the key `arr_0` (what `np.savez(path, x)`
//! writes and what guided-diffusion's evaluator reads). It is written here without NumPy: an
//! uncompressed ZIP archive with one member, `arr_0.npy`, in the NPY format version 1.0
//! (NumPy's `numpy.lib.format`): the magic `\x93NUMPY`, version 1.0, a little-endian u16 header
//! length, and a Python dict literal giving dtype, order and shape, padded with spaces and a
//! final newline so that the data starts at a multiple of 64 bytes.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};

/// CHW images (N·C·H·W bytes) to NHWC.
pub fn nchw_to_nhwc(pixels: &[u8], dims: [usize; 4]) -> Vec<u8> {
    let [n, c, h, w] = dims;
    assert_eq!(
        pixels.len(),
        n * c * h * w,
        "pixel count does not match {dims:?}"
    );
    let mut out = Vec::with_capacity(pixels.len());
    for i in 0..n {
        let img = &pixels[i * c * h * w..(i + 1) * c * h * w];
        for y in 0..h {
            for x in 0..w {
                for ch in 0..c {
                    out.push(img[(ch * h + y) * w + x]);
                }
            }
        }
    }
    out
}

/// An NPY (version 1.0) file of a uint8 array in C order.
pub fn npy_u8(data: &[u8], shape: &[usize]) -> Vec<u8> {
    assert_eq!(
        data.len(),
        shape.iter().product::<usize>(),
        "data length does not match shape {shape:?}"
    );
    let dims = match shape {
        [d] => format!("({d},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '|u1', 'fortran_order': False, 'shape': {dims}, }}");
    // As NumPy writes it: room for the first dimension to grow to 21 digits, then spaces and
    // a newline up to the next multiple of 64 of magic (6) + version (2) + length (2) + header.
    if let Some(d0) = shape.first() {
        header.push_str(&" ".repeat(21usize.saturating_sub(d0.to_string().len())));
    }
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(64 - unpadded % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

/// Parses an NPY file of a uint8 C-order array: (shape, data). Errors name `what`.
pub fn read_npy_u8(bytes: &[u8], what: &str) -> Result<(Vec<usize>, Vec<u8>)> {
    ensure!(
        bytes.len() >= 10 && bytes.starts_with(b"\x93NUMPY"),
        "{what}: not an NPY file (no \\x93NUMPY magic)"
    );
    let (major, hlen, start) = match bytes[6] {
        1 => (1, u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            bytes[6],
            u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize,
            12,
        ),
        v => bail!("{what}: NPY version {v} is not supported"),
    };
    ensure!(
        bytes.len() >= start + hlen,
        "{what}: truncated NPY header (version {major})"
    );
    let header = std::str::from_utf8(&bytes[start..start + hlen])
        .with_context(|| format!("{what}: NPY header is not text"))?;
    let field = |key: &str| -> Result<&str> {
        let k = format!("'{key}':");
        let at = header
            .find(&k)
            .with_context(|| format!("{what}: NPY header lacks {key}: {header:?}"))?;
        Ok(header[at + k.len()..].trim_start())
    };
    let descr = field("descr")?;
    ensure!(
        descr.starts_with("'|u1'") || descr.starts_with("'u1'"),
        "{what}: dtype {} is not uint8",
        descr.split(',').next().unwrap_or("")
    );
    ensure!(
        field("fortran_order")?.starts_with("False"),
        "{what}: Fortran-order arrays are not supported"
    );
    let shape_text = field("shape")?;
    let close = shape_text
        .find(')')
        .with_context(|| format!("{what}: bad shape in NPY header {header:?}"))?;
    let shape: Vec<usize> = shape_text[1..close]
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .with_context(|| format!("{what}: bad dimension {s:?} in NPY header"))
        })
        .collect::<Result<_>>()?;
    let n: usize = shape.iter().product();
    let data = &bytes[start + hlen..];
    ensure!(
        data.len() == n,
        "{what}: shape {shape:?} needs {n} bytes, found {}",
        data.len()
    );
    Ok((shape, data.to_vec()))
}

/// CRC-32 (ISO-HDLC, as ZIP uses it).
pub fn crc32(data: &[u8]) -> u32 {
    let mut c = flate2::Crc::new();
    c.update(data);
    c.sum()
}

/// An uncompressed ("stored") ZIP archive of the given members, without ZIP64: every member
/// and the whole archive must stay under 4 GiB. Timestamps are 1980-01-01 00:00, so the bytes
/// depend on the contents only.
pub fn zip_stored(members: &[(&str, &[u8])]) -> Result<Vec<u8>> {
    const DOS_DATE: u16 = (1 << 5) | 1; // 1980-01-01
    let total: usize = members
        .iter()
        .map(|(n, d)| 76 + 2 * n.len() + d.len())
        .sum();
    ensure!(
        total + 22 <= u32::MAX as usize && members.len() <= u16::MAX as usize,
        "{} bytes in {} members need ZIP64, which is not implemented: write fewer images per file",
        total,
        members.len()
    );
    let mut out = Vec::with_capacity(total + 22);
    let mut central = Vec::new();
    for (name, data) in members {
        let crc = crc32(data);
        let offset = out.len() as u32;
        let common = |v: &mut Vec<u8>| {
            v.extend_from_slice(&20u16.to_le_bytes()); // version needed: 2.0
            v.extend_from_slice(&0u16.to_le_bytes()); // flags
            v.extend_from_slice(&0u16.to_le_bytes()); // method: stored
            v.extend_from_slice(&0u16.to_le_bytes()); // time
            v.extend_from_slice(&DOS_DATE.to_le_bytes());
            v.extend_from_slice(&crc.to_le_bytes());
            v.extend_from_slice(&(data.len() as u32).to_le_bytes()); // compressed
            v.extend_from_slice(&(data.len() as u32).to_le_bytes()); // uncompressed
            v.extend_from_slice(&(name.len() as u16).to_le_bytes());
            v.extend_from_slice(&0u16.to_le_bytes()); // extra length
        };
        out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        common(&mut out);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(data);
        central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        central.extend_from_slice(&20u16.to_le_bytes()); // version made by
        common(&mut central);
        central.extend_from_slice(&0u16.to_le_bytes()); // comment length
        central.extend_from_slice(&0u16.to_le_bytes()); // disk number
        central.extend_from_slice(&0u16.to_le_bytes()); // internal attributes
        central.extend_from_slice(&0u32.to_le_bytes()); // external attributes
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(name.as_bytes());
    }
    let cd_offset = out.len() as u32;
    out.extend_from_slice(&central);
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]); // this disk, disk with the directory
    out.extend_from_slice(&(members.len() as u16).to_le_bytes());
    out.extend_from_slice(&(members.len() as u16).to_le_bytes());
    out.extend_from_slice(&(central.len() as u32).to_le_bytes());
    out.extend_from_slice(&cd_offset.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes()); // comment length
    Ok(out)
}

/// The `.npz` bytes of CHW uint8 images: `arr_0` = N×H×W×C.
pub fn npz_images(pixels: &[u8], dims: [usize; 4]) -> Result<Vec<u8>> {
    let [n, c, h, w] = dims;
    let npy = npy_u8(&nchw_to_nhwc(pixels, dims), &[n, h, w, c]);
    zip_stored(&[("arr_0.npy", &npy)])
}

/// Writes CHW uint8 images as a `.npz` (`arr_0` = N×H×W×C), atomically.
pub fn save_npz(pixels: &[u8], dims: [usize; 4], path: &Path) -> Result<()> {
    let bytes = npz_images(pixels, dims)?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    crate::tensorfile::write_atomic(path, &bytes)
}

/// Reads the uint8 array `key` (e.g. `arr_0`) of a `.npz` written by [`save_npz`] or by NumPy
/// (`np.savez`, uncompressed or deflated): (shape, data).
pub fn read_npz_u8(path: &Path, key: &str) -> Result<(Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let members = crate::torchscript::read_zip(path, &bytes)?;
    let name = format!("{key}.npy");
    let npy = members.get(&name).with_context(|| {
        let mut have: Vec<&String> = members.keys().collect();
        have.sort();
        format!("{}: no array `{key}` (members: {have:?})", path.display())
    })?;
    read_npy_u8(npy, &format!("{}:{name}", path.display()))
}

/// Writes CHW uint8 images as one PNG each, `000000.png`, `000001.png`, … (grey or RGB), into
/// `dir`, which must not hold PNG files yet (stale images would mix into an evaluation).
pub fn save_pngs(pixels: &[u8], dims: [usize; 4], dir: &Path) -> Result<Vec<PathBuf>> {
    let [n, c, h, w] = dims;
    ensure!(
        c == 1 || c == 3,
        "{c}-channel images cannot be written as PNG"
    );
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let existing = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "png"))
        .count();
    ensure!(
        existing == 0,
        "{}: already holds {existing} PNG files; choose an empty folder",
        dir.display()
    );
    let nhwc = nchw_to_nhwc(pixels, dims);
    let mut paths = Vec::with_capacity(n);
    for i in 0..n {
        let img = &nhwc[i * h * w * c..(i + 1) * h * w * c];
        let p = dir.join(format!("{i:06}.png"));
        let color = if c == 1 {
            image::ExtendedColorType::L8
        } else {
            image::ExtendedColorType::Rgb8
        };
        image::save_buffer(&p, img, w as u32, h as u32, color)
            .with_context(|| format!("writing {}", p.display()))?;
        paths.push(p);
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_is_numpys() {
        // The header NumPy 2.4 writes for a (2, 3, 4, 1) uint8 array (np.save): the dict,
        // spaces up to 118 bytes with the newline, the data at byte 128.
        let data: Vec<u8> = (0..24).collect();
        let b = npy_u8(&data, &[2, 3, 4, 1]);
        let header = "{'descr': '|u1', 'fortran_order': False, 'shape': (2, 3, 4, 1), }";
        let mut want = b"\x93NUMPY\x01\x00".to_vec();
        want.extend_from_slice(&118u16.to_le_bytes());
        want.extend_from_slice(header.as_bytes());
        want.extend(std::iter::repeat_n(b' ', 118 - 1 - header.len()));
        want.push(b'\n');
        want.extend_from_slice(&data);
        assert_eq!(header.len(), 65);
        assert_eq!(b, want);
        assert_eq!(b.len() - 24, 128);
        let (shape, back) = read_npy_u8(&b, "t").unwrap();
        assert_eq!((shape, back), (vec![2, 3, 4, 1], data));
        // One dimension: Python's one-element tuple.
        let b = npy_u8(&[7, 8, 9], &[3]);
        assert!(
            std::str::from_utf8(&b[10..128])
                .unwrap()
                .contains("'shape': (3,), }")
        );
        assert_eq!(
            u16::from_le_bytes([b[8], b[9]]),
            118,
            "as NumPy 2.4 writes it"
        );
        assert_eq!(read_npy_u8(&b, "t").unwrap(), (vec![3], vec![7, 8, 9]));
    }

    #[test]
    fn crc_and_zip_layout() {
        // The CRC-32 check value.
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        let z = zip_stored(&[("a.npy", b"hello"), ("b", b"")]).unwrap();
        // Local header of the first member: signature, version 20, stored, CRC, sizes, name.
        assert_eq!(&z[0..4], b"PK\x03\x04");
        assert_eq!(u16::from_le_bytes([z[8], z[9]]), 0, "stored");
        assert_eq!(
            u32::from_le_bytes(z[14..18].try_into().unwrap()),
            crc32(b"hello")
        );
        assert_eq!(&z[30..35], b"a.npy");
        assert_eq!(&z[35..40], b"hello");
        // 2 local headers (30 + name) + data, 2 directory entries (46 + name), the end record.
        assert_eq!(z.len(), (30 + 5 + 5) + (30 + 1) + (46 + 5) + (46 + 1) + 22);
        let members = crate::torchscript::read_zip(Path::new("t.zip"), &z).unwrap();
        assert_eq!(members["a.npy"], b"hello");
        assert_eq!(members["b"], b"");
    }

    #[test]
    fn nhwc_order() {
        // Two 1×2 RGB images: CHW planes → interleaved pixels.
        let chw = [1, 2, 10, 20, 100, 200, 3, 4, 30, 40, 130, 140];
        assert_eq!(
            nchw_to_nhwc(&chw, [2, 3, 1, 2]),
            vec![1, 10, 100, 2, 20, 200, 3, 30, 130, 4, 40, 140]
        );
    }
}
