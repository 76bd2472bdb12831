//! The sampling stack beyond Algorithm 2 against exact answers: every parameterisation gives
//! the same samples, the ODE solvers converge to the probability-flow ODE's closed-form endpoint
//! at their order, classifier-free guidance interpolates between the mixture and the class,
//! and inpainting keeps the known pixels.

use burn::tensor::{Device, Tensor, TensorData};
use ddpm::diffusion::{DiffusionConfig, GaussianDiffusion, Prediction};
use ddpm::oracle::{FiniteSetOracle, GaussianMixtureOracle, GaussianOracle, Reparameterised};
use ddpm::sampling::{
    Conditioning, LoopOptions, NoiseSource, Sampler, SamplerConfig, Spacing, sample_loop_with,
};

mod common;
use common::moments;

fn values(x: Tensor<4>) -> Vec<f64> {
    x.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap()
        .into_iter()
        .map(|v| v as f64)
        .collect()
}

fn samplers(steps: usize) -> Vec<SamplerConfig> {
    ["ddpm", "ddim", "dpm-solver++", "heun"]
        .into_iter()
        .map(|n| SamplerConfig::from_name(n, steps, 0.0, None, false).unwrap())
        .collect()
}

#[test]
fn every_parameterisation_gives_the_same_samples() {
    // ε*, x₀* and v* of the same Gaussian oracle are one model: every sampler must produce the
    // same images from the same noise, whatever the network predicts.
    let device = Device::flex();
    let n = 512;
    for config in samplers(20) {
        let mut outs = Vec::new();
        for prediction in [Prediction::Epsilon, Prediction::X0, Prediction::V] {
            let d = GaussianDiffusion::new(DiffusionConfig {
                prediction,
                ..Default::default()
            });
            let oracle = GaussianOracle::new(&d, 0.3, 0.5);
            let model = Reparameterised {
                eps_model: &oracle,
                diffusion: &d,
            };
            let sampler = config.build(&d);
            let mut noise = NoiseSource::new(5);
            let x = noise.normal([n, 1, 1, 1], &device);
            let out = sample_loop_with(
                &d,
                sampler.as_ref(),
                &model,
                x,
                &mut noise,
                &LoopOptions::default(),
                |_, _| {},
            );
            outs.push(values(out));
        }
        for (k, name) in [(1, "x0"), (2, "v")] {
            let diff = outs[0]
                .iter()
                .zip(&outs[k])
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            println!("{}: max |x_eps − x_{name}| = {diff:.2e}", config.name());
            assert!(diff < 2e-3, "{}: {name} differs by {diff}", config.name());
        }
    }
}

/// The probability-flow ODE of Gaussian data N(m, s²) is linear: in x̃ = x/√ᾱ and
/// σ = √((1−ᾱ)/ᾱ), x̃(σ) − m = (x̃_T − m)·√((s² + σ²)/(s² + σ_T²)), so x_0 = m + (x̃_T − m)·s/√(s² + σ_T²).
fn ode_endpoint(d: &GaussianDiffusion, m: f64, s: f64, x_t: f64) -> f64 {
    let ab = d.schedule.alphas_cumprod[d.num_timesteps() - 1];
    let sigma2 = (1.0 - ab) / ab;
    m + (x_t / ab.sqrt() - m) * s / (s * s + sigma2).sqrt()
}

fn ode_error(d: &GaussianDiffusion, config: &SamplerConfig, m: f64, s: f64) -> f64 {
    let device = Device::flex();
    let oracle = GaussianOracle::new(d, m, s);
    let mut noise = NoiseSource::new(1);
    let x_t = noise.normal([256, 1, 1, 1], &device);
    let exact: Vec<f64> = values(x_t.clone())
        .into_iter()
        .map(|x| ode_endpoint(d, m, s, x))
        .collect();
    let sampler = config.build(d);
    let out = values(sample_loop_with(
        d,
        sampler.as_ref(),
        &oracle,
        x_t,
        &mut noise,
        &LoopOptions::default(),
        |_, _| {},
    ));
    out.iter()
        .zip(&exact)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max)
}

