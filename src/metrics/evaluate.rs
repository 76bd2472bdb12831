//! The evaluation loops of `ddpm eval fid` and `ddpm fid`, as library calls: data-set features
//! (cached on disk), and FID/precision/recall of a sampler's images, streamed batch by batch.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Result;
use burn::tensor::{Device, Tensor, TensorData};

use super::fid::{FEATURE_DIM, FeatureStats, extract_features, frechet_distance, precision_recall};
use super::inception::FidInception;
use crate::data::{self, Split};
use crate::diffusion::{Denoiser, GaussianDiffusion};
use crate::sampling::{BatchOptions, Sampler, for_each_batch};
use crate::tensorfile::{f32_tensors_to_bytes, read_f32_tensors, write_atomic};

/// Where data-set features are cached: `$XDG_CACHE_HOME/ddpm` or `~/.cache/ddpm`.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("ddpm")
}

/// Inception features of (up to) `n` evenly spaced images of a data set, cached under
/// `cache/fid-features/`. `on_progress(done, total)` reports images; `cached` says whether the
/// cache answered.
#[allow(clippy::too_many_arguments)]
pub fn dataset_features(
    spec: &str,
    split: Split,
    n: Option<usize>,
    net: &FidInception,
    batch: usize,
    device: &Device,
    cache: &Path,
    mut on_progress: impl FnMut(usize, usize),
) -> Result<(Vec<f32>, bool)> {
    let set = data::open(spec, split, None)?;
    let n = n.unwrap_or(set.len()).clamp(1, set.len());
    let key: String = format!("{spec}-{split:?}-{n}-of-{}", set.len())
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let file = cache
        .join("fid-features")
        .join(format!("{key}.safetensors"));
    if let Ok(t) = read_f32_tensors(&file)
        && let Some((_, s, v)) = t.into_iter().find(|(k, _, _)| k == "features")
        && s == vec![n, FEATURE_DIM]
    {
        return Ok((v, true));
    }
    let pixels: Vec<u8> = (0..n)
        .flat_map(|k| set.image(k * set.len() / n).to_vec())
        .collect();
    let f = extract_features(
        net,
        &pixels,
        set.channels,
        set.height,
        set.width,
        batch,
        device,
        |d| on_progress(d, n),
    );
    std::fs::create_dir_all(file.parent().expect("cache folder"))?;
    let bytes = f32_tensors_to_bytes(&[("features".to_string(), vec![n, FEATURE_DIM], &f)], None)?;
    write_atomic(&file, &bytes)?;
    Ok((f, false))
}

/// What [`fid_of_sampler`] measured.
pub struct SampleFid {
    /// FID against the reference features.
    pub fid: f64,
    /// Precision (k = 3; Kynkäänniemi et al. 2019).
    pub precision: f64,
    /// Recall (k = 3).
    pub recall: f64,
    /// Share of samples the judge put in the requested class (when a judge was given).
    pub judged_accuracy: Option<f64>,
    /// Seconds spent sampling.
    pub sampling_seconds: f64,
    /// Seconds spent in the Inception network.
    pub inception_seconds: f64,
    /// The first (up to) 100 samples, for a picture.
    pub first: Option<Tensor<4>>,
}

/// A judge of samples: the predicted class of each image of a batch in [−1, 1].
pub type Judge<'a> = &'a dyn Fn(Tensor<4>) -> Vec<usize>;

/// FID, precision and recall of `n` images drawn with `sampler` against `real` features,
/// sampling and scoring batch by batch. Samples are scored as stored: 8-bit images. With a
/// judge, `requested(i)` is the class sample i was asked for. `on_batch(done)` reports
/// progress.
#[allow(clippy::too_many_arguments)]
pub fn fid_of_sampler(
    net: &FidInception,
    real: &[f32],
    diffusion: &GaussianDiffusion,
    sampler: &dyn Sampler,
    model: &dyn Denoiser,
    shape: [usize; 3],
    n: usize,
    device: &Device,
    opts: &BatchOptions<'_>,
    fid_batch: usize,
    judge: Option<(Judge<'_>, &dyn Fn(usize) -> usize)>,
    mut on_batch: impl FnMut(usize),
) -> Result<SampleFid> {
    let mut fake = Vec::with_capacity(n * FEATURE_DIM);
    let mut first: Option<Tensor<4>> = None;
    let (mut t_sample, mut t_feat) = (0.0, 0.0);
    let mut correct = 0usize;
    let mut tick = Instant::now();
    for_each_batch(
        diffusion,
        sampler,
        model,
        shape,
        n,
        device,
        opts,
        |_, _, _| {},
        |range, x| {
            t_sample += tick.elapsed().as_secs_f64();
            if first.is_none() {
                first = Some(x.clone().narrow(0, 0, range.len().min(100)));
            }
            let (px, dims) = crate::image::tensor_to_u8(x);
            if let Some((judge, requested)) = judge {
                let xs: Vec<f32> = px.iter().map(|&v| data::to_unit(v)).collect();
                let pred = judge(Tensor::from_data(TensorData::new(xs, dims), device));
                correct += pred
                    .iter()
                    .zip(range.clone())
                    .filter(|(p, i)| **p == requested(*i))
                    .count();
            }
            let tf = Instant::now();
            fake.extend(extract_features(
                net,
                &px,
                dims[1],
                dims[2],
                dims[3],
                fid_batch,
                device,
                |_| {},
            ));
            t_feat += tf.elapsed().as_secs_f64();
            on_batch(range.end);
            tick = Instant::now();
        },
    );
    let fid = frechet_distance(
        &FeatureStats::from_features(real, FEATURE_DIM),
        &FeatureStats::from_features(&fake, FEATURE_DIM),
    )?;
    let (precision, recall) = precision_recall(real, &fake, FEATURE_DIM, 3);
    Ok(SampleFid {
        fid,
        precision,
        recall,
        judged_accuracy: judge.map(|_| correct as f64 / n as f64),
        sampling_seconds: t_sample,
        inception_seconds: t_feat,
        first,
    })
}
