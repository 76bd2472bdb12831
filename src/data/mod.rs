//! Image data sets: parsers that validate everything they read, and a loader that shuffles,
//! batches, scales to [−1, 1] and optionally flips.
//!
//! Every parser returns an error that names the file and the problem (truncated, wrong magic,
//! wrong sizes, labels out of range) instead of panicking.

pub mod builtin;
pub mod cifar;
pub mod folder;
pub mod idx;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::{Device, Tensor, TensorData};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng, rngs::StdRng};

/// Errors of the data parsers; each names the offending file.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file's contents are not what the format requires.
    #[error("{path}: {problem}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
}

impl DataError {
    /// A format error for `path`.
    pub fn corrupt(path: &Path, problem: impl Into<String>) -> Self {
        DataError::Corrupt {
            path: path.to_path_buf(),
            problem: problem.into(),
        }
    }
}

/// An in-memory set of equally sized 8-bit images, CHW, with optional class labels.
#[derive(Clone, Debug)]
pub struct ImageSet {
    /// Human-readable origin (a path or a built-in name).
    pub name: String,
    /// Channels (1 or 3).
    pub channels: usize,
    /// Height.
    pub height: usize,
    /// Width.
    pub width: usize,
    /// N·C·H·W bytes.
    pub pixels: Vec<u8>,
    /// One label per image, if the source has them.
    pub labels: Option<Vec<u32>>,
    /// Class names (index = label), if known.
    pub class_names: Vec<String>,
}

impl ImageSet {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.pixels.len() / self.image_bytes().max(1)
    }

    /// True when there are no images.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes per image.
    pub fn image_bytes(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// Image `i` as CHW bytes.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_bytes();
        &self.pixels[i * n..(i + 1) * n]
    }

    /// The first `n` images (all if fewer).
    pub fn take(mut self, n: usize) -> Self {
        let n = n.min(self.len());
        self.pixels.truncate(n * self.image_bytes());
        if let Some(l) = self.labels.as_mut() {
            l.truncate(n);
        }
        self
    }

    /// Number of classes (max label + 1), 0 without labels.
    pub fn num_classes(&self) -> usize {
        self.labels
            .as_ref()
            .and_then(|l| l.iter().max())
            .map_or(0, |&m| m as usize + 1)
    }
}

/// Which split of a named data set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Split {
    /// Training images.
    Train,
    /// Test images.
    Test,
}

/// Where Debian's `dataset-fashion-mnist` package installs its files.
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Opens a data set by name or path:
/// - `mnist5k` (built in, the default), `fashion-mnist` (Debian package), `mnist:DIR`/
///   `fashion-mnist:DIR` (IDX files in DIR);
/// - a folder with `data_batch_N.bin`/`test_batch.bin` (CIFAR-10), a folder with IDX files
///   (see [`idx::idx_names`]), an IDX images file itself (labels beside it are found), or a
///   folder of PNG/JPEG images (sub-folder = class), resized to `image_size` when given.
pub fn open(spec: &str, split: Split, image_size: Option<usize>) -> Result<ImageSet> {
    let set = match spec {
        "mnist5k" | "builtin" => builtin::mnist5k()?,
        "fashion-mnist" => idx::open_mnist_dir(Path::new(FASHION_MNIST_DIR), split, "fashion-mnist")
            .map_err(|e| {
                if Path::new(FASHION_MNIST_DIR).exists() {
                    e
                } else {
                    anyhow::anyhow!(
                        "Fashion-MNIST is not installed ({FASHION_MNIST_DIR} is missing).\n\
                         Install it with `sudo apt-get install -y dataset-fashion-mnist` (Debian/Ubuntu), \
                         or run scripts/install-data.sh; elsewhere download the four IDX files from \
                         https://github.com/zalandoresearch/fashion-mnist and pass `--data fashion-mnist:DIR`."
                    )
                }
            })?,
        _ => {
            let (kind, path) = match spec.split_once(':') {
                Some((k @ ("mnist" | "fashion-mnist" | "idx" | "cifar10" | "folder"), p)) => {
                    (Some(k), PathBuf::from(p))
                }
                _ => (None, PathBuf::from(spec)),
            };
            if !path.exists() {
                bail!(
                    "data set `{spec}`: no such file or folder (known names: mnist5k, fashion-mnist)"
                );
            }
            match kind {
                Some(k @ ("mnist" | "fashion-mnist" | "idx")) if path.is_file() => {
                    idx::open_idx_file(&path, k)?
                }
                Some(k @ ("mnist" | "fashion-mnist" | "idx")) => {
                    idx::open_mnist_dir(&path, split, k)?
                }
                Some("cifar10") => cifar::open_dir(&path, split)?,
                Some("folder") => folder::open(&path, image_size)?,
                _ if path.is_file() && idx::is_idx3_file(&path) => {
                    idx::open_idx_file(&path, "idx")?
                }
                _ if path.is_file() => bail!(
                    "{}: not an IDX images file (magic 0x00000803, raw or gzipped); otherwise pass a folder (IDX files, CIFAR-10 batches or images)",
                    path.display()
                ),
                _ if cifar::looks_like_cifar(&path) => cifar::open_dir(&path, split)?,
                _ if idx::looks_like_idx_dir(&path) => idx::open_mnist_dir(&path, split, "idx")?,
                _ => folder::open(&path, image_size).map_err(|e| match e
                    .downcast_ref::<folder::NoImages>()
                {
                    Some(none) => nothing_found(&path, none),
                    None => e,
                })?,
            }
        }
    };
    match image_size {
        Some(s) if s != set.height || s != set.width => {
            Ok(folder::resize_set(set, s).context("resizing the data set")?)
        }
        _ => Ok(set),
    }
}

