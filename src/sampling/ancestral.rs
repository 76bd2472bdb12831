//! Ancestral sampling, Algorithm 2 of Ho et al. 2020.

use burn::tensor::Tensor;

use super::{Sampler, StepContext, StepOutput};
use crate::diffusion::GaussianDiffusion;

/// `x_{t−1} = μ_θ(x_t, t) + σ_t z`, z ~ N(0, I) for t > 1 and z = 0 at t = 1, with σ_t² the
/// diffusion's variance (β, β̃ or learned) and optional clipping of x̂₀ to [−1, 1].
pub struct Ancestral {
    timesteps: Vec<usize>,
    /// Clip x̂₀ to [−1, 1] before forming μ̃_t (the reference sampler does).
    pub clip_x0: bool,
}

impl Ancestral {
    /// All T steps, T−1 down to 0 (paper's t = T..1).
    pub fn new(diffusion: &GaussianDiffusion, clip_x0: bool) -> Self {
        Ancestral {
            timesteps: (0..diffusion.num_timesteps()).rev().collect(),
            clip_x0,
        }
    }
}

impl Sampler for Ancestral {
    fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    fn step(&self, ctx: &mut StepContext<'_>, x_t: Tensor<4>, k: usize) -> StepOutput {
        let t = self.timesteps[k];
        let dims = x_t.dims();
        let device = x_t.device();
        let model_out = ctx.predict(x_t.clone(), t);
        let guide = ctx.guide(x_t.clone(), t);
        let out = ctx
            .diffusion
            .p_mean_variance(&model_out, x_t, &vec![t; dims[0]], self.clip_x0);
        // Classifier guidance (Dhariwal & Nichol 2021, Alg. 1): μ + s·σ_t²·∇ log p_φ(y|x_t).
        let mean = match guide {
            Some(g) => out.mean + g * out.variance.clone(),
            None => out.mean,
        };
        let prev = if t > 0 {
            let z = ctx.noise.normal(dims, &device);
            mean + z * out.log_variance.mul_scalar(0.5).exp()
        } else {
            mean
        };
        StepOutput {
            prev,
            pred_x0: out.pred_x0,
        }
    }
}
