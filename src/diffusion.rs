//! The Gaussian diffusion process of Ho et al. 2020 on tensors: one object owns the schedule
//! tables and exposes the paper's operations under the paper's names.
//!
//! Timesteps are table indices `i = t − 1` (see [`crate::schedule`]). Per batch, the needed
//! coefficients are gathered from the f64 tables and sent as f32 tensors of shape [B,1,1,1].

use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::schedule::{BetaSchedule, NoiseSchedule};

/// The reverse-process variance σ_t² (Ho et al. 2020, §3.2; docs/math.md §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum VarianceType {
    /// σ_t² = β_t ("fixed large"); at t = 1 the reference code's β̃_2 is used.
    Large,
    /// σ_t² = β̃_t ("fixed small"); its log is clipped at t = 1.
    Small,
}

/// The training objective (Ho et al. eqs. 12 and 14; docs/math.md §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LossType {
    /// L_simple: the unweighted mean of ‖ε − ε_θ‖² (Ho et al. eq. 14).
    Simple,
    /// The true-bound weighting of each term, β_t²/(2σ_t² α_t (1−ᾱ_t)) · ‖ε − ε_θ‖²
    /// (Ho et al. eq. 12), summed over pixels so that it is in nats per image.
    Vlb,
}

/// Everything that defines the diffusion process, serialised into a run's config.json.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiffusionConfig {
    /// T.
    pub num_timesteps: usize,
    /// The β schedule.
    pub schedule: BetaSchedule,
    /// σ_t² of the reverse process.
    pub variance: VarianceType,
    /// Training objective.
    pub loss: LossType,
}

impl Default for DiffusionConfig {
    fn default() -> Self {
        DiffusionConfig {
            num_timesteps: 1000,
            schedule: BetaSchedule::linear(),
            variance: VarianceType::Large,
            loss: LossType::Simple,
        }
    }
}

/// A network (or an oracle) that predicts the noise ε in x_t.
pub trait EpsModel {
    /// ε_θ(x_t, t) for a batch; `t[b]` is the table index of sample `b`.
    fn predict_eps(&self, x_t: Tensor<4>, t: &[usize]) -> Tensor<4>;
}

/// Mean and variance of p_θ(x_{t−1} | x_t), with the intermediate x̂₀ and ε.
pub struct PMeanVariance {
    /// μ_θ(x_t, t).
    pub mean: Tensor<4>,
    /// σ_t² per sample, [B,1,1,1].
    pub variance: Tensor<4>,
    /// log σ_t² per sample, [B,1,1,1].
    pub log_variance: Tensor<4>,
    /// x̂₀ (clipped when asked).
    pub pred_x0: Tensor<4>,
    /// ε_θ(x_t, t).
    pub eps: Tensor<4>,
}

/// The diffusion process: schedule tables plus the operations of Ho et al.
#[derive(Clone, Debug)]
pub struct GaussianDiffusion {
    /// The configuration it was built from.
    pub config: DiffusionConfig,
    /// All per-timestep tables (f64).
    pub schedule: NoiseSchedule,
    /// σ_t² for the configured variance type, per index.
    pub model_variance: Vec<f64>,
    /// log σ_t², per index.
    pub model_log_variance: Vec<f64>,
}

impl GaussianDiffusion {
    /// Builds the tables for a configuration.
    pub fn new(config: DiffusionConfig) -> Self {
        let schedule = NoiseSchedule::new(&config.schedule, config.num_timesteps);
        let (model_variance, model_log_variance) = match config.variance {
            VarianceType::Large => {
                // Reference code: variance = [β̃_2, β_2, …, β_T] (β_1 would make L_0 too wide
                // a decoder, β̃_1 = 0 too narrow).
                let mut v = schedule.betas.clone();
                v[0] = schedule.posterior_variance.get(1).copied().unwrap_or(v[0]);
                let log = v.iter().map(|x| x.ln()).collect();
                (v, log)
            }
            VarianceType::Small => (
                schedule.posterior_variance.clone(),
                schedule.posterior_log_variance_clipped.clone(),
            ),
        };
        GaussianDiffusion {
            config,
            schedule,
            model_variance,
            model_log_variance,
        }
    }

    /// T.
    pub fn num_timesteps(&self) -> usize {
        self.schedule.num_timesteps
    }

    /// Gathers `table[t[b]]` into an f32 tensor of shape [B,1,1,1].
    pub fn gather(table: &[f64], t: &[usize], device: &Device) -> Tensor<4> {
        let vals: Vec<f32> = t.iter().map(|&i| table[i] as f32).collect();
        Tensor::from_data(TensorData::new(vals, [t.len(), 1, 1, 1]), device)
    }

