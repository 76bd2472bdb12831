//! The Gaussian diffusion process of Ho et al. 2020 on tensors: one object owns the schedule
//! tables and exposes the paper's operations under the paper's names.
//!
//! Timesteps are table indices `i = t − 1` (see [`crate::schedule`]). Per batch, the needed
//! coefficients are gathered from the f64 tables and sent as f32 tensors of shape [B,1,1,1].
//!
//! The network's output is interpreted here and nowhere else: [`GaussianDiffusion::interpret`]
//! turns an ε-, x₀- or v-prediction (with or without a learned variance) into the
//! [`ModelOutput`] every sampler, the bound and the corrector read, so a new parameterisation is
//! one [`Prediction`] variant and its two conversions.

use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::schedule::{BetaSchedule, NoiseSchedule};

/// The reverse-process variance σ_t² (Ho et al. §3.2; Nichol & Dhariwal 2021 §3.1; docs/math.md
/// §5, §10).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum VarianceType {
    /// σ_t² = β_t ("fixed large"); at t = 1 the reference code's β̃_2 is used.
    Large,
    /// σ_t² = β̃_t ("fixed small"); its log is clipped at t = 1.
    Small,
    /// Learned: the network has 2C output channels; the second half, v, interpolates
    /// `log σ_t² = ((v+1)/2) log β_t + (1 − (v+1)/2) log β̃_t` (Nichol & Dhariwal 2021, eq. 15).
    Learned,
}

/// What the network predicts (its output parameterisation; docs/math.md §8).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Prediction {
    /// The noise ε (Ho et al. eq. 11).
    #[default]
    #[cfg_attr(feature = "cli", value(name = "eps"))]
    #[serde(alias = "eps")]
    Epsilon,
    /// The clean image x₀.
    X0,
    /// The velocity v = √ᾱ_t ε − √(1−ᾱ_t) x₀ (Salimans & Ho 2022, §4).
    V,
}

/// How the per-sample squared error of Algorithm 1 is weighted (docs/math.md §6, §9).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum LossType {
    /// L_simple: the unweighted mean squared error of the predicted quantity (Ho et al. eq. 14
    /// for ε).
    #[default]
    Simple,
    /// Min-SNR-γ (Hang et al. 2023): `min(SNR_t, γ)·‖x₀ − x̂₀‖²`, i.e. weight `min(SNR, γ)/SNR`
    /// on the ε error, `min(SNR, γ)` on x₀ and `min(SNR, γ)/(SNR + 1)` on v.
    #[cfg_attr(feature = "cli", value(name = "min-snr"))]
    #[serde(rename = "min-snr")]
    MinSnr,
    /// The true bound's weighting of each term, β_t²/(2σ_t² α_t (1−ᾱ_t)) · ‖ε − ε_θ‖²
    /// (Ho et al. eq. 12), summed over pixels so that it is in nats per image.
    Vlb,
}

fn default_min_snr_gamma() -> f64 {
    5.0
}

fn default_hybrid_lambda() -> f64 {
    0.001
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
    /// Training objective's weighting.
    pub loss: LossType,
    /// What the network predicts.
    #[serde(default)]
    pub prediction: Prediction,
    /// γ of the min-SNR weighting (Hang et al. 2023 use 5).
    #[serde(default = "default_min_snr_gamma")]
    pub min_snr_gamma: f64,
    /// λ of L_hybrid = L_simple + λ·L_vlb for learned variances (Nichol & Dhariwal 2021 §3.1).
    #[serde(default = "default_hybrid_lambda")]
    pub hybrid_lambda: f64,
}

impl Default for DiffusionConfig {
    fn default() -> Self {
        DiffusionConfig {
            num_timesteps: 1000,
            schedule: BetaSchedule::linear(),
            variance: VarianceType::Large,
            loss: LossType::Simple,
            prediction: Prediction::Epsilon,
            min_snr_gamma: default_min_snr_gamma(),
            hybrid_lambda: default_hybrid_lambda(),
        }
    }
}

