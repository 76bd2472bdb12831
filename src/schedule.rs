//! Noise schedules and every table derived from them, in f64.
//!
//! # Timestep convention
//! The paper counts `t = 1..T`; like the reference implementation (and diffusers) this crate
//! stores tables by **index** `i = t − 1 ∈ 0..T`, and the index is what the network's time
//! embedding sees. So `betas[0] = β_1`, `alphas_cumprod[T−1] = ᾱ_T`, and
//! `alphas_cumprod_prev[i] = ᾱ_{t−1}` with `ᾱ_0 = 1`.
//!
//! Notation follows Ho et al. 2020: `α_t = 1 − β_t`, `ᾱ_t = ∏_{s≤t} α_s` (the cumulative
//! product; the DDIM paper writes `α_t` for it — not here).

use serde::{Deserialize, Serialize};

/// How β_t is chosen.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum BetaSchedule {
    /// Ho et al. 2020: β linear from `beta_start` to `beta_end` (1e-4 → 0.02 for T = 1000).
    Linear { beta_start: f64, beta_end: f64 },
    /// Nichol & Dhariwal 2021: `ᾱ_t = f(t)/f(0)`, `f(t) = cos²(((t/T)+s)/(1+s)·π/2)`,
    /// β clipped at `max_beta` (0.999).
    Cosine { s: f64, max_beta: f64 },
    /// Any explicit β_1..β_T.
    Explicit { betas: Vec<f64> },
}

impl BetaSchedule {
    /// The paper's linear schedule (β_1 = 1e-4, β_T = 0.02).
    pub fn linear() -> Self {
        BetaSchedule::Linear {
            beta_start: 1e-4,
            beta_end: 0.02,
        }
    }

    /// The improved-DDPM cosine schedule (s = 0.008, β ≤ 0.999).
    pub fn cosine() -> Self {
        BetaSchedule::Cosine {
            s: 0.008,
            max_beta: 0.999,
        }
    }

    /// β_1..β_T for `num_timesteps` steps.
    pub fn betas(&self, num_timesteps: usize) -> Vec<f64> {
        let t_max = num_timesteps as f64;
        match self {
            BetaSchedule::Linear {
                beta_start,
                beta_end,
            } => (0..num_timesteps)
                .map(|i| {
                    if num_timesteps == 1 {
                        *beta_start
                    } else {
                        // Ho et al. 2020, §4 (docs/math.md §2): β_t = β_1 + (t−1)(β_T − β_1)/(T−1)
                        beta_start + i as f64 * (beta_end - beta_start) / (t_max - 1.0)
                    }
                })
                .collect(),
            BetaSchedule::Cosine { s, max_beta } => {
                let f = |t: f64| {
                    (((t / t_max) + s) / (1.0 + s) * std::f64::consts::FRAC_PI_2)
                        .cos()
                        .powi(2)
                };
                (0..num_timesteps)
                    .map(|i| {
                        // β_t = 1 − ᾱ_t/ᾱ_{t−1} = 1 − f(t)/f(t−1)
                        let t = (i + 1) as f64;
                        (1.0 - f(t) / f(t - 1.0)).min(*max_beta)
                    })
                    .collect()
            }
            BetaSchedule::Explicit { betas } => {
                assert_eq!(
                    betas.len(),
                    num_timesteps,
                    "explicit schedule has {} betas but T = {num_timesteps}",
                    betas.len()
                );
                betas.clone()
            }
        }
    }
}

