//! Samplers against the exact oracles of docs/math.md §20: no network, known answers.

use burn::tensor::{Device, Tensor};
use ddpm::diffusion::{DiffusionConfig, GaussianDiffusion, VarianceType};
use ddpm::oracle::{FiniteSetOracle, GaussianOracle, exact_ancestral_moments};
use ddpm::sampling::{Ancestral, NoiseSource, StepContext, sample};

fn moments(x: Tensor<4>) -> (f64, f64) {
    let v: Vec<f32> = x.into_data().try_into_vec().unwrap();
    let n = v.len() as f64;
    let m = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = v.iter().map(|&x| (x as f64 - m).powi(2)).sum::<f64>() / (n - 1.0);
    (m, var.sqrt())
}

#[test]
fn ancestral_sampler_reproduces_gaussian_data_for_both_variances() {
    let device = Device::flex();
    let n = 200_000;
    // docs/math.md §20.1: m = 0.3, s = 0.5, 200k samples → 0.299/0.495 (β̃), 0.301/0.502 (β).
    for (variance, paper_std) in [(VarianceType::Small, 0.495), (VarianceType::Large, 0.502)] {
        let d = GaussianDiffusion::new(DiffusionConfig {
            variance,
            ..Default::default()
        });
        let oracle = GaussianOracle::new(&d, 0.3, 0.5);
        let sampler = Ancestral::new(&d, false);
        let mut noise = NoiseSource::new(42);
        let x = sample(
            &d,
            &sampler,
            &oracle,
            [n, 1, 1, 1],
            &device,
            &mut noise,
            |_, _| {},
        );
        let (m, s) = moments(x);
        let (em, es) = exact_ancestral_moments(&d, &oracle);
        println!(
            "{variance:?}: sample mean {m:.4} std {s:.4}; exact chain mean {em:.4} std {es:.4}; reference {paper_std}"
        );
        // Monte-Carlo agreement with the exact chain (4 standard errors).
        let se_m = es / (n as f64).sqrt();
        let se_s = es / (2.0 * n as f64).sqrt();
        assert!((m - em).abs() < 4.0 * se_m, "mean {m} vs exact {em}");
        assert!((s - es).abs() < 4.0 * se_s + 1e-4, "std {s} vs exact {es}");
        // And the chain itself reproduces the data distribution (docs/math.md §20.1).
        assert!((m - 0.3).abs() < 0.005, "mean {m}");
        assert!(
            (s - paper_std).abs() < 0.004,
            "std {s} vs reference {paper_std}"
        );
    }
}

#[test]
fn ancestral_sampler_is_sensitive_to_a_wrong_coefficient() {
    // The same check with a deliberately wrong schedule in the oracle (ᾱ off by 2%) must fail:
    // guards against the test above being too loose to notice errors.
    let device = Device::flex();
    let d = GaussianDiffusion::new(DiffusionConfig::default());
    let mut oracle = GaussianOracle::new(&d, 0.3, 0.5);
    for a in oracle.alphas_cumprod.iter_mut() {
        *a = (*a * 0.98).min(1.0);
    }
    let sampler = Ancestral::new(&d, false);
    let mut noise = NoiseSource::new(1);
    let x = sample(
        &d,
        &sampler,
        &oracle,
        [50_000, 1, 1, 1],
        &device,
        &mut noise,
        |_, _| {},
    );
    let (m, s) = moments(x);
    assert!(
        (m - 0.3).abs() > 0.005 || (s - 0.502).abs() > 0.004,
        "{m} {s}"
    );
}

#[test]
fn ancestral_sampler_lands_on_the_points_of_a_finite_data_set() {
    let device = Device::flex();
    let points = vec![vec![-0.8, 0.5], vec![0.2, -0.6], vec![0.9, 0.9]];
    for variance in [VarianceType::Small, VarianceType::Large] {
        let d = GaussianDiffusion::new(DiffusionConfig {
            variance,
            ..Default::default()
        });
        let oracle = FiniteSetOracle::new(&d, points.clone());
        let sampler = Ancestral::new(&d, true);
        let mut noise = NoiseSource::new(3);
        let n = 1500;
        let x = sample(
            &d,
            &sampler,
            &oracle,
            [n, 2, 1, 1],
            &device,
            &mut noise,
            |_, _| {},
        );
        let v: Vec<f32> = x.into_data().try_into_vec().unwrap();
        let mut counts = [0usize; 3];
        for i in 0..n {
            let (best, dist) = points
                .iter()
                .enumerate()
                .map(|(k, p)| {
                    let d2 =
                        (v[2 * i] as f64 - p[0]).powi(2) + (v[2 * i + 1] as f64 - p[1]).powi(2);
                    (k, d2.sqrt())
                })
                .min_by(|a, b| a.1.partial_cmp(&b.1).unwrap())
                .unwrap();
            assert!(
                dist < 1e-3,
                "sample {i} is {dist} from the nearest data point"
            );
            counts[best] += 1;
        }
        for c in counts {
            let share = c as f64 / n as f64;
            assert!((share - 1.0 / 3.0).abs() < 0.05, "shares {counts:?}");
        }
    }
}

