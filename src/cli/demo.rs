//! `ddpm demo`: the README's first command.

use super::prelude::*;
use ddpm::train::Recipe;

#[derive(Args)]
pub(crate) struct DemoArgs {
    /// Where to put the run and the pictures.
    #[arg(long, default_value = "runs/demo")]
    pub(crate) out: PathBuf,
    /// Training time budget in minutes; the grid, the GIF and the FID score (`--fid-n`) come after
    /// it (about 18 minutes in all on 2 cores, 13 without the score).
    #[arg(long, default_value_t = 12.0)]
    pub(crate) minutes: f64,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Training defaults (see `ddpm train --help`): `short` (v-prediction, lr 1e-3, EMA 0.995,
    /// batch 32) or `paper` (Ho et al. 2020's settings, made for 800k steps, not 12 minutes).
    #[arg(long, value_enum, default_value_t = Recipe::default())]
    pub(crate) recipe: Recipe,
    /// DDIM's η for the grid, the GIF and the FID samples: 1 adds fresh noise at each of
    /// the 50 steps like DDPM's Algorithm 2, which corrects a briefly trained model's errors
    /// (README, "Recipes for short runs"); 0 is the deterministic ODE sampler.
    #[arg(long, default_value_t = 1.0)]
    pub(crate) eta: f64,
    /// Quality figure: FID of this many samples (DDIM-50 with --eta, as the grid) against the 5000
    /// built-in digits, with the TF-2015 Inception (a few minutes; the digits' features are
    /// cached after the first run). 0 skips it; it is skipped with a message when the Inception
    /// weights are not found.
    #[arg(long, default_value_t = 1000)]
    pub(crate) fid_n: usize,
    #[command(flatten)]
    pub(crate) net: FidNetArgs,
}

pub(crate) fn cmd_demo(a: DemoArgs, device: &Device) -> Result<()> {
    let run = a.out.join("run");
    if run.exists() {
        std::fs::remove_dir_all(&run).with_context(|| format!("clearing {}", run.display()))?;
    }
    let t0 = Instant::now();
    let config = a.recipe.apply(RunConfig {
        model: UNetConfig::small28(),
        diffusion: DiffusionConfig::default(),
        train: TrainConfig {
            data: "mnist5k".into(),
            max_minutes: Some(a.minutes),
            seed: a.seed,
            sample_every: 0,
            checkpoint_every: 500,
            preview_count: 0,
            // The global --precision (main.rs runs every command in its scope).
            precision: ddpm::kernels::precision::current(),
            ..Default::default()
        },
    });
    println!(
        "ddpm demo: training the small28 U-Net (1.6M parameters) on the built-in MNIST-5k digits for {} minutes ({} recipe)…",
        a.minutes,
        format!("{:?}", a.recipe).to_lowercase()
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
    let sampler = SamplerConfig::Ddim {
        steps: 50,
        eta: a.eta,
        spacing: ddpm::sampling::Spacing::Quadratic,
        clip_x0: true,
    }
    .build(&diffusion);
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
    if a.fid_n > 0 {
        demo_fid(&a, &diffusion, sampler.as_ref(), &model, device)?;
    }
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

/// The demo's quality figure: FID-`fid_n` of DDIM-50 samples (η = `--eta`) against MNIST-5k, written to
/// `OUT/fid.json` too; a missing Inception file skips it with the reason.
fn demo_fid(
    a: &DemoArgs,
    diffusion: &GaussianDiffusion,
    sampler: &dyn Sampler,
    model: &dyn Denoiser,
    device: &Device,
) -> Result<()> {
    let weights = match locate_weights(a.net.inception.as_deref()) {
        Ok(w) => w,
        Err(e) => {
            println!("\nFID skipped: {e:#}");
            return Ok(());
        }
    };
    let t0 = Instant::now();
    let net = FidInception::load(&weights, device)?;
    let real = dataset_features("mnist5k", Split::Train, None, &net, a.net.fid_batch, device)?;
    let pb = fid_progress(a.fid_n, "FID: sample + features");
    let opts = BatchOptions {
        batch_size: 64,
        // Not the grid's seed: independent samples.
        seed: a.seed ^ 0xF1D,
        ..Default::default()
    };
    let r = ddpm::metrics::evaluate::fid_of_sampler(
        &net,
        &real,
        diffusion,
        sampler,
        model,
        [1, 28, 28],
        a.fid_n,
        device,
        &opts,
        a.net.fid_batch,
        None,
        |done| pb.set_position(done as u64),
    )?;
    pb.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "\nFID-{} against the 5000 built-in digits: {:.2} (precision {:.3}, recall {:.3}; {:.1} min)",
        a.fid_n,
        r.fid,
        r.precision,
        r.recall,
        secs / 60.0
    );
    let path = a.out.join("fid.json");
    let json = serde_json::json!({
        "fid": r.fid, "precision": r.precision, "recall": r.recall, "n": a.fid_n,
        "reference": "mnist5k (5000 images)", "sampler": "ddim-50", "eta": a.eta,
        "recipe": a.recipe, "seconds": secs,
    });
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
