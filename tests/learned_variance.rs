//! Learned variances (Nichol & Dhariwal 2021) against the analytically optimal variance of
//! Gaussian data (Bao et al. 2022, Analytic-DPM): σ*_t² = β̃_t + c_t²·Var(x₀ | x_t), where
//! c_t is the posterior coefficient of x₀ (Ho et al. eq. 7) and, for x₀ ~ N(m, s²),
//! Var(x₀ | x_t) = s²(1−ᾱ_t)/(1 − ᾱ_t + ᾱ_t s²).

use burn::tensor::{Device, Int, Tensor, TensorData};
use ddpm::diffusion::{Denoiser, DiffusionConfig, GaussianDiffusion, VarianceType};
use ddpm::likelihood::calc_bpd;
use ddpm::oracle::{GaussianOracle, exact_ddim_moments_with_noise};
use ddpm::sampling::{Ddim, NoiseSource, Spacing, sample_loop, timestep_subsequence};
use rand::{Rng, SeedableRng, rngs::StdRng};

mod common;
use common::{discretised_gaussian, moments};

const M: f64 = 0.1;
const S: f64 = 0.3;

fn optimal_variance(d: &GaussianDiffusion, t: usize) -> f64 {
    let s = &d.schedule;
    let ab = s.alphas_cumprod[t];
    let var_x0 = S * S * (1.0 - ab) / (1.0 - ab + ab * S * S);
    s.posterior_variance[t] + s.posterior_mean_coef1[t].powi(2) * var_x0
}

/// The learned-variance head's v that makes log σ_t² = log σ*_t² (the inverse of the
/// interpolation of Nichol & Dhariwal eq. 15 between log β̃_t and log β_t).
fn v_for(d: &GaussianDiffusion, t: usize, var: f64) -> f64 {
    let lo = d.schedule.posterior_log_variance_clipped[t];
    let hi = d.schedule.betas[t].ln();
    2.0 * (var.ln() - lo) / (hi - lo) - 1.0
}

/// ε* of the data and a variance head that outputs `v[t]`.
struct WithVariance<'a> {
    eps: &'a GaussianOracle,
    v: Vec<f64>,
}

impl Denoiser for WithVariance<'_> {
    fn forward(&self, x_t: Tensor<4>, t: &[usize], y: Option<&[usize]>) -> Tensor<4> {
        let dims = x_t.dims();
        let device = x_t.device();
        let eps = self.eps.forward(x_t, t, y);
        let per = dims[1] * dims[2] * dims[3];
        let v: Vec<f32> = t
            .iter()
            .flat_map(|&i| std::iter::repeat_n(self.v[i] as f32, per))
            .collect();
        Tensor::cat(
            vec![eps, Tensor::from_data(TensorData::new(v, dims), &device)],
            1,
        )
    }
}

fn discretised_samples(n: usize) -> Vec<f32> {
    let p = discretised_gaussian(M, S);
    let cdf: Vec<f64> = p
        .iter()
        .scan(0.0, |a, &q| {
            *a += q;
            Some(*a)
        })
        .collect();
    let mut rng = StdRng::seed_from_u64(5);
    (0..n)
        .map(|_| {
            let u: f64 = rng.random();
            (cdf.iter().position(|&c| c >= u).unwrap_or(255) as f64 / 127.5 - 1.0) as f32
        })
        .collect()
}

#[test]
fn analytic_variance_bound_is_no_worse_than_either_fixed_variance() {
    let device = Device::flex();
    let x0 = discretised_samples(256 * 16);
    let bound = |variance: VarianceType| {
        let d = GaussianDiffusion::new(DiffusionConfig {
            variance,
            ..Default::default()
        });
        let oracle = GaussianOracle::new(&d, M, S);
        let v: Vec<f64> = (0..d.num_timesteps())
            .map(|t| v_for(&d, t, optimal_variance(&d, t)))
            .collect();
        let model = WithVariance { eps: &oracle, v };
        let mut noise = NoiseSource::new(9);
        let terms = match variance {
            VarianceType::Learned => calc_bpd(
                &d,
                &model,
                &x0,
                [1, 4, 4],
                512,
                &mut noise,
                &device,
                |_, _| {},
            ),
            _ => calc_bpd(
                &d,
                &oracle,
                &x0,
                [1, 4, 4],
                512,
                &mut noise,
                &device,
                |_, _| {},
            ),
        };
        terms.iter().map(|t| t.total()).collect::<Vec<f64>>()
    };
    let analytic = bound(VarianceType::Learned);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    for fixed in [VarianceType::Small, VarianceType::Large] {
        let other = bound(fixed);
        // Same images, same noise: the paired difference.
        let diff: Vec<f64> = other.iter().zip(&analytic).map(|(a, b)| a - b).collect();
        let (dm, n) = (mean(&diff), diff.len() as f64);
        let se = (diff.iter().map(|x| (x - dm).powi(2)).sum::<f64>() / (n - 1.0)).sqrt() / n.sqrt();
        println!(
            "bound with σ*² {:.4} bits/dim; with {fixed:?} {:.4}: {fixed:?} − σ*² = {dm:.4} ± {se:.4}",
            mean(&analytic),
            mean(&other)
        );
        assert!(dm > 0.0, "{fixed:?} beats the analytic variance by {}", -dm);
    }
}

