//! Reverse-process samplers behind one small interface, one file each, sharing one loop.
//!
//! A sampler visits a decreasing sequence of timestep indices and maps `x_t` to the next, less
//! noisy state, calling the model through a [`StepContext`] (which applies classifier-free
//! guidance and class labels, and keeps the earlier x̂₀ for multistep solvers). All randomness
//! comes from a [`NoiseSource`] seeded by the caller, so the same seed gives the same samples
//! bit for bit on the CPU.
//!
//! Adding a sampler: one file implementing [`Sampler`], and one [`SamplerConfig`] variant.

pub mod ancestral;
pub mod batched;
pub mod config;
pub mod ddim;
pub mod dpm_solver;
pub mod editing;
pub mod guidance;
pub mod heun;
pub mod langevin;

pub use ancestral::Ancestral;
pub use batched::{BatchOptions, for_each_batch, sample_batched};
pub use config::{SamplerConfig, UnknownSampler};
pub use ddim::{Ddim, Spacing, ddim_encode, slerp, timestep_subsequence};
pub use dpm_solver::DpmSolverPP;
pub use editing::{Inpaint, SdEdit};
pub use guidance::{ClassifierGrad, Guidance};
pub use heun::Heun;
pub use langevin::Langevin;

use burn::tensor::{Device, Tensor};

use crate::diffusion::{Denoiser, GaussianDiffusion, ModelOutput};
pub use crate::noise::NoiseSource;

/// What one reverse step produced.
pub struct StepOutput {
    /// The next state x_{t'} (x_0 after the last step).
    pub prev: Tensor<4>,
    /// The step's estimate x̂₀ (useful for previews of the chain).
    pub pred_x0: Tensor<4>,
}

/// Class conditioning of a sampling run: the label of every sample and, for classifier-free
/// guidance (Ho & Salimans 2022), the scale w and the null label.
#[derive(Clone, Debug)]
pub struct Conditioning {
    /// Class label per sample.
    pub labels: Vec<usize>,
    /// `Some((w, null_label))`: ε̃ = ε(x, ∅) + w·(ε(x, y) − ε(x, ∅)); `None`: plain ε(x, y).
    pub cfg: Option<(f64, usize)>,
}

/// What a sampler's step may use: the diffusion, the model (guided, conditioned), the noise,
/// and the x̂₀ of earlier steps.
pub struct StepContext<'a> {
    /// The diffusion process.
    pub diffusion: &'a GaussianDiffusion,
    model: &'a dyn Denoiser,
    conditioning: Option<&'a Conditioning>,
    guidance: Option<&'a Guidance<'a>>,
    /// The noise source of the run.
    pub noise: &'a mut NoiseSource,
    /// x̂₀ of the earlier steps of this batch, oldest first (multistep solvers read it).
    pub history: Vec<Tensor<4>>,
    /// Network calls made so far (a classifier-free guided call counts once).
    pub calls: usize,
}

impl<'a> StepContext<'a> {
    /// A context for one batch.
    pub fn new(
        diffusion: &'a GaussianDiffusion,
        model: &'a dyn Denoiser,
        noise: &'a mut NoiseSource,
    ) -> Self {
        StepContext {
            diffusion,
            model,
            conditioning: None,
            guidance: None,
            noise,
            history: Vec::new(),
            calls: 0,
        }
    }

    /// With class labels (and classifier-free guidance).
    pub fn with_conditioning(mut self, c: Option<&'a Conditioning>) -> Self {
        self.conditioning = c;
        self
    }

    /// With classifier guidance.
    pub fn with_guidance(mut self, g: Option<&'a Guidance<'a>>) -> Self {
        self.guidance = g;
        self
    }

    /// The interpreted model output at table index `t` for every sample of `x`.
    pub fn predict(&mut self, x: Tensor<4>, t: usize) -> ModelOutput {
        self.calls += 1;
        let tv = vec![t; x.dims()[0]];
        match self.conditioning {
            Some(Conditioning {
                labels,
                cfg: Some((w, null)),
            }) => self
                .diffusion
                .predict_cfg(self.model, x, &tv, labels, *null, *w),
            Some(Conditioning { labels, cfg: None }) => {
                self.diffusion.predict(self.model, x, &tv, Some(labels))
            }
            None => self.diffusion.predict(self.model, x, &tv, None),
        }
    }

