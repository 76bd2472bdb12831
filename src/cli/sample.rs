//! `ddpm sample`: Algorithm 2 or DDIM from a run, with chains, a corrector and guidance.

use super::prelude::*;

#[derive(Args)]
pub(crate) struct SampleArgs {
    /// Run folder written by `ddpm train`.
    #[arg(long)]
    pub(crate) run: PathBuf,
    /// Number of images.
    #[arg(long, default_value_t = 64)]
    pub(crate) n: usize,
    /// Seed of x_T and of every z.
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Output grid (PNG).
    #[arg(long, default_value = "samples.png")]
    pub(crate) out: PathBuf,
    /// Also write the denoising chain as an animated GIF.
    #[arg(long)]
    pub(crate) chain: Option<PathBuf>,
    /// `ddpm` (ancestral, Algorithm 2) or `ddim`.
    #[arg(long, default_value = "ddpm")]
    pub(crate) sampler: String,
    /// DDIM: number of steps.
    #[arg(long, default_value_t = 50)]
    pub(crate) steps: usize,
    /// DDIM: η (0 deterministic, 1 ≈ DDPM).
    #[arg(long, default_value_t = 0.0)]
    pub(crate) eta: f64,
    /// DDIM: timestep spacing.
    #[arg(long, value_enum, default_value_t = Spacing::Quadratic)]
    pub(crate) spacing: Spacing,
    /// σ_t² for ancestral sampling (default: the run's).
    #[arg(long, value_enum)]
    pub(crate) variance: Option<VarianceType>,
    /// Clip x̂₀ to [−1, 1] at every step (`--clip false` to turn off).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub(crate) clip: bool,
    /// Use the raw weights instead of the EMA.
    #[arg(long)]
    pub(crate) raw: bool,
    /// Images per network call.
    #[arg(long, default_value_t = 256)]
    pub(crate) batch_size: usize,
    /// Langevin corrector steps after each sampler step (predictor–corrector; 0 = off).
    #[arg(long, default_value_t = 0)]
    pub(crate) corrector_steps: usize,
    /// Target signal-to-noise ratio of the corrector's step size.
    #[arg(long, default_value_t = 0.16)]
    pub(crate) snr: f64,
    /// Classifier run for classifier guidance (`ddpm classifier train`).
    #[arg(long, requires = "class")]
    pub(crate) classifier: Option<PathBuf>,
    /// Class to steer towards (with --classifier).
    #[arg(long)]
    pub(crate) class: Option<usize>,
    /// Guidance scale s (0 = unguided).
    #[arg(long, default_value_t = 1.0)]
    pub(crate) guidance_scale: f64,
}

pub(crate) fn cmd_sample(a: SampleArgs, device: &Device) -> Result<()> {
    let (config, model, step) = load_run_model(&a.run, device, !a.raw)?;
    let mut dcfg = config.diffusion.clone();
    if let Some(v) = a.variance {
        dcfg.variance = v;
    }
    let diffusion = GaussianDiffusion::new(dcfg);
    let sampler = build_sampler(&a.sampler, &diffusion, a.steps, a.eta, a.spacing, a.clip)?;
    let m = &config.model;
    println!(
        "sampling {} images from {} (step {step}, {} weights) with {} ({} steps)",
        a.n,
        a.run.display(),
        if a.raw { "raw" } else { "EMA" },
        a.sampler,
        sampler.timesteps().len()
    );
    let guide = match &a.classifier {
        Some(dir) => {
            let (_, clf) = ddpm::train::classifier::load_classifier(dir, device, true)?;
            println!(
                "classifier guidance: {} towards class {} with s = {}",
                dir.display(),
                a.class.unwrap(),
                a.guidance_scale
            );
            Some(ddpm::model::classifier::ClassifierGuide::new(clf, device))
        }
        None => None,
    };
    let t0 = Instant::now();
    let mut frames = Vec::new();
    let x = sample_images(
        &diffusion,
        sampler.as_ref(),
        &model,
        [m.in_channels, m.image_size, m.image_size],
        a.n,
        a.batch_size,
        a.seed,
        device,
        a.chain.is_some().then_some(&mut frames),
        true,
        (a.corrector_steps > 0)
            .then_some(ddpm::sampling::Langevin {
                steps: a.corrector_steps,
                snr: a.snr,
            })
            .as_ref(),
        guide.as_ref().map(|g| {
            (
                g as &dyn ddpm::sampling::ClassifierGrad,
                a.class.unwrap(),
                a.guidance_scale,
            )
        }),
    );
    let secs = t0.elapsed().as_secs_f64();
    ddpm::image::save_grid(x, (a.n as f64).sqrt().ceil() as usize, &a.out)?;
    println!(
        "wrote {} ({:.1} s, {:.2} images/s)",
        a.out.display(),
        secs,
        a.n as f64 / secs
    );
    if let Some(p) = &a.chain {
        ddpm::image::save_gif(&frames, 80, p)?;
        println!("wrote {} ({} frames)", p.display(), frames.len());
    }
    Ok(())
}
