//! Heun's second-order method on the probability-flow ODE (Karras et al. 2022, Algorithm 1
//! without churn; docs/math.md §17).
//!
//! In Karras et al.'s variables x̃ = x_t/√ᾱ_t and σ = √((1−ᾱ_t)/ᾱ_t), the ODE is
//! `dx̃/dσ = (x̃ − D(x̃; σ))/σ = ε̂`, with D the denoiser x̂₀. An Euler step
//! `x̃' = x̃ + (σ' − σ) ε̂(x̃, σ)` is exactly DDIM with η = 0; Heun corrects it with the slope at
//! the end point, `x̃' = x̃ + (σ' − σ)(ε̂ + ε̂')/2`, except on the last step to σ = 0, which
//! stays an Euler step (x = x̂₀). Each step but the last costs two network calls.

use burn::tensor::Tensor;

use super::ddim::clipped_x0_eps;
use super::{Sampler, StepContext, StepOutput};

/// Heun's method over decreasing `timesteps`.
pub struct Heun {
    timesteps: Vec<usize>,
    /// Clip x̂₀ to [−1, 1] (ε̂ made consistent with the clipped x̂₀).
    pub clip_x0: bool,
}

impl Heun {
    /// Heun over explicit decreasing `timesteps`.
    pub fn new(timesteps: Vec<usize>, clip_x0: bool) -> Self {
        assert!(
            timesteps.windows(2).all(|w| w[0] > w[1]),
            "timesteps must decrease"
        );
        Heun { timesteps, clip_x0 }
    }
}

impl Sampler for Heun {
    fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    fn step(&self, ctx: &mut StepContext<'_>, x_t: Tensor<4>, k: usize) -> StepOutput {
        let ac = &ctx.diffusion.schedule.alphas_cumprod;
        let t = self.timesteps[k];
        let a_t = ac[t];
        let out = ctx.predict_guided_eps(x_t.clone(), t);
        let (x0, eps) = clipped_x0_eps(&x_t, out.pred_x0, out.eps, a_t, self.clip_x0);
        let Some(&tn) = self.timesteps.get(k + 1) else {
            return StepOutput {
                prev: x0.clone(),
                pred_x0: x0,
            };
        };
        let a_n = ac[tn];
        let sigma = ((1.0 - a_t) / a_t).sqrt();
        let sigma_n = ((1.0 - a_n) / a_n).sqrt();
        let xs = x_t.div_scalar(a_t.sqrt());
        // Euler predictor in x̃, back to x_{t'} = √ᾱ_{t'} x̃' for the second evaluation.
        let xs_euler = xs.clone() + eps.clone().mul_scalar(sigma_n - sigma);
        let x_euler = xs_euler.mul_scalar(a_n.sqrt());
        let out2 = ctx.predict_guided_eps(x_euler.clone(), tn);
        let (_, eps2) = clipped_x0_eps(&x_euler, out2.pred_x0, out2.eps, a_n, self.clip_x0);
        let xs_next = xs + (eps + eps2).mul_scalar(0.5 * (sigma_n - sigma));
        StepOutput {
            prev: xs_next.mul_scalar(a_n.sqrt()),
            pred_x0: x0,
        }
    }
}