#[test]
fn ode_solvers_converge_at_their_order_to_the_closed_form_endpoint() {
    let d = GaussianDiffusion::new(DiffusionConfig::default());
    let (m, s) = (0.3, 0.5);
    let steps = [10, 20, 40, 80];
    for spacing in [Spacing::Quadratic, Spacing::Karras] {
        let mut errs = Vec::new();
        for name in ["ddim", "dpm-solver++", "heun"] {
            let e: Vec<f64> = steps
                .iter()
                .map(|&n| {
                    let c = SamplerConfig::from_name(name, n, 0.0, Some(spacing), false).unwrap();
                    ode_error(&d, &c, m, s)
                })
                .collect();
            let ratios: Vec<String> = e
                .windows(2)
                .map(|w| format!("{:.2}", w[0] / w[1]))
                .collect();
            println!(
                "{spacing:?} {name:13}: max |x − x_ODE| at {steps:?} steps: {} (ratios {})",
                e.iter()
                    .map(|v| format!("{v:.3e}"))
                    .collect::<Vec<_>>()
                    .join(" "),
                ratios.join(" ")
            );
            errs.push(e);
        }
        // DDIM is Euler's method (first order): doubling the steps halves the error.
        for w in errs[0].windows(2) {
            let r = w[0] / w[1];
            assert!((1.6..2.6).contains(&r), "{spacing:?} DDIM ratio {r}");
        }
        // DPM-Solver++(2M) and Heun are second order: once the steps resolve the curved part of
        // the path (from 20 steps on), doubling them quarters the error.
        for e in &errs[1..] {
            for w in e[1..].windows(2) {
                let r = w[0] / w[1];
                assert!(r > 3.0, "{spacing:?}: second-order ratio {r} ({e:?})");
            }
        }
        // At 10 steps (Heun: 19 network calls) both are below DDIM-10 on the same spacing.
        assert!(
            errs[1][0] < errs[0][0],
            "{spacing:?}: DPM-Solver++ {:?} vs DDIM {:?}",
            errs[1],
            errs[0]
        );
        assert!(
            errs[2][0] < errs[0][0],
            "{spacing:?}: Heun {:?} vs DDIM {:?}",
            errs[2],
            errs[0]
        );
    }
}

#[test]
fn classifier_free_guidance_interpolates_between_mixture_and_class() {
    // Two labelled Gaussians; the oracle gives the exact conditional and unconditional ε.
    // w = 1 must sample class y, w = 0 the mixture.
    let device = Device::flex();
    let d = GaussianDiffusion::new(DiffusionConfig::default());
    let comps = vec![(0.5, -0.6, 0.3), (0.5, 0.5, 0.25)];
    let oracle = GaussianMixtureOracle::new(&d, comps.clone());
    let mix_mean: f64 = comps.iter().map(|c| c.0 * c.1).sum();
    let mix_std = (comps
        .iter()
        .map(|c| c.0 * (c.2 * c.2 + c.1 * c.1))
        .sum::<f64>()
        - mix_mean * mix_mean)
        .sqrt();
    let n = 20_000;
    let configs = [
        SamplerConfig::from_name("ddpm", 0, 0.0, None, false).unwrap(),
        SamplerConfig::from_name("ddim", 100, 0.0, Some(Spacing::Quadratic), false).unwrap(),
        SamplerConfig::from_name("dpm-solver++", 50, 0.0, None, false).unwrap(),
        SamplerConfig::from_name("heun", 50, 0.0, None, false).unwrap(),
    ];
    for config in &configs {
        let sampler = config.build(&d);
        for (w, class, (em, es)) in [
            (1.0, 1usize, (comps[1].1, comps[1].2)),
            (1.0, 0, (comps[0].1, comps[0].2)),
            (0.0, 1, (mix_mean, mix_std)),
        ] {
            let cond = Conditioning {
                labels: vec![class; n],
                cfg: Some((w, comps.len())),
            };
            let opts = LoopOptions {
                conditioning: Some(&cond),
                ..Default::default()
            };
            let mut noise = NoiseSource::new(17);
            let x = noise.normal([n, 1, 1, 1], &device);
            let out = values(sample_loop_with(
                &d,
                sampler.as_ref(),
                &oracle,
                x,
                &mut noise,
                &opts,
                |_, _| {},
            ));
            let (m, s) = moments(&out);
            println!(
                "{}: w = {w}, y = {class}: N({m:.4}, {s:.4}²), expected N({em:.4}, {es:.4}²)",
                config.name()
            );
            // Sampling error (5 standard errors) plus the samplers' discretisation error.
            assert!(
                (m - em).abs() < 5.0 * es / (n as f64).sqrt() + 0.02,
                "mean {m} vs {em}"
            );
            assert!((s / es - 1.0).abs() < 0.04, "std {s} vs {es}");
        }
    }
}

