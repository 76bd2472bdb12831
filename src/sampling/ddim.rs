//! DDIM (Song et al. 2021, eq. 12; docs/math.md §12) on a decreasing subsequence of timesteps.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use super::{NoiseSource, Sampler, StepOutput};
use crate::diffusion::GaussianDiffusion;

/// How a subsequence of `n` timesteps is chosen from 0..T.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Spacing {
    /// `round(linspace(T−1, 0, n))` (docs/math.md §20.1's figures use this).
    Linear,
    /// Quadratic in the step number, denser near t = 0 (the DDIM paper's CIFAR-10 choice).
    Quadratic,
}

/// `n` distinct decreasing timestep indices from T−1 to 0 (n ≤ T). Where rounding would repeat
/// an index (quadratic spacing crowds t ≈ 0), the next free index is taken instead, so `--steps
/// 50` always means 50 network calls.
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
    for k in 1..n {
        v[k] = v[k].max(v[k - 1] + 1);
    }
    // Crowding is at the start, so the pass cannot push the end past T−1 for n ≤ T; guard anyway.
    if v[n - 1] > num_timesteps - 1 {
        return timestep_subsequence(num_timesteps, n, Spacing::Linear);
    }
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
        guide: Option<Tensor<4>>,
        noise: &mut NoiseSource,
    ) -> StepOutput {
        let (a_t, a_next) = self.alphas(diffusion, k);
        // Classifier guidance (Dhariwal & Nichol 2021, Alg. 2): ε̂ = ε − s·√(1−ᾱ_t)·∇ log p_φ(y|x_t).
        let eps = match guide {
            Some(g) => eps - g.mul_scalar((1.0 - a_t).sqrt()),
            None => eps,
        };
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

/// Deterministic DDIM inversion (η = 0 run forward, Song et al. 2021 §4.3): maps data x_0 to
/// the latent x_T that [`Ddim`] with η = 0 on the same `timesteps` decodes back to x_0.
/// Each step evaluates ε_θ at the next (noisier) timestep, as diffusers' `DDIMInverseScheduler`.
pub fn ddim_encode(
    diffusion: &GaussianDiffusion,
    model: &dyn crate::diffusion::EpsModel,
    x0: Tensor<4>,
    timesteps: &[usize],
    mut on_step: impl FnMut(usize),
) -> Tensor<4> {
    let ac = &diffusion.schedule.alphas_cumprod;
    let batch = x0.dims()[0];
    let mut up: Vec<usize> = timesteps.to_vec();
    up.sort_unstable();
    up.dedup();
    let mut x = x0;
    let mut a_cur = 1.0f64;
    for (k, &t) in up.iter().enumerate() {
        let eps = model.predict_eps(x.clone(), &vec![t; batch]);
        let x0_hat = (x - eps.clone().mul_scalar((1.0 - a_cur).sqrt())).div_scalar(a_cur.sqrt());
        let a_next = ac[t];
        x = x0_hat.mul_scalar(a_next.sqrt()) + eps.mul_scalar((1.0 - a_next).sqrt());
        a_cur = a_next;
        on_step(k);
    }
    x
}

/// Spherical interpolation between two latents (Shoemake 1985), treating each sample as one
/// vector: keeps the norm statistics of Gaussian latents, unlike linear interpolation.
pub fn slerp(a: &[f32], b: &[f32], frac: f64) -> Vec<f32> {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let theta = (dot / (na * nb)).clamp(-1.0, 1.0).acos();
    if theta.abs() < 1e-6 {
        return a
            .iter()
            .zip(b)
            .map(|(x, y)| (*x as f64 * (1.0 - frac) + *y as f64 * frac) as f32)
            .collect();
    }
    let (wa, wb) = (
        ((1.0 - frac) * theta).sin() / theta.sin(),
        (frac * theta).sin() / theta.sin(),
    );
    a.iter()
        .zip(b)
        .map(|(x, y)| (wa * *x as f64 + wb * *y as f64) as f32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsequences_have_exactly_n_distinct_steps_from_t_minus_1_to_0() {
        for spacing in [Spacing::Linear, Spacing::Quadratic] {
            for n in [1usize, 2, 10, 20, 50, 100, 999, 1000] {
                let ts = timestep_subsequence(1000, n, spacing);
                assert_eq!(ts.len(), n, "{spacing:?} {n}");
                assert!(
                    ts.windows(2).all(|w| w[0] > w[1]),
                    "{spacing:?} {n}: not decreasing"
                );
                assert_eq!(*ts.last().unwrap(), 0);
                if n > 1 {
                    assert_eq!(ts[0], 999);
                }
            }
        }
        // Quadratic spacing is denser near t = 0 than linear.
        let q = timestep_subsequence(1000, 50, Spacing::Quadratic);
        let l = timestep_subsequence(1000, 50, Spacing::Linear);
        assert!(q[48] < l[48]);
    }
}
