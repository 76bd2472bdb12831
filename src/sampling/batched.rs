//! Sampling many images in batches, the loop behind `ddpm sample`, `ddpm eval fid` and the
//! demo (diffusers' `DDPMPipeline.__call__` in one function).

use burn::tensor::{Device, Tensor};

use super::{ClassifierGrad, sample_loop_with};
use super::{Conditioning, Guidance, Langevin, LoopOptions, NoiseSource, Sampler, StepOutput};
use crate::diffusion::{Denoiser, GaussianDiffusion};

/// The starting state of the samples with these indices, drawn from the run's noise.
pub type StartFn<'a> = &'a dyn Fn(std::ops::Range<usize>, &mut NoiseSource) -> Tensor<4>;

/// How a batched sampling run is steered.
pub struct BatchOptions<'a> {
    /// Images per network call.
    pub batch_size: usize,
    /// Seed of x_T and of every z. Batches draw from one stream in order, so the same seed and
    /// batch size give the same images bit for bit on the CPU.
    pub seed: u64,
    /// Langevin corrector steps after each predictor step.
    pub corrector: Option<Langevin>,
    /// The class requested for sample i (class-conditional models and guidance).
    pub label: Option<&'a dyn Fn(usize) -> usize>,
    /// Classifier guidance: the classifier and the scale s.
    pub classifier: Option<(&'a dyn ClassifierGrad, f64)>,
    /// Whether the model takes the labels (a class-conditional model).
    pub conditional: bool,
    /// Classifier-free guidance: (w, null label).
    pub cfg: Option<(f64, usize)>,
    /// The starting state of a batch of `b` images (default: x_T ~ N(0, I)); SDEdit starts
    /// from a noised image.
    pub start: Option<StartFn<'a>>,
}

impl Default for BatchOptions<'_> {
    fn default() -> Self {
        BatchOptions {
            batch_size: 256,
            seed: 0,
            corrector: None,
            label: None,
            classifier: None,
            conditional: false,
            cfg: None,
            start: None,
        }
    }
}

/// Draws `n` images of shape `[c, h, w]` with `sampler`, `opts.batch_size` at a time, and
/// returns them as one [n, c, h, w] tensor in [−1, 1]. `on_step(first_index, k, output)` is
/// called after every step of every batch (progress bars, denoising chains).
#[allow(clippy::too_many_arguments)]
pub fn sample_batched(
    diffusion: &GaussianDiffusion,
    sampler: &dyn Sampler,
    model: &dyn Denoiser,
    shape: [usize; 3],
    n: usize,
    device: &Device,
    opts: &BatchOptions<'_>,
    on_step: impl FnMut(usize, usize, &StepOutput),
) -> Tensor<4> {
    let mut outs = Vec::new();
    for_each_batch(
        diffusion,
        sampler,
        model,
        shape,
        n,
        device,
        opts,
        on_step,
        |_, x| outs.push(x),
    );
    Tensor::cat(outs, 0)
}

/// [`sample_batched`] handing each finished batch to `on_batch(indices, images)` instead of
/// keeping them (FID over many samples holds only their features).
#[allow(clippy::too_many_arguments)]
pub fn for_each_batch(
    diffusion: &GaussianDiffusion,
    sampler: &dyn Sampler,
    model: &dyn Denoiser,
    shape: [usize; 3],
    n: usize,
    device: &Device,
    opts: &BatchOptions<'_>,
    mut on_step: impl FnMut(usize, usize, &StepOutput),
    mut on_batch: impl FnMut(std::ops::Range<usize>, Tensor<4>),
) {
    let mut noise = NoiseSource::new(opts.seed);
    let batch = opts.batch_size.max(1);
    let mut done = 0;
    while done < n {
        let b = batch.min(n - done);
        let range = done..done + b;
        let x_t = match opts.start {
            Some(start) => start(range.clone(), &mut noise),
            None => noise.normal([b, shape[0], shape[1], shape[2]], device),
        };
        let labels: Option<Vec<usize>> = opts.label.map(|l| range.clone().map(l).collect());
        let guidance = match (opts.classifier, &labels) {
            (Some((classifier, scale)), Some(labels)) => Some(Guidance {
                classifier,
                labels: labels.clone(),
                scale,
            }),
            _ => None,
        };
        let conditioning = match (&labels, opts.conditional) {
            (Some(labels), true) => Some(Conditioning {
                labels: labels.clone(),
                cfg: opts.cfg,
            }),
            _ => None,
        };
        let loop_opts = LoopOptions {
            corrector: opts.corrector,
            guidance: guidance.as_ref(),
            conditioning: conditioning.as_ref(),
        };
        let x = sample_loop_with(
            diffusion,
            sampler,
            model,
            x_t,
            &mut noise,
            &loop_opts,
            |k, out| on_step(done, k, out),
        );
        on_batch(range, x);
        done += b;
    }
}
