//! IDX files (MNIST, Fashion-MNIST), raw or gzipped.
//!
//! Format: big-endian magic `0x0000_08DD` (type 0x08 = u8, DD = number of dimensions), then DD
//! big-endian u32 sizes, then the bytes.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::{DataError, ImageSet, Split};

/// Reads a whole file, gunzipping when it starts with the gzip magic.
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, DataError> {
    let raw = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| DataError::corrupt(path, format!("corrupt gzip stream: {e}")))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Parses IDX bytes into (dims, payload), checking magic, type and length.
pub fn parse_idx<'a>(path: &Path, bytes: &'a [u8]) -> Result<(Vec<usize>, &'a [u8]), DataError> {
    if bytes.len() < 4 {
        return Err(DataError::corrupt(
            path,
            format!("truncated: {} bytes, no IDX header", bytes.len()),
        ));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(DataError::corrupt(
            path,
            format!(
                "wrong magic {:02x}{:02x}{:02x}{:02x}: not an IDX file",
                bytes[0], bytes[1], bytes[2], bytes[3]
            ),
        ));
    }
    if bytes[2] != 0x08 {
        return Err(DataError::corrupt(
            path,
            format!(
                "IDX element type 0x{:02x} is not unsigned byte (0x08)",
                bytes[2]
            ),
        ));
    }
    let nd = bytes[3] as usize;
    if nd == 0 || nd > 4 {
        return Err(DataError::corrupt(
            path,
            format!("IDX with {nd} dimensions"),
        ));
    }
    let header = 4 + 4 * nd;
    if bytes.len() < header {
        return Err(DataError::corrupt(path, "truncated IDX header"));
    }
    let dims: Vec<usize> = (0..nd)
        .map(|k| u32::from_be_bytes(bytes[4 + 4 * k..8 + 4 * k].try_into().unwrap()) as usize)
        .collect();
    let expect = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let Some(expect) = expect else {
        return Err(DataError::corrupt(
            path,
            format!("absurd dimensions {dims:?}"),
        ));
    };
    let got = bytes.len() - header;
    if got < expect {
        return Err(DataError::corrupt(
            path,
            format!("truncated: dimensions {dims:?} need {expect} data bytes, found {got}"),
        ));
    }
    if got > expect {
        return Err(DataError::corrupt(
            path,
            format!(
                "{} trailing bytes after {expect} data bytes for {dims:?}",
                got - expect
            ),
        ));
    }
    Ok((dims, &bytes[header..]))
}

/// Reads an image file (3 dims: N×H×W) and optionally a label file (1 dim: N, labels < 10).
pub fn read_images_labels(
    images: &Path,
    labels: Option<&Path>,
    name: &str,
) -> Result<ImageSet, DataError> {
    let bytes = read_maybe_gz(images)?;
    let (dims, data) = parse_idx(images, &bytes)?;
    if dims.len() != 3 {
        return Err(DataError::corrupt(
            images,
            format!("image file has dimensions {dims:?}, expected N×H×W"),
        ));
    }
    if dims[1] == 0 || dims[2] == 0 {
        return Err(DataError::corrupt(
            images,
            format!("empty images {}×{}", dims[1], dims[2]),
        ));
    }
    let labels = match labels {
        None => None,
        Some(lp) => {
            let lb = read_maybe_gz(lp)?;
            let (ld, l) = parse_idx(lp, &lb)?;
            if ld.len() != 1 {
                return Err(DataError::corrupt(
                    lp,
                    format!("label file has dimensions {ld:?}, expected N"),
                ));
            }
            if ld[0] != dims[0] {
                return Err(DataError::corrupt(
                    lp,
                    format!(
                        "{} labels for {} images in {}",
                        ld[0],
                        dims[0],
                        images.display()
                    ),
                ));
            }
            if let Some((i, &v)) = l.iter().enumerate().find(|(_, v)| **v > 9) {
                return Err(DataError::corrupt(
                    lp,
                    format!("label {v} at index {i} is outside 0..=9"),
                ));
            }
            Some(l.iter().map(|&v| v as u32).collect())
        }
    };
    Ok(ImageSet {
        name: name.to_string(),
        channels: 1,
        height: dims[1],
        width: dims[2],
        pixels: data.to_vec(),
        labels,
        class_names: Vec::new(),
    })
}

fn find(dir: &Path, stem: &str) -> Option<PathBuf> {
    [stem.to_string(), format!("{stem}.gz")]
        .into_iter()
        .map(|n| dir.join(n))
        .find(|p| p.exists())
}

/// True when `dir` holds MNIST-style IDX files.
pub fn looks_like_idx_dir(dir: &Path) -> bool {
    find(dir, "train-images-idx3-ubyte").is_some() || find(dir, "t10k-images-idx3-ubyte").is_some()
}

/// Opens `train-*`/`t10k-*` IDX files (raw or .gz) in `dir`.
pub fn open_mnist_dir(dir: &Path, split: Split, name: &str) -> anyhow::Result<ImageSet> {
    let prefix = match split {
        Split::Train => "train",
        Split::Test => "t10k",
    };
    let images = find(dir, &format!("{prefix}-images-idx3-ubyte"))
        .ok_or_else(|| anyhow::anyhow!("{}: no {prefix}-images-idx3-ubyte[.gz]", dir.display()))?;
    let labels = find(dir, &format!("{prefix}-labels-idx1-ubyte"));
    let mut set = read_images_labels(&images, labels.as_deref(), name)?;
    if name.contains("fashion") {
        set.class_names = FASHION_CLASSES.iter().map(|s| s.to_string()).collect();
    } else {
        set.class_names = (0..10).map(|d| d.to_string()).collect();
    }
    Ok(set)
}

/// Fashion-MNIST's class names.
pub const FASHION_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];
