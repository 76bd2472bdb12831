//! Log-likelihood pieces of the variational bound (Ho et al. eq. 5; docs/math.md §11), in f64.
//!
//! Variances are passed as log-variances, as the reference code does, so that a clipped
//! log β̃ can be used directly. The per-pixel terms are computed on the host in f64.

use burn::tensor::{Device, Tensor, TensorData};

use crate::diffusion::{Denoiser, GaussianDiffusion};
use crate::noise::NoiseSource;
use crate::schedule::NoiseSchedule;

/// KL(N(μ1, v1) ‖ N(μ2, v2)) per dimension, in nats (docs/math.md §6):
/// `½(log v2 − log v1 + (v1 + (μ1−μ2)²)/v2 − 1)`.
pub fn normal_kl(mean1: f64, logvar1: f64, mean2: f64, logvar2: f64) -> f64 {
    0.5 * (-1.0 + logvar2 - logvar1
        + (logvar1 - logvar2).exp()
        + (mean1 - mean2).powi(2) * (-logvar2).exp())
}

/// The prior term `L_T = KL(q(x_T|x_0) ‖ N(0, I))` for one pixel value `x0`, in nats
/// (Ho et al. eq. 5 with μ1 = √ᾱ_T x_0, v1 = 1 − ᾱ_T, μ2 = 0, v2 = 1).
pub fn prior_kl_nats(schedule: &NoiseSchedule, x0: f64) -> f64 {
    let i = schedule.num_timesteps - 1;
    let mean = schedule.sqrt_alphas_cumprod[i] * x0;
    let var = 1.0 - schedule.alphas_cumprod[i];
    normal_kl(mean, var.ln(), 0.0, 0.0)
}

/// Standard normal CDF Φ(x), accurate to ~1e-15 (via erfc).
pub fn standard_normal_cdf(x: f64) -> f64 {
    0.5 * erfc(-x / std::f64::consts::SQRT_2)
}

/// Complementary error function (W. J. Cody's rational approximations, |rel err| < 1e-15).
pub fn erfc(x: f64) -> f64 {
    // Numerical Recipes' erfc via Chebyshev fit (erfccheb), fractional error < 1.2e-16.
    fn erfccheb(z: f64) -> f64 {
        // The coefficients as published; the extra digits are harmless.
        #[allow(clippy::excessive_precision)]
        const COF: [f64; 28] = [
            -1.3026537197817094,
            6.4196979235649026e-1,
            1.9476473204185836e-2,
            -9.561514786808631e-3,
            -9.46595344482036e-4,
            3.66839497852761e-4,
            4.2523324806907e-5,
            -2.0278578112534e-5,
            -1.624290004647e-6,
            1.303655835580e-6,
            1.5626441722e-8,
            -8.5238095915e-8,
            6.529054439e-9,
            5.059343495e-9,
            -9.91364156e-10,
            -2.27365122e-10,
            9.6467911e-11,
            2.394038e-12,
            -6.886027e-12,
            8.94487e-13,
            3.13092e-13,
            -1.12708e-13,
            3.81e-16,
            7.106e-15,
            -1.523e-15,
            -9.4e-17,
            1.21e-16,
            -2.8e-17,
        ];
        let t = 2.0 / (2.0 + z);
        let ty = 4.0 * t - 2.0;
        let (mut d, mut dd) = (0.0f64, 0.0f64);
        for &c in COF[1..].iter().rev() {
            let tmp = d;
            d = ty * d - dd + c;
            dd = tmp;
        }
        t * (-z * z + 0.5 * (COF[0] + ty * d) - dd).exp()
    }
    if x >= 0.0 {
        erfccheb(x)
    } else {
        2.0 - erfccheb(-x)
    }
}