    /// Samples x_t ~ q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I) (Ho et al. eq. 4).
    pub fn q_sample(&self, x0: Tensor<4>, t: &[usize], noise: Tensor<4>) -> Tensor<4> {
        let device = x0.device();
        let s = &self.schedule;
        x0 * Self::gather(&s.sqrt_alphas_cumprod, t, &device)
            + noise * Self::gather(&s.sqrt_one_minus_alphas_cumprod, t, &device)
    }

    /// Mean, variance and log-variance of q(x_{t−1} | x_t, x_0) (Ho et al. eqs. 6–7).
    pub fn q_posterior_mean_variance(
        &self,
        x0: Tensor<4>,
        x_t: Tensor<4>,
        t: &[usize],
    ) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
        let device = x0.device();
        let s = &self.schedule;
        let mean = x0 * Self::gather(&s.posterior_mean_coef1, t, &device)
            + x_t * Self::gather(&s.posterior_mean_coef2, t, &device);
        (
            mean,
            Self::gather(&s.posterior_variance, t, &device),
            Self::gather(&s.posterior_log_variance_clipped, t, &device),
        )
    }

    /// x̂₀ = (x_t − √(1−ᾱ_t) ε)/√ᾱ_t (Ho et al. eq. 4 solved for x_0).
    pub fn predict_x0_from_eps(&self, x_t: Tensor<4>, t: &[usize], eps: Tensor<4>) -> Tensor<4> {
        let device = x_t.device();
        let s = &self.schedule;
        x_t * Self::gather(&s.sqrt_recip_alphas_cumprod, t, &device)
            - eps * Self::gather(&s.sqrt_recipm1_alphas_cumprod, t, &device)
    }

    /// ε = (x_t − √ᾱ_t x̂₀)/√(1−ᾱ_t), the inverse of [`Self::predict_x0_from_eps`].
    pub fn predict_eps_from_x0(&self, x_t: Tensor<4>, t: &[usize], x0: Tensor<4>) -> Tensor<4> {
        let device = x_t.device();
        let s = &self.schedule;
        (x_t * Self::gather(&s.sqrt_recip_alphas_cumprod, t, &device) - x0)
            / Self::gather(&s.sqrt_recipm1_alphas_cumprod, t, &device)
    }

    /// p_θ(x_{t−1} | x_t) from a noise prediction: x̂₀ from ε (optionally clipped to [−1, 1]),
    /// then μ_θ = μ̃_t(x_t, x̂₀) (Ho et al. eq. 11 when unclipped) and σ_t² as configured.
    pub fn p_mean_variance_from_eps(
        &self,
        x_t: Tensor<4>,
        t: &[usize],
        eps: Tensor<4>,
        clip_x0: bool,
    ) -> PMeanVariance {
        let device = x_t.device();
        let mut pred_x0 = self.predict_x0_from_eps(x_t.clone(), t, eps.clone());
        if clip_x0 {
            pred_x0 = pred_x0.clamp(-1.0, 1.0);
        }
        let (mean, _, _) = self.q_posterior_mean_variance(pred_x0.clone(), x_t, t);
        PMeanVariance {
            mean,
            variance: Self::gather(&self.model_variance, t, &device),
            log_variance: Self::gather(&self.model_log_variance, t, &device),
            pred_x0,
            eps,
        }
    }

    /// p_θ(x_{t−1} | x_t) with ε from `model`.
    pub fn p_mean_variance(
        &self,
        model: &dyn EpsModel,
        x_t: Tensor<4>,
        t: &[usize],
        clip_x0: bool,
    ) -> PMeanVariance {
        let eps = model.predict_eps(x_t.clone(), t);
        self.p_mean_variance_from_eps(x_t, t, eps, clip_x0)
    }

    /// Per-sample weights of ‖ε − ε_θ‖² for the configured loss (1 for L_simple).
    pub fn loss_weights(&self, t: &[usize]) -> Vec<f64> {
        let s = &self.schedule;
        t.iter()
            .map(|&i| match self.config.loss {
                LossType::Simple => 1.0,
                // Ho et al. eq. 12: β_t² / (2 σ_t² α_t (1 − ᾱ_t)).
                LossType::Vlb => {
                    s.betas[i].powi(2)
                        / (2.0 * self.model_variance[i] * s.alphas[i] * (1.0 - s.alphas_cumprod[i]))
                }
            })
            .collect()
    }

    /// The training loss of Algorithm 1 for one batch, given the noise prediction: L_simple is
    /// the mean over pixels and batch; L_vlb sums the weighted squared error over pixels and
    /// averages over the batch.
    pub fn training_loss(&self, eps: Tensor<4>, eps_pred: Tensor<4>, t: &[usize]) -> Tensor<1> {
        let [b, c, h, w] = eps.dims();
        let sq = (eps - eps_pred).square();
        match self.config.loss {
            LossType::Simple => sq.mean(),
            LossType::Vlb => {
                let weights = Self::gather(&self.loss_weights(t), t, &sq.device());
                let per_sample = (sq * weights).reshape([b, c * h * w]).sum_dim(1);
                per_sample.mean()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{device, to_vec};
    use rand::{Rng, SeedableRng, rngs::StdRng};
    use rand_distr::StandardNormal;

    fn randn(n: usize, rng: &mut StdRng) -> Vec<f32> {
        (0..n)
            .map(|_| rng.sample::<f32, _>(StandardNormal))
            .collect()
    }

    fn tensor(v: Vec<f32>, shape: [usize; 4]) -> Tensor<4> {
        Tensor::from_data(TensorData::new(v, shape), &device())
    }

    #[test]
    fn q_sample_moments_match_iterating_the_markov_chain() {
        // Iterate x_s = √α_s x_{s−1} + √β_s z for s = 1..t and compare the empirical moments
        // of x_t with q_sample's closed form, for a fixed x_0.
        let d = GaussianDiffusion::new(DiffusionConfig::default());
        let n = 20_000;
        let x0 = 0.7f32;
        let mut rng = StdRng::seed_from_u64(1);
        for &t in &[0usize, 9, 299, 999] {
            let mut chain = vec![x0 as f64; n];
            for s in 0..=t {
                let (a, b) = (d.schedule.alphas[s].sqrt(), d.schedule.betas[s].sqrt());
                for x in chain.iter_mut() {
                    *x = a * *x + b * rng.sample::<f64, _>(StandardNormal);
                }
            }
            let closed = d.q_sample(
                tensor(vec![x0; n], [n, 1, 1, 1]),
                &vec![t; n],
                tensor(randn(n, &mut rng), [n, 1, 1, 1]),
            );
            let closed: Vec<f64> = to_vec(closed).into_iter().map(|x| x as f64).collect();
            let (m1, s1) = mean_std(&chain);
            let (m2, s2) = mean_std(&closed);
            let exact_m = d.schedule.sqrt_alphas_cumprod[t] * x0 as f64;
            let exact_s = d.schedule.sqrt_one_minus_alphas_cumprod[t];
            // 5 standard errors.
            let tol_m = 5.0 * exact_s / (n as f64).sqrt() + 1e-6;
            let tol_s = 5.0 * exact_s / (2.0 * n as f64).sqrt() + 1e-6;
            for (m, s) in [(m1, s1), (m2, s2)] {
                assert!((m - exact_m).abs() < tol_m, "t={t}: mean {m} vs {exact_m}");
                assert!((s - exact_s).abs() < tol_s, "t={t}: std {s} vs {exact_s}");
            }
        }
    }

    fn mean_std(v: &[f64]) -> (f64, f64) {
        let n = v.len() as f64;
        let m = v.iter().sum::<f64>() / n;
        let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0);
        (m, var.sqrt())
    }

    #[test]
    fn posterior_matches_numeric_bayes() {
        // q(x_{t−1} | x_t, x_0) ∝ q(x_t | x_{t−1}) q(x_{t−1} | x_0): evaluate that product on a
        // fine grid and compare its mean and variance with the closed form.
        let d = GaussianDiffusion::new(DiffusionConfig::default());
        let s = &d.schedule;
        for &t in &[1usize, 50, 500, 999] {
            let (x0, xt) = (0.4f64, -0.3f64);
            let prior_mean = s.sqrt_alphas_cumprod[t - 1] * x0;
            let prior_var = 1.0 - s.alphas_cumprod[t - 1];
            let lik_var = s.betas[t];
            // A grid that covers both factors; weights relative to the largest log-density so
            // nothing underflows.
            let a = s.alphas[t].sqrt();
            let sd = prior_var.sqrt().max(lik_var.sqrt() / a);
            let (c1, c2) = (prior_mean.min(xt / a), prior_mean.max(xt / a));
            let (lo, hi, n) = (c1 - 12.0 * sd, c2 + 12.0 * sd, 2_000_000);
            let h = (hi - lo) / n as f64;
            let logp = |x: f64| {
                -(x - prior_mean).powi(2) / (2.0 * prior_var)
                    - (xt - a * x).powi(2) / (2.0 * lik_var)
            };
            let peak = (0..=n)
                .map(|k| logp(lo + k as f64 * h))
                .fold(f64::MIN, f64::max);
            let (mut z, mut m1, mut m2) = (0.0, 0.0, 0.0);
            for k in 0..=n {
                let x = lo + k as f64 * h;
                let p = (logp(x) - peak).exp();
                z += p;
                m1 += p * x;
                m2 += p * x * x;
            }
            let mean = m1 / z;
            let var = m2 / z - mean * mean;
            let (pm, pv, _) = d.q_posterior_mean_variance(
                tensor(vec![x0 as f32], [1, 1, 1, 1]),
                tensor(vec![xt as f32], [1, 1, 1, 1]),
                &[t],
            );
            let pm = to_vec(pm)[0] as f64;
            let pv = to_vec(pv)[0] as f64;
            assert!(
                (pm - mean).abs() < 1e-5,
                "t={t}: mean {pm} vs numeric {mean}"
            );
            assert!(
                ((pv - var) / var).abs() < 1e-4,
                "t={t}: var {pv} vs numeric {var}"
            );
        }
    }

    #[test]
    fn eps_and_x0_identities() {
        let d = GaussianDiffusion::new(DiffusionConfig::default());
        let mut rng = StdRng::seed_from_u64(7);
        let shape = [4, 1, 3, 3];
        let t = [0usize, 1, 500, 999];
        let x0 = tensor(randn(36, &mut rng), shape).clamp(-1.0, 1.0);
        let eps = tensor(randn(36, &mut rng), shape);
        let xt = d.q_sample(x0.clone(), &t, eps.clone());
        // x̂₀ from the true ε recovers x_0; ε from the true x_0 recovers ε.
        let x0_hat = to_vec(d.predict_x0_from_eps(xt.clone(), &t, eps.clone()));
        let eps_hat = to_vec(d.predict_eps_from_x0(xt.clone(), &t, x0.clone()));
        let (x0v, epsv) = (to_vec(x0.clone()), to_vec(eps.clone()));
        for k in 0..36 {
            // At t = T, 1/√ᾱ_T ≈ 157 amplifies f32 rounding.
            let tol = if k >= 27 { 2e-3 } else { 2e-5 };
            assert!(
                (x0_hat[k] - x0v[k]).abs() < tol,
                "x0 {k}: {} vs {}",
                x0_hat[k],
                x0v[k]
            );
            assert!((eps_hat[k] - epsv[k]).abs() < 2e-4, "eps {k}");
        }
        // μ_θ from the ε-form (Ho et al. eq. 11) equals μ̃_t(x_t, x̂₀) (unclipped).
        let pmv = d.p_mean_variance_from_eps(xt.clone(), &t, eps.clone(), false);
        let s = &d.schedule;
        let mean = to_vec(pmv.mean);
        let (xtv, epsv) = (to_vec(xt), to_vec(eps));
        for k in 0..36 {
            let i = t[k / 9];
            let expect = (xtv[k] as f64
                - s.betas[i] / s.sqrt_one_minus_alphas_cumprod[i] * epsv[k] as f64)
                / s.alphas[i].sqrt();
            assert!(
                (mean[k] as f64 - expect).abs() < 1e-4,
                "mean {k}: {} vs {expect}",
                mean[k]
            );
        }
    }

    #[test]
    fn fixed_large_uses_beta_tilde_2_at_t1() {
        let d = GaussianDiffusion::new(DiffusionConfig::default());
        assert_eq!(d.model_variance[0], d.schedule.posterior_variance[1]);
        assert_eq!(d.model_variance[5], d.schedule.betas[5]);
        let small = GaussianDiffusion::new(DiffusionConfig {
            variance: VarianceType::Small,
            ..Default::default()
        });
        assert_eq!(
            small.model_log_variance[0],
            small.schedule.posterior_variance[1].ln()
        );
        assert_eq!(
            small.model_variance[7],
            small.schedule.posterior_variance[7]
        );
    }

    #[test]
    fn vlb_weights_match_eq_12() {
        let d = GaussianDiffusion::new(DiffusionConfig {
            loss: LossType::Vlb,
            variance: VarianceType::Small,
            ..Default::default()
        });
        let s = &d.schedule;
        let w = d.loss_weights(&[10, 999]);
        for (k, i) in [10usize, 999].into_iter().enumerate() {
            let expect = s.betas[i].powi(2)
                / (2.0 * s.posterior_variance[i] * s.alphas[i] * (1.0 - s.alphas_cumprod[i]));
            assert!((w[k] - expect).abs() < 1e-12 * expect);
        }
        // With σ² = β̃ the weight simplifies to β_t / (2 α_t (1 − ᾱ_{t−1})).
        for (k, i) in [10usize, 999].into_iter().enumerate() {
            let simple = s.betas[i] / (2.0 * s.alphas[i] * (1.0 - s.alphas_cumprod_prev[i]));
            assert!((w[k] - simple).abs() < 1e-9 * simple);
        }
    }
}