/// Every per-timestep quantity the diffusion process needs, indexed by `i = t − 1`.
#[derive(Clone, Debug)]
pub struct NoiseSchedule {
    /// T.
    pub num_timesteps: usize,
    /// β_t.
    pub betas: Vec<f64>,
    /// α_t = 1 − β_t.
    pub alphas: Vec<f64>,
    /// ᾱ_t = ∏_{s≤t} α_s.
    pub alphas_cumprod: Vec<f64>,
    /// ᾱ_{t−1} (ᾱ_0 = 1).
    pub alphas_cumprod_prev: Vec<f64>,
    /// √ᾱ_t.
    pub sqrt_alphas_cumprod: Vec<f64>,
    /// √(1 − ᾱ_t).
    pub sqrt_one_minus_alphas_cumprod: Vec<f64>,
    /// log(1 − ᾱ_t).
    pub log_one_minus_alphas_cumprod: Vec<f64>,
    /// 1/√ᾱ_t.
    pub sqrt_recip_alphas_cumprod: Vec<f64>,
    /// √(1/ᾱ_t − 1).
    pub sqrt_recipm1_alphas_cumprod: Vec<f64>,
    /// β̃_t = (1 − ᾱ_{t−1})/(1 − ᾱ_t) · β_t (Ho et al. eq. 7); β̃_1 = 0.
    pub posterior_variance: Vec<f64>,
    /// log β̃_t with the t = 1 entry replaced by log β̃_2 (β̃_1 = 0 has no logarithm).
    pub posterior_log_variance_clipped: Vec<f64>,
    /// Coefficient of x_0 in μ̃_t: √ᾱ_{t−1} β_t / (1 − ᾱ_t).
    pub posterior_mean_coef1: Vec<f64>,
    /// Coefficient of x_t in μ̃_t: √α_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t).
    pub posterior_mean_coef2: Vec<f64>,
}

impl NoiseSchedule {
    /// Builds all tables from a β schedule.
    pub fn new(schedule: &BetaSchedule, num_timesteps: usize) -> Self {
        Self::from_betas(schedule.betas(num_timesteps))
    }

    /// Builds all tables from explicit β_1..β_T (each in (0, 1]).
    pub fn from_betas(betas: Vec<f64>) -> Self {
        let n = betas.len();
        assert!(n >= 1, "a schedule needs at least one step");
        assert!(
            betas.iter().all(|&b| b > 0.0 && b <= 1.0),
            "every β must lie in (0, 1]"
        );
        let alphas: Vec<f64> = betas.iter().map(|b| 1.0 - b).collect();
        let mut alphas_cumprod = Vec::with_capacity(n);
        let mut acc = 1.0;
        for a in &alphas {
            acc *= a;
            alphas_cumprod.push(acc);
        }
        let mut alphas_cumprod_prev = vec![1.0];
        alphas_cumprod_prev.extend_from_slice(&alphas_cumprod[..n - 1]);

        let posterior_variance: Vec<f64> = (0..n)
            .map(|i| betas[i] * (1.0 - alphas_cumprod_prev[i]) / (1.0 - alphas_cumprod[i]))
            .collect();
        let posterior_log_variance_clipped: Vec<f64> = (0..n)
            .map(|i| {
                if i == 0 {
                    // With T = 1 there is no β̃_2; fall back to log β_1.
                    posterior_variance.get(1).copied().unwrap_or(betas[0]).ln()
                } else {
                    posterior_variance[i].ln()
                }
            })
            .collect();
        NoiseSchedule {
            num_timesteps: n,
            sqrt_alphas_cumprod: alphas_cumprod.iter().map(|a| a.sqrt()).collect(),
            sqrt_one_minus_alphas_cumprod: alphas_cumprod
                .iter()
                .map(|a| (1.0 - a).sqrt())
                .collect(),
            log_one_minus_alphas_cumprod: alphas_cumprod.iter().map(|a| (1.0 - a).ln()).collect(),
            sqrt_recip_alphas_cumprod: alphas_cumprod.iter().map(|a| 1.0 / a.sqrt()).collect(),
            sqrt_recipm1_alphas_cumprod: alphas_cumprod
                .iter()
                .map(|a| (1.0 / a - 1.0).sqrt())
                .collect(),
            posterior_mean_coef1: (0..n)
                .map(|i| betas[i] * alphas_cumprod_prev[i].sqrt() / (1.0 - alphas_cumprod[i]))
                .collect(),
            posterior_mean_coef2: (0..n)
                .map(|i| {
                    (1.0 - alphas_cumprod_prev[i]) * alphas[i].sqrt() / (1.0 - alphas_cumprod[i])
                })
                .collect(),
            posterior_variance,
            posterior_log_variance_clipped,
            betas,
            alphas,
            alphas_cumprod,
            alphas_cumprod_prev,
        }
    }

