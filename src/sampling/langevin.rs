//! Langevin corrector (Song et al. 2021, predictor–corrector sampling; docs/math.md §15).
//!
//! The score of the noisy marginal is `∇ log q_t(x) ≈ −ε_θ(x, t)/√(1−ᾱ_t)` (docs/math.md §15).
//! A corrector step is unadjusted Langevin dynamics at a fixed t:
//! `x ← x + δ·s(x) + √(2δ)·z`, with the step size set from a target signal-to-noise ratio r:
//! `δ = 2 α_t (r‖z‖/‖s‖)²` (norms per sample, averaged over the batch, as the reference code).

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use super::StepContext;

/// Corrector settings.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Langevin {
    /// Corrector steps after each predictor step.
    pub steps: usize,
    /// Target signal-to-noise ratio r (Song et al. use 0.16 for CIFAR-10 VP models).
    pub snr: f64,
}

impl Langevin {
    /// Runs the corrector steps at table index `t` on `x`.
    pub fn correct(&self, ctx: &mut StepContext<'_>, mut x: Tensor<4>, t: usize) -> Tensor<4> {
        let dims = x.dims();
        let b = dims[0];
        let per = dims[1] * dims[2] * dims[3];
        let sigma = ctx.diffusion.schedule.sqrt_one_minus_alphas_cumprod[t];
        let alpha = ctx.diffusion.schedule.alphas[t];
        for _ in 0..self.steps {
            // ε̂ of any parameterisation, with the run's class conditioning (classifier guidance
            // steers the predictor only, as before).
            let eps = ctx.predict(x.clone(), t).eps;
            let score = eps.div_scalar(-sigma);
            let z = ctx.noise.normal(dims, &x.device());
            let norm = |v: &Tensor<4>| -> f64 {
                let sq: Vec<f32> = v
                    .clone()
                    .square()
                    .reshape([b, per])
                    .sum_dim(1)
                    .sqrt()
                    .into_data()
                    .convert::<f32>()
                    .try_into_vec()
                    .expect("f32");
                sq.iter().map(|&x| x as f64).sum::<f64>() / b as f64
            };
            let (gn, zn) = (norm(&score), norm(&z));
            let delta = 2.0 * alpha * (self.snr * zn / gn.max(1e-12)).powi(2);
            x = x + score.mul_scalar(delta) + z.mul_scalar((2.0 * delta).sqrt());
        }
        x
    }
}