/// log p(x) of one pixel under the discretised Gaussian decoder (Ho et al. eq. 13, `L_0`):
/// the mass of N(mean, exp(log_scale)²) on the bin [x − 1/255, x + 1/255], where `x` is a data
/// value in [−1, 1] on the 256-level grid; the edge bins extend to −∞ (x = −1) and +∞ (x = 1).
pub fn discretized_gaussian_log_likelihood(x: f64, mean: f64, log_scale: f64) -> f64 {
    let inv_std = (-log_scale).exp();
    let upper = if x > 0.999 {
        1.0
    } else {
        standard_normal_cdf(inv_std * (x - mean + 1.0 / 255.0))
    };
    let lower = if x < -0.999 {
        0.0
    } else {
        standard_normal_cdf(inv_std * (x - mean - 1.0 / 255.0))
    };
    (upper - lower).max(1e-300).ln()
}

/// The terms of the variational bound for one image, in bits/dim (docs/math.md §11).
#[derive(Clone, Debug, Default)]
pub struct BpdTerms {
    /// L_T = KL(q(x_T|x_0) ‖ N(0, I)).
    pub prior: f64,
    /// `terms[i]` for table index i: i = 0 is L_0 = −log p_θ(x_0|x_1) (discretised decoder),
    /// i ≥ 1 is L_{t−1} = KL(q(x_{t−1}|x_t, x_0) ‖ p_θ(x_{t−1}|x_t)) at t = i + 1.
    pub terms: Vec<f64>,
}

impl BpdTerms {
    /// L_T + Σ L_{t−1} + L_0, bits/dim.
    pub fn total(&self) -> f64 {
        self.prior + self.terms.iter().sum::<f64>()
    }
}

#[allow(clippy::too_many_arguments)]
/// The whole bound for `x0` (N×D values on the 256-level grid in [−1, 1], image shape
/// `[c, h, w]`), batching (image, t) pairs `batch` at a time through `model`. x̂₀ is clipped
/// to [−1, 1] as in the reference `calc_bpd_loop`. `on_batch(done, total)` reports progress.
pub fn calc_bpd(
    diffusion: &GaussianDiffusion,
    model: &dyn Denoiser,
    x0: &[f32],
    shape: [usize; 3],
    batch: usize,
    noise: &mut NoiseSource,
    device: &Device,
    mut on_batch: impl FnMut(usize, usize),
) -> Vec<BpdTerms> {
    let d = shape.iter().product::<usize>();
    let n = x0.len() / d;
    let t_max = diffusion.num_timesteps();
    let s = &diffusion.schedule;
    let ln2 = std::f64::consts::LN_2;
    let mut out: Vec<BpdTerms> = (0..n)
        .map(|i| {
            let img = &x0[i * d..(i + 1) * d];
            let prior =
                img.iter().map(|&v| prior_kl_nats(s, v as f64)).sum::<f64>() / (d as f64 * ln2);
            BpdTerms {
                prior,
                terms: vec![0.0; t_max],
            }
        })
        .collect();
    let pairs: Vec<(usize, usize)> = (0..n)
        .flat_map(|i| (0..t_max).map(move |t| (i, t)))
        .collect();
    let total = pairs.len();
    for (k, chunk) in pairs.chunks(batch.max(1)).enumerate() {
        let b = chunk.len();
        let mut xb = Vec::with_capacity(b * d);
        for &(i, _) in chunk {
            xb.extend_from_slice(&x0[i * d..(i + 1) * d]);
        }
        let eps = noise.normal_vec(b * d);
        let t: Vec<usize> = chunk.iter().map(|&(_, t)| t).collect();
        // x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε, on the host in f64 so the KL terms see the exact x_t.
        let xt: Vec<f32> = (0..b * d)
            .map(|j| {
                let ti = t[j / d];
                (s.sqrt_alphas_cumprod[ti] * xb[j] as f64
                    + s.sqrt_one_minus_alphas_cumprod[ti] * eps[j] as f64) as f32
            })
            .collect();
        let xt_tensor = Tensor::<4>::from_data(
            TensorData::new(xt.clone(), [b, shape[0], shape[1], shape[2]]),
            device,
        );
        // Any parameterisation and a learned variance: x̂₀ and log σ² from the interpreted output.
        let pred = diffusion.predict(model, xt_tensor, &t, None);
        let to_vec = |x: Tensor<4>| -> Vec<f32> {
            x.into_data().convert::<f32>().try_into_vec().expect("f32")
        };
        let pred_x0 = to_vec(pred.pred_x0);
        // A learned variance per pixel; fixed variances come from the f64 table.
        let log_var = pred.var_values.map(|_| to_vec(pred.log_variance));
        for (m, &(i, ti)) in chunk.iter().enumerate() {
            let range = m * d..(m + 1) * d;
            out[i].terms[ti] = vb_term_bits(
                diffusion,
                ti,
                &xb[range.clone()],
                &xt[range.clone()],
                &pred_x0[range.clone()],
                log_var.as_ref().map(|v| &v[range]),
            );
        }
        on_batch(((k + 1) * batch).min(total), total);
    }
    out
}