#[test]
fn same_seed_gives_identical_samples() {
    let device = Device::flex();
    let d = GaussianDiffusion::new(DiffusionConfig {
        num_timesteps: 50,
        ..Default::default()
    });
    let oracle = GaussianOracle::new(&d, 0.1, 0.7);
    let sampler = Ancestral::new(&d, true);
    let run = |seed| {
        let mut noise = NoiseSource::new(seed);
        let x = sample(
            &d,
            &sampler,
            &oracle,
            [8, 1, 4, 4],
            &device,
            &mut noise,
            |_, _| {},
        );
        x.into_data().into_bytes().to_vec()
    };
    assert_eq!(run(5), run(5));
    assert_ne!(run(5), run(6));
}

#[test]
fn same_seed_gives_identical_unet_samples() {
    // Through the real network and both samplers: same seed ⇒ same bytes.
    use ddpm::model::UNetConfig;
    use ddpm::sampling::{Ddim, Spacing, timestep_subsequence};
    let device = Device::flex();
    let model = {
        let _rng = ddpm::device::rng_guard();
        device.seed(3);
        UNetConfig::tiny(8, 1).init(&device)
    };
    let d = GaussianDiffusion::new(DiffusionConfig {
        num_timesteps: 20,
        ..Default::default()
    });
    let ddpm = Ancestral::new(&d, true);
    let ddim = Ddim::new(
        timestep_subsequence(&d.schedule, 5, Spacing::Linear),
        0.5,
        true,
    );
    for sampler in [&ddpm as &dyn ddpm::sampling::Sampler, &ddim] {
        let run = |seed| {
            let mut noise = NoiseSource::new(seed);
            let x = sample(
                &d,
                sampler,
                &model,
                [3, 1, 8, 8],
                &device,
                &mut noise,
                |_, _| {},
            );
            x.into_data().into_bytes().to_vec()
        };
        assert_eq!(run(9), run(9));
        assert_ne!(run(9), run(10));
    }
}

#[test]
fn ddim_keeps_the_mean_and_its_spread_error_falls_with_steps() {
    use ddpm::sampling::{Ddim, Spacing, timestep_subsequence};
    // docs/math.md §20.1: m = 0.3, s = 0.5, η = 0, timesteps round(linspace(T−1, 0, n)):
    // std 0.362, 0.430, 0.472, 0.488 for n = 10, 20, 50, 100.
    let device = Device::flex();
    let d = GaussianDiffusion::new(DiffusionConfig::default());
    let oracle = GaussianOracle::new(&d, 0.3, 0.5);
    let n = 100_000;
    let mut errors = Vec::new();
    for (steps, paper_std) in [(10usize, 0.362), (20, 0.430), (50, 0.472), (100, 0.488)] {
        let ts = timestep_subsequence(&d.schedule, steps, Spacing::Linear);
        assert_eq!(ts.len(), steps);
        assert_eq!((ts[0], *ts.last().unwrap()), (999, 0));
        let sampler = Ddim::new(ts, 0.0, false);
        let mut noise = NoiseSource::new(11);
        let x = sample(
            &d,
            &sampler,
            &oracle,
            [n, 1, 1, 1],
            &device,
            &mut noise,
            |_, _| {},
        );
        let (m, s) = moments(x);
        println!("DDIM {steps:3} steps: mean {m:.4} std {s:.4} (reference {paper_std})");
        assert!((m - 0.3).abs() < 0.006, "mean {m}");
        assert!(
            (s - paper_std).abs() < 0.004,
            "{steps} steps: std {s} vs {paper_std}"
        );
        errors.push((s - 0.5).abs());
    }
    assert!(
        errors.windows(2).all(|w| w[1] < w[0]),
        "error must fall as steps grow: {errors:?}"
    );
}

#[test]
fn ddim_with_eta_one_on_all_steps_is_ddpm_with_beta_tilde() {
    use ddpm::sampling::Ddim;
    let device = Device::flex();
    let d = GaussianDiffusion::new(DiffusionConfig {
        variance: VarianceType::Small,
        ..Default::default()
    });
    let oracle = GaussianOracle::new(&d, -0.2, 0.4);
    let ddim = Ddim::new((0..1000).rev().collect(), 1.0, false);
    let ddpm = Ancestral::new(&d, false);
    // Same seed ⇒ the same x_T and the same z at every step.
    let run = |s: &dyn ddpm::sampling::Sampler| {
        let mut noise = NoiseSource::new(4);
        let x = sample(
            &d,
            s,
            &oracle,
            [2000, 1, 1, 1],
            &device,
            &mut noise,
            |_, _| {},
        );
        x.into_data().try_into_vec::<f32>().unwrap()
    };
    let (a, b) = (run(&ddim), run(&ddpm));
    let max = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    println!("max |DDIM(η=1) − DDPM(β̃)| = {max:.2e}");
    assert!(max < 1e-3, "{max}");
}