/// A denoising network (or an exact oracle): its raw output for x_t.
///
/// What the output means is the diffusion's [`Prediction`] (and, for
/// [`VarianceType::Learned`], C more channels for the variance); [`GaussianDiffusion::interpret`]
/// converts it.
pub trait Denoiser {
    /// The output for a batch; `t[b]` is the table index of sample `b` and `y[b]` its class
    /// label (`None`: an unconditional call; label K of a K-class model is the null label ∅ of
    /// classifier-free guidance).
    fn forward(&self, x_t: Tensor<4>, t: &[usize], y: Option<&[usize]>) -> Tensor<4>;
}

/// The network's output, interpreted: ε̂, x̂₀ (unclipped) and log σ_t².
#[derive(Clone, Debug)]
pub struct ModelOutput {
    /// ε̂(x_t, t).
    pub eps: Tensor<4>,
    /// x̂₀(x_t, t), not clipped.
    pub pred_x0: Tensor<4>,
    /// log σ_t²: [B,1,1,1] for fixed variances, [B,C,H,W] when learned.
    pub log_variance: Tensor<4>,
    /// The learned-variance head's raw output v (learned variances only).
    pub var_values: Option<Tensor<4>>,
}

/// Mean and variance of p_θ(x_{t−1} | x_t), with the intermediate x̂₀ and ε.
pub struct PMeanVariance {
    /// μ_θ(x_t, t).
    pub mean: Tensor<4>,
    /// σ_t² ([B,1,1,1], or per pixel when learned).
    pub variance: Tensor<4>,
    /// log σ_t².
    pub log_variance: Tensor<4>,
    /// x̂₀ (clipped when asked).
    pub pred_x0: Tensor<4>,
    /// ε̂, consistent with the unclipped x̂₀.
    pub eps: Tensor<4>,
}

/// The diffusion process: schedule tables plus the operations of Ho et al.
#[derive(Clone, Debug)]
pub struct GaussianDiffusion {
    /// The configuration it was built from.
    pub config: DiffusionConfig,
    /// All per-timestep tables (f64).
    pub schedule: NoiseSchedule,
    /// σ_t² for a fixed variance type, per index (for `Learned`: the β̃ table, its lower end).
    pub model_variance: Vec<f64>,
    /// log σ_t², per index.
    pub model_log_variance: Vec<f64>,
    /// log β_t with the reference code's β̃_2 at t = 1: the upper end of a learned variance.
    log_beta: Vec<f64>,
}

impl GaussianDiffusion {
    /// Builds the tables for a configuration.
    pub fn new(config: DiffusionConfig) -> Self {
        let schedule = NoiseSchedule::new(&config.schedule, config.num_timesteps);
        // Reference code: fixed large is [β̃_2, β_2, …, β_T] (β_1 would make L_0 too wide a
        // decoder, β̃_1 = 0 too narrow).
        let mut large = schedule.betas.clone();
        large[0] = schedule
            .posterior_variance
            .get(1)
            .copied()
            .unwrap_or(large[0]);
        let log_large: Vec<f64> = large.iter().map(|x| x.ln()).collect();
        let (model_variance, model_log_variance) = match config.variance {
            VarianceType::Large => (large, log_large.clone()),
            VarianceType::Small | VarianceType::Learned => (
                schedule.posterior_variance.clone(),
                schedule.posterior_log_variance_clipped.clone(),
            ),
        };
        // The learned range interpolates between log β_t and the clipped log β̃_t, as
        // improved-diffusion's `LEARNED_RANGE`.
        let log_beta = schedule.betas.iter().map(|b| b.ln()).collect();
        GaussianDiffusion {
            config,
            schedule,
            model_variance,
            model_log_variance,
            log_beta,
        }
    }

    /// T.
    pub fn num_timesteps(&self) -> usize {
        self.schedule.num_timesteps
    }