#[test]
fn inpainting_keeps_known_pixels_and_completes_from_the_data() {
    // Finite-set data: two 4-pixel images. Knowing the first two pixels identifies the image,
    // so the generated pixels must be the other two of that image, and the known pixels must
    // come out exactly.
    let device = Device::flex();
    let d = GaussianDiffusion::new(DiffusionConfig::default());
    let points = vec![vec![-1.0, -1.0, 1.0, 1.0], vec![1.0, 0.5, -1.0, -0.5]];
    let oracle = FiniteSetOracle::new(&d, points.clone());
    let known_img = [1.0f32, 0.5, 0.0, 0.0];
    let known = Tensor::<4>::from_data(TensorData::new(known_img.to_vec(), [1, 1, 2, 2]), &device);
    let mask = Tensor::<4>::from_data(
        TensorData::new(vec![1.0f32, 1.0, 0.0, 0.0], [1, 1, 2, 2]),
        &device,
    );
    let n = 200;
    for (name, resample) in [("ddpm", 1usize), ("ddim", 3)] {
        let inner = SamplerConfig::from_name(name, 50, 0.0, None, false)
            .unwrap()
            .build(&d);
        let sampler = ddpm::sampling::Inpaint::new(inner, known.clone(), mask.clone(), resample);
        let mut noise = NoiseSource::new(3);
        let x = noise.normal([n, 1, 2, 2], &device);
        let out = values(sample_loop_with(
            &d,
            &sampler as &dyn Sampler,
            &oracle,
            x,
            &mut noise,
            &LoopOptions::default(),
            |_, _| {},
        ));
        let mut right = 0;
        for img in out.chunks(4) {
            assert_eq!(img[0], known_img[0] as f64, "{name}: known pixel 0 changed");
            assert_eq!(img[1], known_img[1] as f64, "{name}: known pixel 1 changed");
            if (img[2] - points[1][2]).abs() < 0.05 && (img[3] - points[1][3]).abs() < 0.05 {
                right += 1;
            }
        }
        println!("{name} (U = {resample}): {right}/{n} completions are the matching data image");
        assert!(right as f64 >= 0.95 * n as f64, "{name}: {right}/{n}");
    }
}

#[test]
fn sdedit_at_low_strength_returns_the_nearest_data_point() {
    let device = Device::flex();
    let d = GaussianDiffusion::new(DiffusionConfig::default());
    let points = vec![vec![-0.8, 0.6], vec![0.7, -0.4]];
    let oracle = FiniteSetOracle::new(&d, points.clone());
    let guide = Tensor::<4>::from_data(TensorData::new(vec![0.5f32, -0.2], [1, 1, 1, 2]), &device);
    let inner = SamplerConfig::from_name("ddim", 50, 0.0, None, false)
        .unwrap()
        .build(&d);
    // Strength 0.1: x_{t₀} at t₀ = 100, where the noise (std 0.31) is small against the gap
    // between the points, so every edit must snap to the point nearest the guide.
    let sd = ddpm::sampling::SdEdit::new(inner, &d, 0.1);
    assert!(sd.timesteps()[0] <= 99 && sd.timesteps().len() < 50);
    let mut noise = NoiseSource::new(2);
    let n = 100;
    let x =
        ddpm::sampling::SdEdit::start(&d, sd.timesteps()[0], guide.repeat_dim(0, n), &mut noise);
    let out = values(sample_loop_with(
        &d,
        &sd,
        &oracle,
        x,
        &mut noise,
        &LoopOptions::default(),
        |_, _| {},
    ));
    let near =
        |img: &[f64], p: &[f64]| (img[0] - p[0]).abs() < 1e-2 && (img[1] - p[1]).abs() < 1e-2;
    let mut kept = 0;
    for img in out.chunks(2) {
        assert!(
            near(img, &points[0]) || near(img, &points[1]),
            "{img:?} is no data point"
        );
        kept += near(img, &points[1]) as usize;
    }
    println!("SDEdit at strength 0.1: {kept}/{n} edits are the data point nearest the guide");
    assert!(kept >= 95, "{kept}/{n}");
}