    /// `s·∇_{x_t} log p_φ(y | x_t)` when classifier guidance is on.
    pub fn guide(&self, x: Tensor<4>, t: usize) -> Option<Tensor<4>> {
        let tv = vec![t; x.dims()[0]];
        self.guidance.map(|g| g.gradient(x, &tv))
    }

    /// The model output with classifier guidance applied in ε form,
    /// ε̂ = ε − s·√(1−ᾱ_t)·∇ log p_φ(y|x_t) (Dhariwal & Nichol 2021, Alg. 2): what the
    /// deterministic samplers use.
    pub fn predict_guided_eps(&mut self, x: Tensor<4>, t: usize) -> ModelOutput {
        let out = self.predict(x.clone(), t);
        match self.guide(x.clone(), t) {
            Some(g) => {
                let s = self.diffusion.schedule.sqrt_one_minus_alphas_cumprod[t];
                let eps = out.eps.clone() - g.mul_scalar(s);
                self.diffusion.with_eps(&out, x, &[t], eps)
            }
            None => out,
        }
    }
}

/// One reverse-process sampler.
pub trait Sampler {
    /// The timestep indices visited, in decreasing order.
    fn timesteps(&self) -> &[usize];

    /// One step from `x_t` at position `k` of [`Sampler::timesteps`] to the next timestep in
    /// the list (x_0 after the last), calling the model through `ctx` (classifier guidance:
    /// docs/math.md §13).
    fn step(&self, ctx: &mut StepContext<'_>, x_t: Tensor<4>, k: usize) -> StepOutput;
}

/// Extras of the sampling loop.
#[derive(Default)]
pub struct LoopOptions<'a> {
    /// Langevin corrector steps after every predictor step that lands on a noisy level
    /// (predictor–corrector sampling).
    pub corrector: Option<Langevin>,
    /// Classifier guidance.
    pub guidance: Option<&'a Guidance<'a>>,
    /// Class labels and classifier-free guidance.
    pub conditioning: Option<&'a Conditioning>,
}

/// Runs `sampler` from `x_t` down to x_0 with `model`; `on_step(k, &output)` is called after
/// every step (progress bars, denoising chains).
pub fn sample_loop(
    diffusion: &GaussianDiffusion,
    sampler: &dyn Sampler,
    model: &dyn Denoiser,
    x_t: Tensor<4>,
    noise: &mut NoiseSource,
    on_step: impl FnMut(usize, &StepOutput),
) -> Tensor<4> {
    sample_loop_with(
        diffusion,
        sampler,
        model,
        x_t,
        noise,
        &LoopOptions::default(),
        on_step,
    )
}

/// The sampling loop with a corrector, classifier guidance and/or class conditioning.
pub fn sample_loop_with(
    diffusion: &GaussianDiffusion,
    sampler: &dyn Sampler,
    model: &dyn Denoiser,
    x_t: Tensor<4>,
    noise: &mut NoiseSource,
    opts: &LoopOptions<'_>,
    mut on_step: impl FnMut(usize, &StepOutput),
) -> Tensor<4> {
    let ts = sampler.timesteps();
    let mut ctx = StepContext::new(diffusion, model, noise)
        .with_conditioning(opts.conditioning)
        .with_guidance(opts.guidance);
    let mut x = x_t;
    for (k, _) in ts.iter().enumerate() {
        let mut out = sampler.step(&mut ctx, x, k);
        if let (Some(c), Some(&next)) = (opts.corrector.as_ref(), ts.get(k + 1)) {
            out.prev = c.correct(&mut ctx, out.prev, next);
        }
        on_step(k, &out);
        x = out.prev;
    }
    x
}

/// Draws x_T ~ N(0, I) and runs the sampler: the whole of Algorithm 2 for [`Ancestral`].
pub fn sample(
    diffusion: &GaussianDiffusion,
    sampler: &dyn Sampler,
    model: &dyn Denoiser,
    shape: [usize; 4],
    device: &Device,
    noise: &mut NoiseSource,
    on_step: impl FnMut(usize, &StepOutput),
) -> Tensor<4> {
    let x_t = noise.normal(shape, device);
    sample_loop(diffusion, sampler, model, x_t, noise, on_step)
}