    /// μ̃_t(x_t, x_0) = coef1·x_0 + coef2·x_t for one value (Ho et al. eq. 7), the scalar twin of
    /// `GaussianDiffusion::q_posterior_mean_variance` used by the bound on the host.
    pub fn posterior_mean(&self, t: usize, x0: f64, x_t: f64) -> f64 {
        self.posterior_mean_coef1[t] * x0 + self.posterior_mean_coef2[t] * x_t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn linear() -> NoiseSchedule {
        NoiseSchedule::new(&BetaSchedule::linear(), 1000)
    }

    #[test]
    fn linear_schedule_matches_theory_values() {
        let s = linear();
        assert_eq!(s.betas.len(), 1000);
        assert!((s.betas[0] - 1e-4).abs() < 1e-15);
        assert!((s.betas[999] - 0.02).abs() < 1e-15);
        // β_t = 1e-4 + (t−1)(0.02−1e-4)/999, checked at t = 500.
        assert!((s.betas[499] - (1e-4 + 499.0 * (0.02 - 1e-4) / 999.0)).abs() < 1e-15);
        // docs/math.md §2: ᾱ_T = 4.0358e-5, √ᾱ_T = 6.353e-3.
        assert!(
            (s.alphas_cumprod[999] - 4.0358e-5).abs() < 5e-9,
            "{}",
            s.alphas_cumprod[999]
        );
        assert!((s.sqrt_alphas_cumprod[999] - 6.353e-3).abs() < 5e-7);
        // ᾱ_1 = α_1, ᾱ_0 = 1.
        assert_eq!(s.alphas_cumprod_prev[0], 1.0);
        assert!((s.alphas_cumprod[0] - (1.0 - 1e-4)).abs() < 1e-15);
    }

    #[test]
    fn posterior_tables_match_definitions() {
        let s = linear();
        // β̃_1 = 0, and the clipped log-variance uses β̃_2 there.
        assert_eq!(s.posterior_variance[0], 0.0);
        assert_eq!(
            s.posterior_log_variance_clipped[0],
            s.posterior_variance[1].ln()
        );
        for i in [1, 10, 500, 999] {
            let (b, a, ab, abp) = (
                s.betas[i],
                s.alphas[i],
                s.alphas_cumprod[i],
                s.alphas_cumprod_prev[i],
            );
            assert!((s.posterior_variance[i] - (1.0 - abp) / (1.0 - ab) * b).abs() < 1e-18);
            assert!((s.posterior_mean_coef1[i] - abp.sqrt() * b / (1.0 - ab)).abs() < 1e-15);
            assert!(
                (s.posterior_mean_coef2[i] - a.sqrt() * (1.0 - abp) / (1.0 - ab)).abs() < 1e-15
            );
            // β̃_t ≤ β_t always.
            assert!(s.posterior_variance[i] <= b);
        }
        // μ̃ of a constant signal that has not been noised is consistent: coef1·√ᾱ_t⁻¹… the
        // two coefficients applied to (x_0, x_t = √ᾱ_t x_0) give √ᾱ_{t−1} x_0 (a noiseless
        // trajectory stays on its mean).
        for i in 1..1000 {
            let m =
                s.posterior_mean_coef1[i] + s.posterior_mean_coef2[i] * s.sqrt_alphas_cumprod[i];
            assert!((m - s.alphas_cumprod_prev[i].sqrt()).abs() < 1e-12);
        }
    }

    #[test]
    fn cosine_schedule_matches_its_definition() {
        let s = NoiseSchedule::new(&BetaSchedule::cosine(), 1000);
        let f = |t: f64| {
            ((t / 1000.0 + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2)
                .cos()
                .powi(2)
        };
        for t in [1usize, 100, 500, 900] {
            let expect = f(t as f64) / f(0.0);
            assert!((s.alphas_cumprod[t - 1] - expect).abs() < 1e-12, "t={t}");
        }
        assert!(s.betas.iter().all(|&b| b <= 0.999));
        assert!((s.betas[999] - 0.999).abs() < 1e-12, "last β is clipped");
        // ᾱ decreases monotonically.
        assert!(s.alphas_cumprod.windows(2).all(|w| w[1] < w[0]));
    }

    #[test]
    fn forward_marginals_iff_sum_of_betas_diverges() {
        // docs/math.md §2: with Σβ large, ᾱ_T → 0; the linear schedule's Σβ ≈ 10.05.
        let s = linear();
        let sum: f64 = s.betas.iter().sum();
        assert!((sum - 10.05).abs() < 1e-9);
        assert!(s.alphas_cumprod[999] < (-sum).exp() + 1e-12);
    }
}