#[test]
fn training_the_variance_head_alone_approaches_the_analytic_variance() {
    // The real L_hybrid of GaussianDiffusion::training_loss, with the exact ε* as the (frozen)
    // mean and one trainable v per timestep: its minimiser is σ*².
    let device = Device::flex();
    let ad = device.clone().autodiff();
    let d = GaussianDiffusion::new(DiffusionConfig {
        variance: VarianceType::Learned,
        ..Default::default()
    });
    let oracle = GaussianOracle::new(&d, M, S);
    let ts = [1usize, 10, 50, 150, 400, 700];
    let mut v = vec![0f32; ts.len()];
    let (mut m1, mut m2) = (vec![0f32; ts.len()], vec![0f32; ts.len()]);
    let mut noise = NoiseSource::new(3);
    let mut rng = StdRng::seed_from_u64(4);
    let b = 4096;
    for step in 1..=400 {
        let slot: Vec<usize> = (0..b).map(|_| rng.random_range(0..ts.len())).collect();
        let t: Vec<usize> = slot.iter().map(|&k| ts[k]).collect();
        let x0: Vec<f32> = noise
            .normal_vec(b)
            .into_iter()
            .map(|z| (M + S * z as f64) as f32)
            .collect();
        let x0 = Tensor::<4>::from_data(TensorData::new(x0, [b, 1, 1, 1]), &ad);
        let eps = noise.normal([b, 1, 1, 1], &ad);
        let x_t = d.q_sample(x0.clone(), &t, eps.clone());
        let mean = oracle.forward(Tensor::from_data(x_t.to_data(), &device), &t, None);
        let vp = Tensor::<1>::from_data(TensorData::new(v.clone(), [ts.len()]), &ad).require_grad();
        let idx = Tensor::<1, Int>::from_data(
            TensorData::new(slot.iter().map(|&k| k as i64).collect::<Vec<_>>(), [b]),
            &ad,
        );
        let var_out = vp.clone().select(0, idx).reshape([b, 1, 1, 1]);
        let raw = Tensor::cat(vec![Tensor::from_data(mean.to_data(), &ad), var_out], 1);
        let loss = d.training_loss(raw, x0, eps, x_t, &t);
        let grads = loss.backward();
        let g: Vec<f32> = vp
            .grad(&grads)
            .unwrap()
            .into_data()
            .convert::<f32>()
            .try_into_vec()
            .unwrap();
        // Adam (Kingma & Ba 2015), lr 0.05.
        for k in 0..ts.len() {
            m1[k] = 0.9 * m1[k] + 0.1 * g[k];
            m2[k] = 0.999 * m2[k] + 0.001 * g[k] * g[k];
            let mh = m1[k] / (1.0 - 0.9f32.powi(step));
            let vh = m2[k] / (1.0 - 0.999f32.powi(step));
            v[k] -= 0.05 * mh / (vh.sqrt() + 1e-8);
        }
    }
    for (k, &t) in ts.iter().enumerate() {
        let target = optimal_variance(&d, t);
        let lo = d.schedule.posterior_log_variance_clipped[t];
        let hi = d.schedule.betas[t].ln();
        let frac = (v[k] as f64 + 1.0) / 2.0;
        let learned = (frac * hi + (1.0 - frac) * lo).exp();
        let rel = (learned / target).ln().abs();
        println!(
            "t = {}: learned σ² {learned:.4e}, analytic σ*² {target:.4e} (|log ratio| {rel:.4}; β̃ {:.4e}, β {:.4e})",
            t + 1,
            lo.exp(),
            hi.exp()
        );
        // Within a tenth of the gap between the fixed choices, on the log scale.
        assert!(
            rel < 0.1 * (hi - lo).abs().max(0.05),
            "t = {}: {learned} vs {target}",
            t + 1
        );
    }
}