#[test]
fn ddim_encode_then_decode_returns_the_data_points() {
    use burn::tensor::TensorData;
    use ddpm::sampling::{Ddim, Spacing, ddim_encode, sample_loop, timestep_subsequence};
    let device = Device::flex();
    let d = GaussianDiffusion::new(DiffusionConfig::default());
    // Eight points in 3-D: decoding the wrong latent would land on another point.
    let points: Vec<Vec<f64>> = (0..8)
        .map(|i| {
            (0..3)
                .map(|j| (((i * 5 + j * 3) % 8) as f64 / 3.5 - 1.0) * 0.9)
                .collect()
        })
        .collect();
    let oracle = FiniteSetOracle::new(&d, points.clone());
    let ts = timestep_subsequence(&d.schedule, 200, Spacing::Linear);
    let x0: Vec<f32> = points.iter().flatten().map(|&v| v as f32).collect();
    let x0 = Tensor::<4>::from_data(TensorData::new(x0.clone(), [8, 3, 1, 1]), &device);
    let latent = ddim_encode(&d, &oracle, x0.clone(), &ts, |_| {});
    // The latents look like noise (unit scale), not like the data.
    let lv: Vec<f32> = latent.clone().into_data().try_into_vec().unwrap();
    let rms = (lv.iter().map(|x| x * x).sum::<f32>() / lv.len() as f32).sqrt();
    assert!(rms > 0.3 && rms < 3.0, "latent rms {rms}");
    let x0v: Vec<f32> = x0.clone().into_data().try_into_vec().unwrap();
    let moved = lv
        .iter()
        .zip(&x0v)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        moved > 0.3,
        "the latent is barely different from the data ({moved})"
    );
    let sampler = Ddim::new(ts, 0.0, false);
    let mut noise = NoiseSource::new(0);
    let back = sample_loop(&d, &sampler, &oracle, latent, &mut noise, |_, _| {});
    let (bv, xv): (Vec<f32>, Vec<f32>) = (
        back.into_data().try_into_vec().unwrap(),
        x0.into_data().try_into_vec().unwrap(),
    );
    let err = bv
        .iter()
        .zip(&xv)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    println!("encode→decode max error {err:.2e} (latent rms {rms:.2})");
    assert!(err < 1e-2, "{err}");
}

#[test]
fn langevin_corrector_keeps_the_noisy_marginal() {
    use burn::tensor::TensorData;
    use ddpm::sampling::Langevin;
    // Start from exact samples of q_t for Gaussian data and run corrector steps with the exact
    // score: the moments must stay those of q_t = N(√ᾱ_t m, ᾱ_t s² + 1 − ᾱ_t), up to Monte-Carlo
    // error and the small O(δ) bias of unadjusted Langevin (≈1% in std at r = 0.16).
    let device = Device::flex();
    let d = GaussianDiffusion::new(DiffusionConfig::default());
    let (m, s) = (0.3, 0.5);
    let oracle = GaussianOracle::new(&d, m, s);
    let n = 100_000;
    let mut noise = NoiseSource::new(21);
    for t in [100usize, 500] {
        let ab = d.schedule.alphas_cumprod[t];
        let (mt, st) = (ab.sqrt() * m, (ab * s * s + 1.0 - ab).sqrt());
        let x: Vec<f32> = noise
            .normal_vec(n)
            .into_iter()
            .map(|z| (mt + st * z as f64) as f32)
            .collect();
        let x = Tensor::<4>::from_data(TensorData::new(x, [n, 1, 1, 1]), &device);
        let c = Langevin {
            steps: 20,
            snr: 0.16,
        };
        let y = c.correct(&mut StepContext::new(&d, &oracle, &mut noise), x, t);
        let (ym, ys) = moments(y);
        println!("t={t}: after 20 corrector steps mean {ym:.4} std {ys:.4}; q_t: {mt:.4} {st:.4}");
        assert!((ym - mt).abs() < 0.01 * st, "mean {ym} vs {mt}");
        assert!((ys / st - 1.0).abs() < 0.02, "std {ys} vs {st}");
        // A wrong score sign must be caught: it drives the samples away.
        let bad = GaussianOracle::new(&d, -m, s);
        let x: Vec<f32> = noise
            .normal_vec(n)
            .into_iter()
            .map(|z| (mt + st * z as f64) as f32)
            .collect();
        let x = Tensor::<4>::from_data(TensorData::new(x, [n, 1, 1, 1]), &device);
        let (bm, _) = moments(c.correct(&mut StepContext::new(&d, &bad, &mut noise), x, t));
        assert!(
            (bm - mt).abs() > 0.01 * st,
            "a wrong score went unnoticed ({bm})"
        );
    }
}

