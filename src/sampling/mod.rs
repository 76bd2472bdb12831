//! Reverse-process samplers behind one small interface, one file each, sharing one loop.
//!
//! A sampler visits a decreasing sequence of timestep indices and maps `x_t` and the model's
//! `ε_θ(x_t, t)` to the next, less noisy state. All randomness comes from a [`NoiseSource`]
//! seeded by the caller, so the same seed gives the same samples bit for bit on the CPU.

pub mod ancestral;
pub mod ddim;
pub mod guidance;
pub mod langevin;

pub use ancestral::Ancestral;
pub use ddim::{Ddim, Spacing, ddim_encode, slerp, timestep_subsequence};
pub use guidance::{ClassifierGrad, Guidance};
pub use langevin::Langevin;

use burn::tensor::{Device, Tensor, TensorData};
use rand::{Rng, SeedableRng, rngs::StdRng};
use rand_distr::StandardNormal;

use crate::diffusion::{EpsModel, GaussianDiffusion};

/// Standard-normal noise from a seeded host RNG (independent of any backend's RNG).
pub struct NoiseSource {
    rng: StdRng,
}

impl NoiseSource {
    /// A source seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        NoiseSource {
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// `n` standard-normal f32 values.
    pub fn normal_vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.rng.sample(StandardNormal)).collect()
    }

    /// A standard-normal tensor.
    pub fn normal(&mut self, shape: [usize; 4], device: &Device) -> Tensor<4> {
        let v = self.normal_vec(shape.iter().product());
        Tensor::from_data(TensorData::new(v, shape), device)
    }
}

/// What one reverse step produced.
pub struct StepOutput {
    /// The next state x_{t'} (x_0 after the last step).
    pub prev: Tensor<4>,
    /// The step's estimate x̂₀ (useful for previews of the chain).
    pub pred_x0: Tensor<4>,
}

/// One reverse-process sampler.
pub trait Sampler {
    /// The timestep indices visited, in decreasing order.
    fn timesteps(&self) -> &[usize];

    /// One step from `x_t` at position `k` of [`Sampler::timesteps`], given `ε_θ(x_t, t)` and,
    /// for classifier guidance, `guide = s·∇_{x_t} log p_φ(y | x_t)` (docs/math.md §13).
    fn step(
        &self,
        diffusion: &GaussianDiffusion,
        x_t: Tensor<4>,
        k: usize,
        eps: Tensor<4>,
        guide: Option<Tensor<4>>,
        noise: &mut NoiseSource,
    ) -> StepOutput;
}

/// Runs `sampler` from `x_T` down to x_0 with `model`; `on_step(k, &output)` is called after
/// every step (progress bars, denoising chains).
pub fn sample_loop(
    diffusion: &GaussianDiffusion,
    sampler: &dyn Sampler,
    model: &dyn EpsModel,
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

/// Extras of the sampling loop.
#[derive(Default)]
pub struct LoopOptions<'a> {
    /// Langevin corrector steps after every predictor step that lands on a noisy level
    /// (predictor–corrector sampling).
    pub corrector: Option<Langevin>,
    /// Classifier guidance.
    pub guidance: Option<&'a Guidance<'a>>,
}

/// The sampling loop with a corrector and/or classifier guidance.
pub fn sample_loop_with(
    diffusion: &GaussianDiffusion,
    sampler: &dyn Sampler,
    model: &dyn EpsModel,
    x_t: Tensor<4>,
    noise: &mut NoiseSource,
    opts: &LoopOptions<'_>,
    mut on_step: impl FnMut(usize, &StepOutput),
) -> Tensor<4> {
    let batch = x_t.dims()[0];
    let ts = sampler.timesteps();
    let mut x = x_t;
    for (k, &t) in ts.iter().enumerate() {
        let tv = vec![t; batch];
        let eps = model.predict_eps(x.clone(), &tv);
        let guide = opts.guidance.map(|g| g.gradient(x.clone(), &tv));
        let mut out = sampler.step(diffusion, x, k, eps, guide, noise);
        if let (Some(c), Some(&next)) = (opts.corrector.as_ref(), ts.get(k + 1)) {
            out.prev = c.correct(diffusion, model, out.prev, next, noise);
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
    model: &dyn EpsModel,
    shape: [usize; 4],
    device: &Device,
    noise: &mut NoiseSource,
    on_step: impl FnMut(usize, &StepOutput),
) -> Tensor<4> {
    let x_t = noise.normal(shape, device);
    sample_loop(diffusion, sampler, model, x_t, noise, on_step)
}
