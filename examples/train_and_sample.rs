//! Train the `tiny` U-Net on the built-in MNIST-5k digits for a few steps (Algorithm 1 of
//! Ho et al. 2020), then sample 16 digits with 20 DPM-Solver++ steps and save a grid
//! (docs/math.md §7, §16).
//!
//! `cargo run --release --example train_and_sample -- [RUN_DIR] [STEPS]`
//! (defaults: `runs/example-tiny`, 400 steps, about 4 minutes on 2 CPU cores; the run folder
//! must not exist yet). A few hundred steps give rough strokes; `ddpm demo` trains longer.

use burn::tensor::Device;
use ddpm::diffusion::{DiffusionConfig, GaussianDiffusion};
use ddpm::model::UNetConfig;
use ddpm::sampling::{BatchOptions, SamplerConfig, sample_batched};
use ddpm::train::{OptimConfig, Run, RunConfig, TrainConfig, Trainer};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let run = std::path::PathBuf::from(args.next().unwrap_or("runs/example-tiny".into()));
    let steps: u64 = args.next().map_or(Ok(400), |s| s.parse())?;
    let device = Device::flex();

    // Algorithm 1 on the built-in digits ("mnist5k" is TrainConfig's default data set), with
    // a short warm-up, a larger step and a short EMA for a short run.
    let optim = OptimConfig {
        lr: 1e-3,
        warmup_steps: 100,
        ema_decay: 0.995,
        ..Default::default()
    };
    let train = TrainConfig {
        max_steps: Some(steps),
        batch_size: 32,
        optim,
        ..Default::default()
    };
    let config = RunConfig {
        model: UNetConfig::tiny(28, 1),
        diffusion: DiffusionConfig::default(),
        train,
    };
    let summary = Trainer::create(&run, config, &device)?.train()?;
    println!(
        "trained {} steps in {:.0} s, loss {:.4}",
        summary.step, summary.wall_seconds, summary.loss
    );

    // DPM-Solver++(2M), 20 steps, from the EMA weights of the latest checkpoint.
    let (config, model, _step) = Run::open(&run)?.model(&device, true)?;
    let diffusion = GaussianDiffusion::new(config.diffusion);
    let sampler = SamplerConfig::from_name("dpm-solver++", 20, 0.0, None, true)?.build(&diffusion);
    let opts = BatchOptions {
        seed: 0,
        ..Default::default()
    };
    let x = sample_batched(
        &diffusion,
        sampler.as_ref(),
        &model,
        [1, 28, 28],
        16,
        &device,
        &opts,
        |_, _, _| {},
    );
    let out = run.join("grid.png");
    ddpm::image::save_grid(x, 4, &out)?;
    println!("wrote {}", out.display());
    Ok(())
}