#[test]
fn predictor_corrector_improves_few_step_ddim() {
    use ddpm::sampling::{
        Ddim, Langevin, LoopOptions, Spacing, sample_loop_with, timestep_subsequence,
    };
    let device = Device::flex();
    let d = GaussianDiffusion::new(DiffusionConfig::default());
    let oracle = GaussianOracle::new(&d, 0.3, 0.5);
    let sampler = Ddim::new(
        timestep_subsequence(&d.schedule, 10, Spacing::Linear),
        0.0,
        false,
    );
    let n = 50_000;
    let run = |corrector: Option<Langevin>| {
        let mut noise = NoiseSource::new(8);
        let x = noise.normal([n, 1, 1, 1], &device);
        let opts = LoopOptions {
            corrector,
            guidance: None,
            conditioning: None,
        };
        moments(sample_loop_with(
            &d,
            &sampler,
            &oracle,
            x,
            &mut noise,
            &opts,
            |_, _| {},
        ))
    };
    let (m0, s0) = run(None);
    let (m1, s1) = run(Some(Langevin {
        steps: 2,
        snr: 0.16,
    }));
    println!("DDIM-10: std {s0:.4}; with 2 corrector steps per level: mean {m1:.4} std {s1:.4}");
    assert!((m1 - 0.3).abs() < 0.01 && (m0 - 0.3).abs() < 0.01);
    assert!(
        (s1 - 0.5).abs() < (s0 - 0.5).abs(),
        "the corrector did not reduce the spread error"
    );
}

#[test]
fn classifier_guidance_with_scale_one_gives_the_class_conditional() {
    use ddpm::oracle::GaussianMixtureOracle;
    use ddpm::sampling::{
        Ddim, Guidance, LoopOptions, Sampler, Spacing, sample_loop_with, timestep_subsequence,
    };
    // Two labelled Gaussians: class 0 ~ N(−0.5, 0.2²), class 1 ~ N(0.4, 0.3²), equal weights.
    // With the exact ε* and ∇ log p(y|x_t), s = 1 must reproduce the class-conditional
    // distribution and s = 0 the mixture, for DDPM and DDIM (docs/math.md §20.3).
    let device = Device::flex();
    let d = GaussianDiffusion::new(DiffusionConfig {
        variance: VarianceType::Small,
        ..Default::default()
    });
    let comps = vec![(0.5, -0.5, 0.2), (0.5, 0.4, 0.3)];
    let oracle = GaussianMixtureOracle::new(&d, comps.clone());
    let n = 20_000;
    let mix_mean = 0.5 * (-0.5) + 0.5 * 0.4;
    let mix_std = (0.5 * 0.04 + 0.5 * 0.09 + 0.25 * 0.81f64).sqrt();
    let ddpm = Ancestral::new(&d, false);
    let ddim = Ddim::new(
        timestep_subsequence(&d.schedule, 250, Spacing::Linear),
        0.0,
        false,
    );
    for (name, sampler) in [("DDPM", &ddpm as &dyn Sampler), ("DDIM-250", &ddim)] {
        for (scale, class) in [(1.0, 1usize), (1.0, 0), (0.0, 1)] {
            let guidance = Guidance {
                classifier: &oracle,
                labels: vec![class; n],
                scale,
            };
            let opts = LoopOptions {
                corrector: None,
                guidance: Some(&guidance),
                conditioning: None,
            };
            let mut noise = NoiseSource::new(31);
            let x = noise.normal([n, 1, 1, 1], &device);
            let (m, s) = moments(sample_loop_with(
                &d,
                sampler,
                &oracle,
                x,
                &mut noise,
                &opts,
                |_, _| {},
            ));
            let (em, es) = if scale == 0.0 {
                (mix_mean, mix_std)
            } else {
                (comps[class].1, comps[class].2)
            };
            println!("{name} s={scale} y={class}: mean {m:.4} std {s:.4} (want {em:.4} {es:.4})");
            assert!(
                (m - em).abs() < 0.015,
                "{name} s={scale} y={class}: mean {m} vs {em}"
            );
            assert!(
                (s / es - 1.0).abs() < 0.04,
                "{name} s={scale} y={class}: std {s} vs {es}"
            );
        }
    }
}
