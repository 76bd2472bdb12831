//! Classifier guidance (Dhariwal & Nichol 2021, Algorithms 1 and 2; docs/math.md §13).
//!
//! Without arguments it needs no training: the data are two labelled 1-D Gaussians, class 0 ~
//! N(−0.5, 0.2²) and class 1 ~ N(0.4, 0.3²), and [`GaussianMixtureOracle`] gives both the exact
//! ε* and the exact ∇ log p(y | x_t). With scale s = 1, guided sampling must draw class 1 alone.
//!
//! With a trained model and a noisy classifier (`ddpm train`, `ddpm classifier train`):
//! `cargo run --release --example guided_sampling -- RUN CLASSIFIER_RUN [CLASS] [SCALE]`
//! writes `guided.png`, 16 samples of CLASS (default 7) at scale SCALE (default 3), DDIM-50.

use burn::tensor::{Device, Tensor};
use ddpm::diffusion::{Denoiser, DiffusionConfig, GaussianDiffusion, VarianceType};
use ddpm::model::classifier::ClassifierGuide;
use ddpm::oracle::GaussianMixtureOracle;
use ddpm::sampling::{
    Ancestral, ClassifierGrad, Guidance, LoopOptions, NoiseSource, Sampler, SamplerConfig,
    sample_loop_with,
};
use ddpm::train::Run;

/// Draws `shape` samples with `sampler`, guided towards `class` with scale `s`.
#[allow(clippy::too_many_arguments)]
fn guided(
    d: &GaussianDiffusion,
    sampler: &dyn Sampler,
    model: &dyn Denoiser,
    classifier: &dyn ClassifierGrad,
    class: usize,
    s: f64,
    shape: [usize; 4],
    device: &Device,
) -> Tensor<4> {
    let guidance = Guidance {
        classifier,
        labels: vec![class; shape[0]],
        scale: s,
    };
    let opts = LoopOptions {
        guidance: Some(&guidance),
        ..Default::default()
    };
    let mut noise = NoiseSource::new(0);
    let x_t = noise.normal(shape, device);
    sample_loop_with(d, sampler, model, x_t, &mut noise, &opts, |_, _| {})
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let device = Device::flex();
    if let [run, classifier_run, rest @ ..] = args.as_slice() {
        let class: usize = rest.first().map_or(Ok(7), |s| s.parse())?;
        let scale: f64 = rest.get(1).map_or(Ok(3.0), |s| s.parse())?;
        let (config, model, _) = Run::open(run.as_ref())?.model(&device, true)?;
        let (_, classifier) = Run::open(classifier_run.as_ref())?.classifier(&device, true)?;
        let guide = ClassifierGuide::new(classifier, &device);
        let d = GaussianDiffusion::new(config.diffusion);
        let ddim = SamplerConfig::default().build(&d); // DDIM, 50 quadratic steps
        let (c, s) = (config.model.in_channels, config.model.image_size);
        let x = guided(
            &d,
            ddim.as_ref(),
            &model,
            &guide,
            class,
            scale,
            [16, c, s, s],
            &device,
        );
        ddpm::image::save_grid(x, 4, "guided.png".as_ref())?;
        println!("wrote guided.png: class {class}, scale {scale}");
        return Ok(());
    }
    // The exact oracle: Algorithm 2 (σ² = β̃) with guidance towards class 1.
    let d = GaussianDiffusion::new(DiffusionConfig {
        variance: VarianceType::Small,
        ..Default::default()
    });
    let oracle = GaussianMixtureOracle::new(&d, vec![(0.5, -0.5, 0.2), (0.5, 0.4, 0.3)]);
    for s in [0.0, 1.0] {
        let x = guided(
            &d,
            &Ancestral::new(&d, false),
            &oracle,
            &oracle,
            1,
            s,
            [10_000, 1, 1, 1],
            &device,
        );
        let v: Vec<f32> = x.into_data().convert::<f32>().try_into_vec().expect("f32");
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
        let std =
            (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
        println!(
            "s = {s}: mean {mean:.4}, std {std:.4} (mixture: −0.05, 0.5172; class 1: 0.4, 0.3)"
        );
    }
    Ok(())
}