/// The bound of `n` evenly spaced images of a data set (the loop of `ddpm eval nll`): each
/// image costs T network calls, `batch` (image, t) pairs per call.
#[allow(clippy::too_many_arguments)]
pub fn bound_of_images(
    diffusion: &GaussianDiffusion,
    model: &dyn Denoiser,
    set: &crate::data::ImageSet,
    n: usize,
    batch: usize,
    seed: u64,
    device: &Device,
    on_batch: impl FnMut(usize, usize),
) -> Vec<BpdTerms> {
    let n = n.clamp(1, set.len());
    let x0: Vec<f32> = (0..n)
        .flat_map(|k| {
            set.image(k * set.len() / n)
                .iter()
                .map(|&v| crate::data::to_unit(v))
        })
        .collect();
    let mut noise = NoiseSource::new(seed);
    calc_bpd(
        diffusion,
        model,
        &x0,
        [set.channels, set.height, set.width],
        batch,
        &mut noise,
        device,
        on_batch,
    )
}

/// The bound over a set of images: mean ± standard error of the total, the mean of each part,
/// and the mean L_{t−1} per t.
#[derive(Clone, Debug)]
pub struct BoundSummary {
    /// Images.
    pub n: usize,
    /// Mean of the total, bits/dim.
    pub total: f64,
    /// Standard error of that mean (NaN for one image).
    pub total_se: f64,
    /// Mean prior term L_T.
    pub prior: f64,
    /// Mean decoder term L_0.
    pub decoder_l0: f64,
    /// Mean Σ_{t=2..T} L_{t−1}.
    pub sum_kl: f64,
    /// Mean term per table index (index 0 is L_0).
    pub per_t: Vec<f64>,
}

impl BoundSummary {
    /// Summarises per-image terms.
    pub fn from_terms(terms: &[BpdTerms]) -> Self {
        let n = terms.len();
        let k = n as f64;
        let mean = |v: &dyn Fn(&BpdTerms) -> f64| terms.iter().map(v).sum::<f64>() / k;
        let total = mean(&|t| t.total());
        let total_se = if n > 1 {
            (terms
                .iter()
                .map(|t| (t.total() - total).powi(2))
                .sum::<f64>()
                / (k - 1.0))
                .sqrt()
                / k.sqrt()
        } else {
            f64::NAN
        };
        let t_max = terms.first().map_or(0, |t| t.terms.len());
        BoundSummary {
            n,
            total,
            total_se,
            prior: mean(&|t| t.prior),
            decoder_l0: mean(&|t| t.terms[0]),
            sum_kl: mean(&|t| t.terms[1..].iter().sum()),
            per_t: (0..t_max).map(|i| mean(&|t| t.terms[i])).collect(),
        }
    }
}

