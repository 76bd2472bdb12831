//! DDIM (Song et al. 2021; theory.md §6) on a decreasing subsequence of timesteps.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use super::{NoiseSource, Sampler, StepOutput};
use crate::diffusion::GaussianDiffusion;

/// How a subsequence of `n` timesteps is chosen from 0..T.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Spacing {
    /// `round(linspace(T−1, 0, n))` (theory.md §8's figures use this).
    Linear,
    /// Quadratic in the step number, denser near t = 0 (the DDIM paper's CIFAR-10 choice).
    Quadratic,
}

/// `n` distinct decreasing timestep indices from T−1 to 0.
pub fn timestep_subsequence(num_timesteps: usize, n: usize, spacing: Spacing) -> Vec<usize> {
    let n = n.clamp(1, num_timesteps);
    let last = (num_timesteps - 1) as f64;
    let mut v: Vec<usize> = (0..n)
        .map(|k| {
            let f = if n == 1 {
                0.0
            } else {
                k as f64 / (n - 1) as f64
            };
            let x = match spacing {
                Spacing::Linear => last * f,
                Spacing::Quadratic => last * f * f,
            };
            x.round() as usize
        })
        .collect();
    v.dedup();
    v.reverse();
    v
}

/// `x_{t'} = √ᾱ_{t'} x̂₀ + √(1 − ᾱ_{t'} − σ_t²) ε_θ + σ_t z` with
/// `σ_t = η √((1−ᾱ_{t'})/(1−ᾱ_t)) √(1 − ᾱ_t/ᾱ_{t'})` and ᾱ = 1 after the last step.
pub struct Ddim {
    timesteps: Vec<usize>,
    /// η ∈ [0, 1]: 0 is the deterministic ODE sampler, 1 matches DDPM's σ² = β̃ on the full
    /// sequence.
    pub eta: f64,
    /// Clip x̂₀ to [−1, 1].
    pub clip_x0: bool,
}

impl Ddim {
    /// DDIM over explicit decreasing `timesteps`.
    pub fn new(timesteps: Vec<usize>, eta: f64, clip_x0: bool) -> Self {
        assert!(
            timesteps.windows(2).all(|w| w[0] > w[1]),
            "timesteps must decrease"
        );
        Ddim {
            timesteps,
            eta,
            clip_x0,
        }
    }

    /// (ᾱ_t, ᾱ_{t'}) at position `k`.
    fn alphas(&self, diffusion: &GaussianDiffusion, k: usize) -> (f64, f64) {
        let ac = &diffusion.schedule.alphas_cumprod;
        let a_t = ac[self.timesteps[k]];
        let a_next = self.timesteps.get(k + 1).map_or(1.0, |&tn| ac[tn]);
        (a_t, a_next)
    }
}

impl Sampler for Ddim {
    fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    fn step(
        &self,
        diffusion: &GaussianDiffusion,
        x_t: Tensor<4>,
        k: usize,
        eps: Tensor<4>,
        noise: &mut NoiseSource,
    ) -> StepOutput {
        let (a_t, a_next) = self.alphas(diffusion, k);
        let mut x0 =
            (x_t.clone() - eps.clone().mul_scalar((1.0 - a_t).sqrt())).div_scalar(a_t.sqrt());
        let mut eps = eps;
        if self.clip_x0 {
            x0 = x0.clamp(-1.0, 1.0);
            // Keep ε consistent with the clipped x̂₀, as the reference DDIM code does.
            eps = (x_t.clone() - x0.clone().mul_scalar(a_t.sqrt())).div_scalar((1.0 - a_t).sqrt());
        }
        let sigma =
            self.eta * ((1.0 - a_next) / (1.0 - a_t)).sqrt() * (1.0 - a_t / a_next).max(0.0).sqrt();
        let dir = (1.0 - a_next - sigma * sigma).max(0.0).sqrt();
        let mut prev = x0.clone().mul_scalar(a_next.sqrt()) + eps.mul_scalar(dir);
        if sigma > 0.0 {
            prev = prev + noise.normal(x_t.dims(), &x_t.device()).mul_scalar(sigma);
        }
        StepOutput { prev, pred_x0: x0 }
    }
}
