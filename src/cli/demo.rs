//! `ddpm demo`: the README's first command.

use super::prelude::*;

#[derive(Args)]
pub(crate) struct DemoArgs {
    /// Where to put the run and the pictures.
    #[arg(long, default_value = "runs/demo")]
    pub(crate) out: PathBuf,
    /// Training time budget in minutes (the whole demo stays under 15 minutes on 2 cores).
    #[arg(long, default_value_t = 12.0)]
    pub(crate) minutes: f64,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
}

pub(crate) fn cmd_demo(a: DemoArgs, device: &Device) -> Result<()> {
    let run = a.out.join("run");
    if run.exists() {
        std::fs::remove_dir_all(&run).with_context(|| format!("clearing {}", run.display()))?;
    }
    let t0 = Instant::now();
    let config = RunConfig {
        model: UNetConfig::small28(),
        diffusion: DiffusionConfig::default(),
        train: TrainConfig {
            data: "mnist5k".into(),
            batch_size: 32,
            max_minutes: Some(a.minutes),
            seed: a.seed,
            optim: ddpm::train::OptimConfig {
                lr: 1e-3,
                warmup_steps: 100,
                ema_decay: 0.995,
                ..Default::default()
            },
            sample_every: 0,
            checkpoint_every: 500,
            preview_count: 0,
            ..Default::default()
        },
    };
    println!(
        "ddpm demo: training the small28 U-Net (1.6M parameters) on the built-in MNIST-5k digits for {} minutes…",
        a.minutes
    );
    let mut trainer = Trainer::create(&run, config, device)?;
    trainer.progress = true;
    let s = trainer.train()?;
    println!(
        "trained {} steps in {:.1} min (loss {:.4})",
        s.step,
        s.wall_seconds / 60.0,
        s.loss
    );
    let (config, model, _) = Run::open(&run)?.model(device, true)?;
    let diffusion = GaussianDiffusion::new(config.diffusion.clone());
    let sampler = SamplerConfig::default().build(&diffusion);
    let mut frames = Vec::new();
    let opts = BatchOptions {
        batch_size: 64,
        seed: a.seed,
        ..Default::default()
    };
    let x = sample_images(
        &diffusion,
        sampler.as_ref(),
        &model,
        [1, 28, 28],
        64,
        device,
        &opts,
        Some(&mut frames),
        true,
    );
    let grid = a.out.join("samples.png");
    let gif = a.out.join("denoising.gif");
    ddpm::image::save_grid(x, 8, &grid)?;
    ddpm::image::save_gif(&frames, 80, &gif)?;
    println!(
        "\nsample grid:    {}\ndenoising GIF:  {}\nrun folder:     {}",
        grid.display(),
        gif.display(),
        run.display()
    );
    println!(
        "total wall time {:.1} min",
        t0.elapsed().as_secs_f64() / 60.0
    );
    println!(
        "more: ddpm sample --run {} --n 64 --out more.png --chain chain.gif",
        run.display()
    );
    Ok(())
}