/// The error for a folder in which no data set was recognised: every name looked for.
fn nothing_found(dir: &Path, none: &folder::NoImages) -> anyhow::Error {
    let idx: Vec<String> = ["train", "t10k"]
        .iter()
        .flat_map(|p| idx::idx_names(p, "images"))
        .collect();
    let mut msg = format!(
        "{}: no data set found. Looked for IDX files ({}), CIFAR-10 batches \
         (data_batch_1.bin … data_batch_5.bin, test_batch.bin) and PNG/JPEG images directly in \
         the folder or in class sub-folders",
        dir.display(),
        idx.join(", ")
    );
    if let Some(s) = folder::skip_summary(&none.skipped) {
        msg.push_str(&format!("; {s}"));
    }
    anyhow::anyhow!(msg)
}

/// Scales bytes to [−1, 1]: `x/127.5 − 1`.
pub fn to_unit(v: u8) -> f32 {
    v as f32 / 127.5 - 1.0
}

/// Converts model output in [−1, 1] back to bytes: `round((x+1)·127.5)` clamped to 0..255.
pub fn from_unit(x: f32) -> u8 {
    ((x + 1.0) * 127.5).round().clamp(0.0, 255.0) as u8
}

/// Shuffled mini-batches over an [`ImageSet`], reproducible from (seed, epoch).
pub struct Loader<'a> {
    set: &'a ImageSet,
    /// Images per batch.
    pub batch_size: usize,
    /// Random horizontal flips.
    pub hflip: bool,
    seed: u64,
}

impl<'a> Loader<'a> {
    /// A loader; `seed` fixes every epoch's order and flips.
    pub fn new(set: &'a ImageSet, batch_size: usize, hflip: bool, seed: u64) -> Self {
        Loader {
            set,
            batch_size,
            hflip,
            seed,
        }
    }

    /// Batches per epoch (the last partial batch is dropped).
    pub fn batches_per_epoch(&self) -> usize {
        (self.set.len() / self.batch_size).max(1)
    }

    /// The batch for global step `step` (epoch = step / batches_per_epoch): a pure function of
    /// (seed, step), so a resumed run sees exactly the batches it would have seen.
    pub fn batch(&self, step: u64, device: &Device) -> (Tensor<4>, Vec<u32>) {
        let per_epoch = self.batches_per_epoch() as u64;
        let (epoch, k) = (step / per_epoch, (step % per_epoch) as usize);
        let mut order: Vec<usize> = (0..self.set.len()).collect();
        order.shuffle(&mut StdRng::seed_from_u64(
            self.seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15),
        ));
        let bs = self.batch_size.min(self.set.len());
        let idx = &order[k * bs..(k + 1) * bs];
        let mut flip_rng = StdRng::seed_from_u64(
            self.seed
                .wrapping_add(step)
                .wrapping_mul(0xD1B5_4A32_D192_ED03),
        );
        let (c, h, w) = (self.set.channels, self.set.height, self.set.width);
        let mut data = Vec::with_capacity(bs * c * h * w);
        let mut labels = Vec::with_capacity(bs);
        for &i in idx {
            let img = self.set.image(i);
            let flip = self.hflip && flip_rng.random::<bool>();
            for ch in 0..c {
                for y in 0..h {
                    for x in 0..w {
                        let sx = if flip { w - 1 - x } else { x };
                        data.push(to_unit(img[(ch * h + y) * w + sx]));
                    }
                }
            }
            labels.push(self.set.labels.as_ref().map_or(0, |l| l[i]));
        }
        (
            Tensor::from_data(TensorData::new(data, [bs, c, h, w]), device),
            labels,
        )
    }
}