#[test]
fn ddim_with_eta_uses_the_learned_variance_of_the_respaced_step() {
    // DDIM with η > 0 and a learned variance: σ_k² = η²·Σ_θ, Σ_θ interpolating β and β̃ of the
    // respaced step t → t' with v (docs/math.md §12). With ε* of Gaussian data every step is
    // affine, so the sample's mean and std are exact (oracle::exact_ddim_moments_with_noise).
    let device = Device::flex();
    let learned = GaussianDiffusion::new(DiffusionConfig {
        variance: VarianceType::Learned,
        ..Default::default()
    });
    let fixed = GaussianDiffusion::new(DiffusionConfig::default());
    let oracle = GaussianOracle::new(&fixed, M, S);
    let ts = timestep_subsequence(&fixed.schedule, 20, Spacing::Quadratic);
    let ac = &fixed.schedule.alphas_cumprod;
    let run = |d: &GaussianDiffusion, model: &dyn Denoiser, eta: f64, n: usize| -> Vec<f32> {
        let sampler = Ddim::new(ts.clone(), eta, false);
        let mut noise = NoiseSource::new(11);
        let x = noise.normal([n, 1, 1, 1], &device);
        sample_loop(d, &sampler, model, x, &mut noise, |_, _| {})
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap()
    };
    let with_v = |v: f64| WithVariance {
        eps: &oracle,
        v: vec![v; 1000],
    };

    // v ≡ −1 is the fixed-variance η step (σ² = η²·β̃ of the respaced step), same noise.
    let n = 4096;
    let plain = run(&fixed, &oracle, 1.0, n);
    let at_tilde = run(&learned, &with_v(-1.0), 1.0, n);
    let max = plain
        .iter()
        .zip(&at_tilde)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    println!("DDIM-20 η = 1: learned v ≡ −1 vs fixed β̃: max difference {max:.2e}");
    assert!(max < 1e-4, "{max}");

    // σ_k² = η²·exp(frac·log β + (1 − frac)·log β̃) of each respaced step, at most 1 − ᾱ'.
    let sigma2 = |v: f64, eta: f64| -> Vec<f64> {
        (0..ts.len())
            .map(|k| {
                let (at, an) = (ac[ts[k]], ts.get(k + 1).map_or(1.0, |&t| ac[t]));
                if an >= 1.0 {
                    return 0.0;
                }
                let beta = 1.0 - at / an;
                let tilde = (1.0 - an) / (1.0 - at) * beta;
                let frac = (v + 1.0) / 2.0;
                (eta * eta * (frac * beta.ln() + (1.0 - frac) * tilde.ln()).exp()).min(1.0 - an)
            })
            .collect()
    };
    let n = 200_000;
    let mut stds = Vec::new();
    for (v, eta) in [(0.0, 1.0), (1.0, 1.0), (1.0, 0.5)] {
        let (em, es) = exact_ddim_moments_with_noise(&fixed, &oracle, &ts, &sigma2(v, eta));
        let x: Vec<f64> = run(&learned, &with_v(v), eta, n)
            .into_iter()
            .map(f64::from)
            .collect();
        let (m, s) = moments(&x);
        println!("DDIM-20, v ≡ {v}, η = {eta}: mean {m:.4}, std {s:.4}; exact {em:.4}, {es:.4}");
        // Standard errors ≈ 7e-4 (mean) and 5e-4 (std) at n = 200k.
        assert!((m - em).abs() < 3e-3, "mean {m} vs {em}");
        assert!((s - es).abs() < 3e-3, "std {s} vs {es}");
        stds.push(es);
    }
    // The three settings are far apart, so ignoring the learned Σ could not pass: the fixed
    // η = 1 step is v ≡ −1 (σ² = β̃ of each respaced step).
    let (_, fixed_std) = exact_ddim_moments_with_noise(&fixed, &oracle, &ts, &sigma2(-1.0, 1.0));
    for s in &stds {
        assert!((s - fixed_std).abs() > 0.01, "{s} vs fixed {fixed_std}");
    }
}
