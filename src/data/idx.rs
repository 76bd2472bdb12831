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

/// The file names IDX data sets are distributed under, for `train`/`t10k` and `images`/`labels`:
/// dashed (`train-images-idx3-ubyte`, as on Yann LeCun's and Zalando's pages) or dotted
/// (`train-images.idx3-ubyte`, as in many re-distributions), raw or gzipped.
pub fn idx_names(prefix: &str, kind: &str) -> Vec<String> {
    let rank = if kind == "images" { 3 } else { 1 };
    let mut names = Vec::new();
    for stem in [
        format!("{prefix}-{kind}-idx{rank}-ubyte"),
        format!("{prefix}-{kind}.idx{rank}-ubyte"),
    ] {
        names.push(format!("{stem}.gz"));
        names.push(stem);
    }
    names
}

fn split_prefix(split: Split) -> &'static str {
    match split {
        Split::Train => "train",
        Split::Test => "t10k",
    }
}

fn find(dir: &Path, names: &[String]) -> Option<PathBuf> {
    names.iter().map(|n| dir.join(n)).find(|p| p.is_file())
}

/// True when `dir` holds MNIST-style IDX image files (any common name, either split).
pub fn looks_like_idx_dir(dir: &Path) -> bool {
    ["train", "t10k"]
        .iter()
        .any(|p| find(dir, &idx_names(p, "images")).is_some())
}

/// Opens the `train`/`t10k` IDX files of `dir` (names as in [`idx_names`]); the labels are
/// optional. When the images are missing the error lists every name looked for.
pub fn open_mnist_dir(dir: &Path, split: Split, name: &str) -> anyhow::Result<ImageSet> {
    let prefix = split_prefix(split);
    let names = idx_names(prefix, "images");
    let images = find(dir, &names).ok_or_else(|| {
        anyhow::anyhow!(
            "{}: no {} images: looked for {}",
            dir.display(),
            if prefix == "t10k" { "test" } else { "training" },
            names.join(", ")
        )
    })?;
    let labels = find(dir, &idx_names(prefix, "labels"));
    let mut set = read_images_labels(&images, labels.as_deref(), name)?;
    set.class_names = class_names(name);
    Ok(set)
}

/// The label files that may sit beside an images file: `images` → `labels` and `idx3` →
/// `idx1` in its name, with or without `.gz`.
pub fn labels_beside(images: &Path) -> Vec<PathBuf> {
    let Some(file) = images.file_name().and_then(|f| f.to_str()) else {
        return Vec::new();
    };
    let stem = file.strip_suffix(".gz").unwrap_or(file);
    let label = stem.replace("images", "labels").replace("idx3", "idx1");
    if label == stem {
        return Vec::new();
    }
    let dir = images.parent().unwrap_or(Path::new(""));
    vec![dir.join(format!("{label}.gz")), dir.join(label)]
}

/// True when `path` is an IDX file of 3-dimensional unsigned bytes (magic 0x00000803), raw or
/// gzipped; only the first bytes are read.
pub fn is_idx3_file(path: &Path) -> bool {
    let Ok(f) = std::fs::File::open(path) else {
        return false;
    };
    let mut head = [0u8; 4];
    let mut raw = std::io::BufReader::new(f);
    let gz = {
        use std::io::BufRead;
        raw.fill_buf()
            .map(|b| b.starts_with(&[0x1f, 0x8b]))
            .unwrap_or(false)
    };
    let ok = if gz {
        flate2::read::MultiGzDecoder::new(raw)
            .read_exact(&mut head)
            .is_ok()
    } else {
        raw.read_exact(&mut head).is_ok()
    };
    ok && head == [0, 0, 8, 3]
}

/// Opens an IDX images file given directly (e.g. `train-images.idx3-ubyte.gz`), with the
/// labels beside it when present (see [`labels_beside`]).
pub fn open_idx_file(images: &Path, name: &str) -> anyhow::Result<ImageSet> {
    let labels = labels_beside(images).into_iter().find(|p| p.is_file());
    let mut set = read_images_labels(images, labels.as_deref(), name)?;
    set.class_names = class_names(name);
    Ok(set)
}

fn class_names(name: &str) -> Vec<String> {
    if name.contains("fashion") {
        FASHION_CLASSES.iter().map(|s| s.to_string()).collect()
    } else {
        (0..10).map(|d| d.to_string()).collect()
    }
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