    /// Output channels of a network for images with `channels` channels (2C when the variance
    /// is learned).
    pub fn output_channels(&self, channels: usize) -> usize {
        if self.config.variance == VarianceType::Learned {
            2 * channels
        } else {
            channels
        }
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

    /// v = √ᾱ_t ε − √(1−ᾱ_t) x₀ (Salimans & Ho 2022, §4).
    pub fn v_from(&self, x0: Tensor<4>, eps: Tensor<4>, t: &[usize]) -> Tensor<4> {
        let device = x0.device();
        let s = &self.schedule;
        eps * Self::gather(&s.sqrt_alphas_cumprod, t, &device)
            - x0 * Self::gather(&s.sqrt_one_minus_alphas_cumprod, t, &device)
    }

    /// (x̂₀, ε̂) from v: x̂₀ = √ᾱ_t x_t − √(1−ᾱ_t) v and ε̂ = √(1−ᾱ_t) x_t + √ᾱ_t v (since
    /// ᾱ_t + (1 − ᾱ_t) = 1).
    pub fn x0_eps_from_v(
        &self,
        x_t: Tensor<4>,
        t: &[usize],
        v: Tensor<4>,
    ) -> (Tensor<4>, Tensor<4>) {
        let device = x_t.device();
        let s = &self.schedule;
        let a = Self::gather(&s.sqrt_alphas_cumprod, t, &device);
        let b = Self::gather(&s.sqrt_one_minus_alphas_cumprod, t, &device);
        let x0 = x_t.clone() * a.clone() - v.clone() * b.clone();
        let eps = x_t * b + v * a;
        (x0, eps)
    }

    /// The training target of the configured [`Prediction`] for data x₀ and noise ε.
    pub fn target(&self, x0: Tensor<4>, eps: Tensor<4>, t: &[usize]) -> Tensor<4> {
        match self.config.prediction {
            Prediction::Epsilon => eps,
            Prediction::X0 => x0,
            Prediction::V => self.v_from(x0, eps, t),
        }
    }

    /// Converts a prediction of the configured kind from exact (x₀, ε) — what an oracle that
    /// knows ε* returns when asked for x₀ or v: the inverse of [`Self::interpret`]'s mean part.
    pub fn output_from_eps(&self, x_t: Tensor<4>, t: &[usize], eps: Tensor<4>) -> Tensor<4> {
        let x0 = self.predict_x0_from_eps(x_t, t, eps.clone());
        self.target(x0, eps, t)
    }

    /// Splits a raw network output into its mean part (C channels) and, for learned
    /// variances, the variance part v (C channels).
    pub fn split_output(&self, raw: Tensor<4>) -> (Tensor<4>, Option<Tensor<4>>) {
        if self.config.variance != VarianceType::Learned {
            return (raw, None);
        }
        let c = raw.dims()[1] / 2;
        let mut halves = raw.split(c, 1).into_iter();
        let mean = halves.next().expect("mean half");
        let var = halves.next().expect("variance half");
        (mean, Some(var))
    }

    /// The network's output, interpreted (one place for every parameterisation): ε̂, x̂₀ and
    /// log σ_t² (learned: `frac·log β_t + (1−frac)·log β̃_t`, frac = (v+1)/2; Nichol &
    /// Dhariwal 2021, eq. 15).
    pub fn interpret(&self, raw: Tensor<4>, x_t: Tensor<4>, t: &[usize]) -> ModelOutput {
        let device = x_t.device();
        let (mean_part, var_values) = self.split_output(raw);
        let (pred_x0, eps) = match self.config.prediction {
            Prediction::Epsilon => (
                self.predict_x0_from_eps(x_t, t, mean_part.clone()),
                mean_part,
            ),
            Prediction::X0 => (
                mean_part.clone(),
                self.predict_eps_from_x0(x_t, t, mean_part),
            ),
            Prediction::V => self.x0_eps_from_v(x_t, t, mean_part),
        };
        let log_variance = match &var_values {
            Some(v) => {
                let frac = (v.clone() + 1.0) * 0.5;
                let max_log = Self::gather(&self.log_beta, t, &device);
                let min_log =
                    Self::gather(&self.schedule.posterior_log_variance_clipped, t, &device);
                frac.clone() * max_log + (frac.neg() + 1.0) * min_log
            }
            None => Self::gather(&self.model_log_variance, t, &device),
        };
        ModelOutput {
            eps,
            pred_x0,
            log_variance,
            var_values,
        }
    }

    /// One network call, interpreted.
    pub fn predict(
        &self,
        model: &dyn Denoiser,
        x_t: Tensor<4>,
        t: &[usize],
        y: Option<&[usize]>,
    ) -> ModelOutput {
        let raw = model.forward(x_t.clone(), t, y);
        self.interpret(raw, x_t, t)
    }

    /// Classifier-free guidance (Ho & Salimans 2022, eq. 6; docs/math.md §14):
    /// `ε̃ = ε(x_t, ∅) + w·(ε(x_t, y) − ε(x_t, ∅))`, both halves in one network call of twice the
    /// batch. The combination is applied to the raw output; every parameterisation is affine
    /// in it for fixed x_t with weights summing to one, so that equals combining ε. A learned
    /// variance is taken from the conditional half.
    pub fn predict_cfg(
        &self,
        model: &dyn Denoiser,
        x_t: Tensor<4>,
        t: &[usize],
        y: &[usize],
        null_label: usize,
        scale: f64,
    ) -> ModelOutput {
        let b = t.len();
        let xx = Tensor::cat(vec![x_t.clone(), x_t.clone()], 0);
        let tt: Vec<usize> = t.iter().chain(t).copied().collect();
        let yy: Vec<usize> = y
            .iter()
            .copied()
            .chain(std::iter::repeat_n(null_label, b))
            .collect();
        let raw = model.forward(xx, &tt, Some(&yy));
        let mut halves = raw.split(b, 0).into_iter();
        let cond = halves.next().expect("conditional half");
        let uncond = halves.next().expect("unconditional half");
        let (cm, cv) = self.split_output(cond);
        let (um, _) = self.split_output(uncond);
        let mean = um.clone() + (cm - um).mul_scalar(scale);
        let raw = match cv {
            Some(v) => Tensor::cat(vec![mean, v], 1),
            None => mean,
        };
        self.interpret(raw, x_t, t)
    }

    /// The same output with ε replaced (x̂₀ recomputed from it): classifier guidance in ε form
    /// (Dhariwal & Nichol 2021, Alg. 2) and the clipped-x̂₀ consistency of DDIM use it.
    pub fn with_eps(
        &self,
        out: &ModelOutput,
        x_t: Tensor<4>,
        t: &[usize],
        eps: Tensor<4>,
    ) -> ModelOutput {
        ModelOutput {
            pred_x0: self.predict_x0_from_eps(x_t, t, eps.clone()),
            eps,
            log_variance: out.log_variance.clone(),
            var_values: out.var_values.clone(),
        }
    }

    /// p_θ(x_{t−1} | x_t) from an interpreted output: x̂₀ (optionally clipped to [−1, 1]), then
    /// μ_θ = μ̃_t(x_t, x̂₀) (Ho et al. eq. 7; eq. 11 when ε-parameterised and unclipped) and σ_t².
    pub fn p_mean_variance(
        &self,
        out: &ModelOutput,
        x_t: Tensor<4>,
        t: &[usize],
        clip_x0: bool,
    ) -> PMeanVariance {
        let mut pred_x0 = out.pred_x0.clone();
        if clip_x0 {
            pred_x0 = pred_x0.clamp(-1.0, 1.0);
        }
        let (mean, _, _) = self.q_posterior_mean_variance(pred_x0.clone(), x_t, t);
        PMeanVariance {
            mean,
            variance: out.log_variance.clone().exp(),
            log_variance: out.log_variance.clone(),
            pred_x0,
            eps: out.eps.clone(),
        }
    }

    /// p_θ(x_{t−1} | x_t) from a noise prediction with the configured fixed variance.
    pub fn p_mean_variance_from_eps(
        &self,
        x_t: Tensor<4>,
        t: &[usize],
        eps: Tensor<4>,
        clip_x0: bool,
    ) -> PMeanVariance {
        let device = x_t.device();
        let out = ModelOutput {
            pred_x0: self.predict_x0_from_eps(x_t.clone(), t, eps.clone()),
            eps,
            log_variance: Self::gather(&self.model_log_variance, t, &device),
            var_values: None,
        };
        self.p_mean_variance(&out, x_t, t, clip_x0)
    }

    /// Signal-to-noise ratio ᾱ_t/(1 − ᾱ_t) per index (Kingma et al. 2021).
    pub fn snr(&self, t: usize) -> f64 {
        let a = self.schedule.alphas_cumprod[t];
        a / (1.0 - a)
    }

    /// Per-sample weights of the squared error of the predicted quantity, for the configured
    /// loss and prediction. Every weighting is defined on the ε error and converted with
    /// `‖x₀ − x̂₀‖² = ‖ε − ε̂‖²/SNR_t` and `‖v − v̂‖² = ‖ε − ε̂‖²/ᾱ_t` (both at fixed x_t); L_simple
    /// is unweighted in the predicted quantity whatever it is, as in the reference code.
    pub fn loss_weights(&self, t: &[usize]) -> Vec<f64> {
        let s = &self.schedule;
        t.iter()
            .map(|&i| {
                let snr = self.snr(i);
                // ‖δ(prediction)‖² = ratio · ‖δε‖².
                let ratio = match self.config.prediction {
                    Prediction::Epsilon => 1.0,
                    Prediction::X0 => 1.0 / snr,
                    Prediction::V => 1.0 / s.alphas_cumprod[i],
                };
                match self.config.loss {
                    LossType::Simple => 1.0,
                    // Hang et al. 2023, eq. 8: min(SNR, γ)·‖δx₀‖² = min(SNR, γ)/SNR·‖δε‖².
                    LossType::MinSnr => snr.min(self.config.min_snr_gamma) / snr / ratio,
                    // Ho et al. eq. 12: β_t² / (2 σ_t² α_t (1 − ᾱ_t)) on ‖δε‖², with the
                    // clipped σ² of the bound (β̃₁ = 0 would make the t = 1 weight infinite).
                    LossType::Vlb => {
                        s.betas[i].powi(2)
                            / (2.0
                                * self.model_log_variance[i].exp()
                                * s.alphas[i]
                                * (1.0 - s.alphas_cumprod[i]))
                            / ratio
                    }
                }
            })
            .collect()
    }

    /// The training loss of Algorithm 1 for one batch, given the network's raw output for
    /// x_t = q_sample(x₀, t, ε). L_simple and min-SNR average over pixels and batch; L_vlb is
    /// the batch mean of [`GaussianDiffusion::vlb_per_sample`]. With a learned variance and
    /// L_simple or min-SNR, λ·T·L_{t−1} (bits/dim, the mean held fixed) is added: L_hybrid of
    /// Nichol & Dhariwal 2021, eq. 16, with L_vlb = T·E_t[L_{t−1}].
    pub fn training_loss(
        &self,
        raw: Tensor<4>,
        x0: Tensor<4>,
        eps: Tensor<4>,
        x_t: Tensor<4>,
        t: &[usize],
    ) -> Tensor<1> {
        if self.config.loss == LossType::Vlb {
            return self.vlb_per_sample(raw, x0, eps, x_t, t).mean();
        }
        let (pred, var_values) = self.split_output(raw.clone());
        let b = pred.dims()[0];
        let target = self.target(x0.clone(), eps, t);
        let sq = (target - pred).square();
        let device = sq.device();
        let mse = if self.config.loss == LossType::MinSnr {
            let weights = Self::gather(&self.loss_weights(t), &(0..b).collect::<Vec<_>>(), &device);
            (sq * weights).mean()
        } else {
            sq.mean()
        };
        match var_values {
            None => mse,
            Some(var_part) => {
                // Stop-gradient on the mean: the bound term only trains the variance head.
                let (mean_part, _) = self.split_output(raw);
                let frozen = Tensor::cat(vec![mean_part.detach(), var_part], 1);
                let out = self.interpret(frozen, x_t.clone(), t);
                let vb = self.vb_terms_bits(&out, x0, x_t, t);
                mse + vb
                    .mean()
                    .mul_scalar(self.config.hybrid_lambda * self.num_timesteps() as f64)
            }
        }
    }

    /// Each sample's term of L_vlb, the single-t estimate whose batch mean is the `vlb` loss:
    /// with a fixed variance, Ho et al. eq. 12's weighting of ‖ε − ε_θ‖² summed over pixels
    /// (nats per image); with a learned variance, T·L_{t−1} in bits/dim with gradients to mean
    /// and variance (Nichol & Dhariwal 2021's L_vlb objective). The importance sampler of t
    /// records these values.
    pub fn vlb_per_sample(
        &self,
        raw: Tensor<4>,
        x0: Tensor<4>,
        eps: Tensor<4>,
        x_t: Tensor<4>,
        t: &[usize],
    ) -> Tensor<1> {
        if self.config.variance == VarianceType::Learned {
            let out = self.interpret(raw, x_t.clone(), t);
            return self
                .vb_terms_bits(&out, x0, x_t, t)
                .mul_scalar(self.num_timesteps() as f64);
        }
        let [b, c, h, w] = raw.dims();
        let sq = (self.target(x0, eps, t) - raw).square();
        let weights = Self::gather(
            &self.loss_weights(t),
            &(0..b).collect::<Vec<_>>(),
            &sq.device(),
        );
        (sq * weights)
            .reshape([b, c * h * w])
            .sum_dim(1)
            .reshape([b])
    }

    /// L_{t−1} per sample in bits/dim on tensors (differentiable): the KL of Ho et al. eq. 5 for
    /// t > 1 and the discretised decoder's −log p(x₀|x₁) at t = 1, with x̂₀ not clipped, as in
    /// the reference training code (a clamp would cut pure L_vlb's gradient to the mean at
    /// saturated pixels; the evaluated bound, `likelihood`, clips). The decoder uses the tanh
    /// approximation of Φ (Page 1977), as the reference training code; `likelihood` evaluates
    /// the exact one.
    pub fn vb_terms_bits(
        &self,
        out: &ModelOutput,
        x0: Tensor<4>,
        x_t: Tensor<4>,
        t: &[usize],
    ) -> Tensor<1> {
        let [b, c, h, w] = x0.dims();
        let device = x0.device();
        let p = self.p_mean_variance(out, x_t.clone(), t, false);
        let (true_mean, _, true_log_var) = self.q_posterior_mean_variance(x0.clone(), x_t, t);
        // KL(N(μ1, v1) ‖ N(μ2, v2)) = ½(−1 + log v2 − log v1 + v1/v2 + (μ1 − μ2)²/v2).
        let kl = ((p.log_variance.clone() - true_log_var.clone()).add_scalar(-1.0)
            + (true_log_var - p.log_variance.clone()).exp()
            + (true_mean - p.mean.clone()).square() * p.log_variance.clone().neg().exp())
            * 0.5;
        let kl = kl.reshape([b, c * h * w]).mean_dim(1).reshape([b]) / std::f32::consts::LN_2;
        // Decoder NLL at t = 1 on the 256-level grid.
        let inv_std = (p.log_variance.clone() * -0.5).exp();
        let centered = x0.clone() - p.mean;
        let cdf = |z: Tensor<4>| {
            // Φ(z) ≈ ½(1 + tanh(√(2/π)(z + 0.044715 z³))).
            let inner =
                (z.clone() + z.powi_scalar(3) * 0.044715) * (2.0 / std::f64::consts::PI).sqrt();
            (inner.tanh() + 1.0) * 0.5
        };
        let cdf_plus = cdf((centered.clone() + 1.0 / 255.0) * inv_std.clone());
        let cdf_min = cdf((centered - 1.0 / 255.0) * inv_std);
        let log_cdf_plus = cdf_plus.clone().clamp_min(1e-12).log();
        let log_one_minus_cdf_min = (cdf_min.clone().neg() + 1.0).clamp_min(1e-12).log();
        let log_delta = (cdf_plus - cdf_min).clamp_min(1e-12).log();
        let lo = x0.clone().lower_elem(-0.999);
        let hi = x0.greater_elem(0.999);
        let log_probs = log_delta
            .mask_where(lo, log_cdf_plus)
            .mask_where(hi, log_one_minus_cdf_min);
        let nll = log_probs
            .neg()
            .reshape([b, c * h * w])
            .mean_dim(1)
            .reshape([b])
            / std::f32::consts::LN_2;
        let first: Vec<f32> = t.iter().map(|&i| if i == 0 { 1.0 } else { 0.0 }).collect();
        let first = Tensor::<1>::from_data(TensorData::new(first, [b]), &device);
        nll * first.clone() + kl * (first.neg() + 1.0)
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
        // At t = 1, β̃₁ = 0: the weight uses the clipped variance (β̃₂) and stays finite.
        let w0 = d.loss_weights(&[0])[0];
        let expect = s.betas[0].powi(2)
            / (2.0 * s.posterior_variance[1] * s.alphas[0] * (1.0 - s.alphas_cumprod[0]));
        assert!((w0 - expect).abs() < 1e-9 * expect, "{w0} vs {expect}");
    }

    fn config(prediction: Prediction, loss: LossType) -> DiffusionConfig {
        DiffusionConfig {
            prediction,
            loss,
            ..Default::default()
        }
    }

    #[test]
    fn loss_weightings_equal_their_formulas() {
        let preds = [Prediction::Epsilon, Prediction::X0, Prediction::V];
        let ts = [0usize, 5, 120, 500, 999];
        for p in preds {
            for loss in [LossType::Simple, LossType::MinSnr, LossType::Vlb] {
                let d = GaussianDiffusion::new(config(p, loss));
                let s = &d.schedule;
                let w = d.loss_weights(&ts);
                for (k, &i) in ts.iter().enumerate() {
                    let ab = s.alphas_cumprod[i];
                    let snr = ab / (1.0 - ab);
                    let ms = snr.min(5.0);
                    let eq12 =
                        s.betas[i].powi(2) / (2.0 * d.model_variance[i] * s.alphas[i] * (1.0 - ab));
                    let expect = match (loss, p) {
                        (LossType::Simple, _) => 1.0,
                        // Hang et al. 2023: min(SNR, γ)/SNR for ε, min(SNR, γ) for x₀,
                        // min(SNR, γ)/(SNR + 1) for v.
                        (LossType::MinSnr, Prediction::Epsilon) => ms / snr,
                        (LossType::MinSnr, Prediction::X0) => ms,
                        (LossType::MinSnr, Prediction::V) => ms / (snr + 1.0),
                        (LossType::Vlb, Prediction::Epsilon) => eq12,
                        (LossType::Vlb, Prediction::X0) => eq12 * snr,
                        (LossType::Vlb, Prediction::V) => eq12 * ab,
                    };
                    assert!(
                        (w[k] - expect).abs() <= 1e-9 * expect.abs().max(1e-300),
                        "{p:?} {loss:?} t={i}: {} vs {expect}",
                        w[k]
                    );
                }
            }
        }
    }

    #[test]
    fn weighted_losses_are_the_same_objective_in_every_parameterisation() {
        // min-SNR and the bound's weighting are defined on the x₀ (equivalently ε) error, so a
        // prediction ε̂ must cost the same whether the network outputs it as ε, x₀ or v.
        let mut rng = StdRng::seed_from_u64(3);
        let shape = [4, 1, 2, 2];
        let t = [3usize, 200, 600, 950];
        let x0 = tensor(randn(16, &mut rng), shape).clamp(-1.0, 1.0);
        let eps = tensor(randn(16, &mut rng), shape);
        let eps_hat = eps.clone() + tensor(randn(16, &mut rng), shape).mul_scalar(0.1);
        for loss in [LossType::MinSnr, LossType::Vlb] {
            let losses: Vec<f64> = [Prediction::Epsilon, Prediction::X0, Prediction::V]
                .into_iter()
                .map(|p| {
                    let d = GaussianDiffusion::new(config(p, loss));
                    let x_t = d.q_sample(x0.clone(), &t, eps.clone());
                    let raw = d.output_from_eps(x_t.clone(), &t, eps_hat.clone());
                    let l = d.training_loss(raw, x0.clone(), eps.clone(), x_t, &t);
                    to_vec(l.reshape([1, 1, 1, 1]))[0] as f64
                })
                .collect();
            for l in &losses[1..] {
                assert!(
                    ((l - losses[0]) / losses[0]).abs() < 1e-3,
                    "{loss:?}: {losses:?}"
                );
            }
        }
        // L_simple is unweighted in the predicted quantity: for x₀ it is the mean of (x₀ − x̂₀)².
        let d = GaussianDiffusion::new(config(Prediction::X0, LossType::Simple));
        let x_t = d.q_sample(x0.clone(), &t, eps.clone());
        let x0_hat = d.predict_x0_from_eps(x_t.clone(), &t, eps_hat.clone());
        let expect: f64 = to_vec(x0.clone())
            .iter()
            .zip(to_vec(x0_hat.clone()))
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum::<f64>()
            / 16.0;
        let l = d.training_loss(x0_hat, x0, eps, x_t, &t);
        let l = to_vec(l.reshape([1, 1, 1, 1]))[0] as f64;
        assert!(
            (l - expect).abs() < 1e-6 * expect.max(1e-6),
            "{l} vs {expect}"
        );
    }
}
