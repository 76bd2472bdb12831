//! DDIM (Song et al. 2021, eq. 12; docs/math.md §12) on a decreasing subsequence of timesteps.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use super::{Sampler, StepContext, StepOutput};
use crate::diffusion::GaussianDiffusion;
use crate::schedule::NoiseSchedule;

/// How a subsequence of `n` timesteps is chosen from 0..T.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Spacing {
    /// `round(linspace(T−1, 0, n))` (Song et al. 2021, DDIM, "linear" τ).
    Linear,
    /// Quadratic in the step number, denser near t = 0 (the DDIM paper's CIFAR-10 choice).
    Quadratic,
    /// Karras et al. 2022, eq. 5 with ρ = 7: `σ_i = (σ_max^{1/ρ} + i/(n−1)·(σ_min^{1/ρ} −
    /// σ_max^{1/ρ}))^ρ` in the σ = √((1−ᾱ)/ᾱ) of the schedule, each mapped to the index with
    /// the nearest log σ.
    Karras,
}

/// ρ of the Karras et al. 2022 spacing.
pub const KARRAS_RHO: f64 = 7.0;

/// `n` distinct decreasing timestep indices from T−1 to 0 (n ≤ T) for `schedule`. Where
/// rounding would repeat an index (quadratic and Karras spacings crowd t ≈ 0), the next free
/// index is taken instead, so `--steps 50` always means 50 steps.
pub fn timestep_subsequence(schedule: &NoiseSchedule, n: usize, spacing: Spacing) -> Vec<usize> {
    let num_timesteps = schedule.num_timesteps;
    let n = n.clamp(1, num_timesteps);
    let last = (num_timesteps - 1) as f64;
    let frac = |k: usize| {
        if n == 1 {
            0.0
        } else {
            k as f64 / (n - 1) as f64
        }
    };
    let mut v: Vec<usize> = match spacing {
        Spacing::Linear => (0..n).map(|k| (last * frac(k)).round() as usize).collect(),
        Spacing::Quadratic => (0..n)
            .map(|k| (last * frac(k) * frac(k)).round() as usize)
            .collect(),
        Spacing::Karras => {
            let log_sigma: Vec<f64> = schedule
                .alphas_cumprod
                .iter()
                .map(|a| 0.5 * ((1.0 - a) / a).ln())
                .collect();
            let (lo, hi) = (log_sigma[0].exp(), log_sigma[num_timesteps - 1].exp());
            let inv = 1.0 / KARRAS_RHO;
            // Increasing σ (k = 0 is σ_min), so the pass below works from t ≈ 0 upwards.
            (0..n)
                .map(|k| {
                    // One step is taken at t = 0, as for the other spacings.
                    let f = if n == 1 { 1.0 } else { frac(n - 1 - k) };
                    let sigma = (hi.powf(inv) + f * (lo.powf(inv) - hi.powf(inv))).powf(KARRAS_RHO);
                    let ls = sigma.ln();
                    // log σ increases with t: binary search for the nearest index.
                    let p = log_sigma.partition_point(|&x| x < ls);
                    match p {
                        0 => 0,
                        p if p >= num_timesteps => num_timesteps - 1,
                        p if (log_sigma[p] - ls) < (ls - log_sigma[p - 1]) => p,
                        p => p - 1,
                    }
                })
                .collect()
        }
    };
    for k in 1..n {
        v[k] = v[k].max(v[k - 1] + 1);
    }
    // Crowding is at the start, so the pass cannot push the end past T−1 unless the spacing put
    // many steps at the top; then fall back to the linear spacing.
    if v[n - 1] > num_timesteps - 1 {
        return timestep_subsequence(schedule, n, Spacing::Linear);
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

    fn step(&self, ctx: &mut StepContext<'_>, x_t: Tensor<4>, k: usize) -> StepOutput {
        let (a_t, a_next) = self.alphas(ctx.diffusion, k);
        // Classifier guidance enters in ε form (Dhariwal & Nichol 2021, Alg. 2).
        let out = ctx.predict_guided_eps(x_t.clone(), self.timesteps[k]);
        let (x0, eps) = clipped_x0_eps(&x_t, out.pred_x0, out.eps, a_t, self.clip_x0);
        if let Some(v) = out.var_values.filter(|_| self.eta > 0.0 && a_next < 1.0) {
            return self.learned_sigma_step(ctx, &x_t, x0, eps, v, a_t, a_next);
        }
        let sigma =
            self.eta * ((1.0 - a_next) / (1.0 - a_t)).sqrt() * (1.0 - a_t / a_next).max(0.0).sqrt();
        let dir = (1.0 - a_next - sigma * sigma).max(0.0).sqrt();
        let mut prev = x0.clone().mul_scalar(a_next.sqrt()) + eps.mul_scalar(dir);
        if sigma > 0.0 {
            prev = prev
                + ctx
                    .noise
                    .normal(x_t.dims(), &x_t.device())
                    .mul_scalar(sigma);
        }
        StepOutput { prev, pred_x0: x0 }
    }
}

impl Ddim {
    /// The step with a learned variance: σ_t² = η²·Σ_θ, where Σ_θ interpolates the respaced
    /// step's β_{t→t'} = 1 − ᾱ_t/ᾱ_{t'} and β̃_{t→t'} = (1−ᾱ_{t'})/(1−ᾱ_t)·β_{t→t'} with the
    /// network's v (Nichol & Dhariwal 2021, eq. 15 on the respaced chain, their §4), per pixel,
    /// and held to σ² ≤ 1 − ᾱ_{t'} so that eq. 12's direction term stays real. Any such σ keeps
    /// q(x_{t'}|x₀) (Song et al. 2021, eq. 7), so the marginals are those of DDIM; v ≡ −1 is
    /// exactly the fixed-variance η step.
    #[allow(clippy::too_many_arguments)]
    fn learned_sigma_step(
        &self,
        ctx: &mut StepContext<'_>,
        x_t: &Tensor<4>,
        x0: Tensor<4>,
        eps: Tensor<4>,
        v: Tensor<4>,
        a_t: f64,
        a_next: f64,
    ) -> StepOutput {
        let beta = (1.0 - a_t / a_next).max(1e-20);
        let beta_tilde = ((1.0 - a_next) / (1.0 - a_t) * beta).max(1e-20);
        let frac = (v + 1.0) * 0.5;
        let log_var = frac.clone() * beta.ln() + (frac.neg() + 1.0) * beta_tilde.ln();
        let var = (log_var.exp() * (self.eta * self.eta)).clamp_max(1.0 - a_next);
        let dir = (var.clone().neg() + (1.0 - a_next)).clamp_min(0.0).sqrt();
        let z = ctx.noise.normal(x_t.dims(), &x_t.device());
        let prev = x0.clone().mul_scalar(a_next.sqrt()) + eps * dir + z * var.sqrt();
        StepOutput { prev, pred_x0: x0 }
    }
}

/// x̂₀ clipped to [−1, 1] when asked, with ε̂ made consistent with the clipped x̂₀ as the
/// reference DDIM code does (ε̂ = (x_t − √ᾱ_t x̂₀)/√(1−ᾱ_t)); shared by the deterministic
/// samplers.
pub fn clipped_x0_eps(
    x_t: &Tensor<4>,
    x0: Tensor<4>,
    eps: Tensor<4>,
    a_t: f64,
    clip: bool,
) -> (Tensor<4>, Tensor<4>) {
    if !clip {
        return (x0, eps);
    }
    let x0 = x0.clamp(-1.0, 1.0);
    let eps = (x_t.clone() - x0.clone().mul_scalar(a_t.sqrt())).div_scalar((1.0 - a_t).sqrt());
    (x0, eps)
}

/// Deterministic DDIM inversion (η = 0 run forward, Song et al. 2021 §4.3): maps data x_0 to
/// the latent x_T that [`Ddim`] with η = 0 on the same `timesteps` decodes back to x_0.
/// Each step evaluates ε_θ at the next (noisier) timestep, as diffusers' `DDIMInverseScheduler`.
pub fn ddim_encode(
    diffusion: &GaussianDiffusion,
    model: &dyn crate::diffusion::Denoiser,
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
        // The model is evaluated at the next (noisier) index t, as diffusers' inverse scheduler.
        let out = diffusion.predict(model, x.clone(), &vec![t; batch], None);
        let eps = out.eps;
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
    use crate::schedule::BetaSchedule;

    #[test]
    fn subsequences_have_exactly_n_distinct_steps_from_t_minus_1_to_0() {
        let sched = NoiseSchedule::new(&BetaSchedule::linear(), 1000);
        for spacing in [Spacing::Linear, Spacing::Quadratic, Spacing::Karras] {
            for n in [1usize, 2, 10, 20, 50, 100, 999, 1000] {
                let ts = timestep_subsequence(&sched, n, spacing);
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
        let q = timestep_subsequence(&sched, 50, Spacing::Quadratic);
        let l = timestep_subsequence(&sched, 50, Spacing::Linear);
        assert!(q[48] < l[48]);
        // Karras spacing: log σ steps shrink towards σ_min (ρ = 7) and the ends are σ_max, σ_min.
        let k = timestep_subsequence(&sched, 10, Spacing::Karras);
        let ls = |i: usize| 0.5 * ((1.0 - sched.alphas_cumprod[i]) / sched.alphas_cumprod[i]).ln();
        let gaps: Vec<f64> = k.windows(2).map(|w| ls(w[0]) - ls(w[1])).collect();
        assert!(gaps[0] < gaps[8], "{k:?}: log-σ gaps {gaps:?}");
        // The 2nd point is exactly (σ_max^{1/7} + (σ_min^{1/7} − σ_max^{1/7})/9)^7, to the nearest index.
        let (smax, smin) = (ls(999).exp(), ls(0).exp());
        let s1 =
            (smax.powf(1.0 / 7.0) + (smin.powf(1.0 / 7.0) - smax.powf(1.0 / 7.0)) / 9.0).powf(7.0);
        let best = (0..1000)
            .min_by(|&a, &b| (ls(a) - s1.ln()).abs().total_cmp(&(ls(b) - s1.ln()).abs()))
            .unwrap();
        assert_eq!(k[1], best);
    }
}
