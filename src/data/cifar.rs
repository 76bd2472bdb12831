//! CIFAR-10 binary batches: records of 1 label byte + 3072 pixel bytes (R, G, B planes of
//! 32×32), 10000 records per `data_batch_N.bin` / `test_batch.bin`.

use std::path::{Path, PathBuf};

use super::{DataError, ImageSet, Split};

const RECORD: usize = 1 + 3 * 32 * 32;

/// CIFAR-10's class names.
pub const CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// Parses one batch file's bytes.
pub fn parse_batch(path: &Path, bytes: &[u8], set: &mut ImageSet) -> Result<(), DataError> {
    if bytes.is_empty() {
        return Err(DataError::corrupt(path, "empty file"));
    }
    if !bytes.len().is_multiple_of(RECORD) {
        return Err(DataError::corrupt(
            path,
            format!(
                "{} bytes is not a whole number of {RECORD}-byte CIFAR-10 records (truncated or not a CIFAR-10 batch; {} bytes past the last whole record)",
                bytes.len(),
                bytes.len() % RECORD
            ),
        ));
    }
    let labels = set.labels.get_or_insert_with(Vec::new);
    for (i, rec) in bytes.chunks_exact(RECORD).enumerate() {
        if rec[0] > 9 {
            return Err(DataError::corrupt(
                path,
                format!("record {i}: label {} is outside 0..=9", rec[0]),
            ));
        }
        labels.push(rec[0] as u32);
        set.pixels.extend_from_slice(&rec[1..]);
    }
    Ok(())
}

/// True when `dir` holds CIFAR-10 batches.
pub fn looks_like_cifar(dir: &Path) -> bool {
    dir.join("data_batch_1.bin").exists() || dir.join("test_batch.bin").exists()
}

/// Opens `data_batch_1..5.bin` (train) or `test_batch.bin` (test) in `dir`.
pub fn open_dir(dir: &Path, split: Split) -> anyhow::Result<ImageSet> {
    let files: Vec<PathBuf> = match split {
        Split::Train => (1..=5)
            .map(|k| dir.join(format!("data_batch_{k}.bin")))
            .filter(|p| p.exists())
            .collect(),
        Split::Test => vec![dir.join("test_batch.bin")],
    };
    if files.is_empty() || !files[0].exists() {
        anyhow::bail!(
            "{}: no CIFAR-10 {split:?} batches (data_batch_N.bin / test_batch.bin)",
            dir.display()
        );
    }
    let mut set = ImageSet {
        name: format!("cifar10:{}", dir.display()),
        channels: 3,
        height: 32,
        width: 32,
        pixels: Vec::new(),
        labels: None,
        class_names: CLASSES.iter().map(|s| s.to_string()).collect(),
    };
    for f in files {
        let bytes = std::fs::read(&f).map_err(|source| DataError::Io {
            path: f.clone(),
            source,
        })?;
        parse_batch(&f, &bytes, &mut set)?;
    }
    Ok(set)
}