/// One term of the bound in bits/dim for one image at table index `t`, given x_0, x_t, the
/// model's x̂₀ (unclipped) and, for a learned variance, log σ_t² per pixel
/// (Ho et al. eq. 5; improved-diffusion's `_vb_terms_bpd`). μ_θ = μ̃_t(x_t, clip(x̂₀)) through
/// the same posterior coefficients as [`GaussianDiffusion::q_posterior_mean_variance`].
pub fn vb_term_bits(
    diffusion: &GaussianDiffusion,
    t: usize,
    x0: &[f32],
    xt: &[f32],
    pred_x0: &[f32],
    log_variance: Option<&[f32]>,
) -> f64 {
    let s = &diffusion.schedule;
    let mut acc = 0.0;
    for j in 0..x0.len() {
        let (x0j, xtj) = (x0[j] as f64, xt[j] as f64);
        let model_logvar = match log_variance {
            Some(v) => v[j] as f64,
            None => diffusion.model_log_variance[t],
        };
        let model_mean = s.posterior_mean(t, (pred_x0[j] as f64).clamp(-1.0, 1.0), xtj);
        if t == 0 {
            acc -= discretized_gaussian_log_likelihood(x0j, model_mean, 0.5 * model_logvar);
        } else {
            let true_mean = s.posterior_mean(t, x0j, xtj);
            acc += normal_kl(
                true_mean,
                s.posterior_log_variance_clipped[t],
                model_mean,
                model_logvar,
            );
        }
    }
    acc / (x0.len() as f64 * std::f64::consts::LN_2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_kl_closed_form() {
        // KL of identical Gaussians is 0.
        assert!(normal_kl(0.3, -1.2, 0.3, -1.2).abs() < 1e-15);
        // KL(N(1, 1) ‖ N(0, 1)) = ½.
        assert!((normal_kl(1.0, 0.0, 0.0, 0.0) - 0.5).abs() < 1e-15);
        // KL(N(0, 4) ‖ N(0, 1)) = ½(0 − ln 4 + 4 − 1).
        let expect = 0.5 * (-(4.0f64).ln() + 3.0);
        assert!((normal_kl(0.0, (4.0f64).ln(), 0.0, 0.0) - expect).abs() < 1e-15);
    }

    #[test]
    #[allow(clippy::excessive_precision)]
    fn erfc_reference_values() {
        // Values from Abramowitz & Stegun / mpmath.
        for (x, v) in [
            (0.0, 1.0),
            (0.5, 0.4795001221869535),
            (1.0, 0.15729920705028513),
            (2.0, 0.004677734981047266),
            (-1.0, 1.8427007929497148),
            (5.0, 1.5374597944280349e-12),
        ] {
            assert!(((erfc(x) - v) / v).abs() < 1e-13, "erfc({x}) = {}", erfc(x));
        }
        assert!((standard_normal_cdf(1.959963984540054) - 0.975).abs() < 1e-14);
    }

    #[test]
    fn discretized_bins_sum_to_one() {
        for (mean, log_scale) in [(0.0, -3.0), (0.37, -5.5), (-0.9, -1.0), (1.3, -2.0)] {
            let total: f64 = (0..256)
                .map(|k| {
                    let x = k as f64 / 127.5 - 1.0;
                    discretized_gaussian_log_likelihood(x, mean, log_scale).exp()
                })
                .sum();
            assert!((total - 1.0).abs() < 1e-12, "mean {mean}: Σ = {total}");
        }
    }

    #[test]
    fn prior_term_at_pixel_extremes_is_tiny() {
        // docs/math.md §2, §11: L_T ≈ 2.9e-5 bits/dim for a pixel at ±1.
        let s = NoiseSchedule::new(&crate::schedule::BetaSchedule::linear(), 1000);
        for x0 in [-1.0, 1.0] {
            let bits = prior_kl_nats(&s, x0) / std::f64::consts::LN_2;
            assert!((bits - 2.9e-5).abs() < 0.1e-5, "L_T = {bits} bits/dim");
        }
    }
}
