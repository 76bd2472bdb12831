//! `ddpm`: train diffusion models on your images, sample from them, and look inside.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::tensor::{Device, Tensor, TensorData};
use clap::{Args, Parser, Subcommand};

use ddpm::data::{self, Split};
use ddpm::diffusion::{DiffusionConfig, EpsModel, GaussianDiffusion, LossType, VarianceType};
use ddpm::model::UNetConfig;
use ddpm::sampling::{
    Ancestral, Ddim, NoiseSource, Sampler, Spacing, sample, timestep_subsequence,
};
use ddpm::schedule::BetaSchedule;
use ddpm::train::{RunConfig, TrainConfig, Trainer, load_run_model};

#[derive(Parser)]
#[command(
    name = "ddpm",
    version,
    about = "Denoising diffusion probabilistic models (Ho et al. 2020) in pure Rust",
    long_about = "Train DDPMs on your own images, sample from them (ancestral DDPM or DDIM), and \
inspect the forward process.\n\nStart with `ddpm demo`: it trains a small model on the built-in \
MNIST-5k digits for a few minutes and writes a sample grid and a denoising GIF."
)]
struct Cli {
    /// Compute device: `cpu` (pure-Rust burn-flex, all cores) or `wgpu` (GPU; needs the
    /// `wgpu` cargo feature).
    #[arg(long, global = true, default_value = "cpu")]
    device: String,
    /// CPU threads (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model (Algorithm 1) into a run folder, or continue one with --resume.
    Train(TrainArgs),
    /// Sample images from a trained run (Algorithm 2 or DDIM).
    Sample(SampleArgs),
    /// Show the forward process on real images and the schedule's key numbers.
    Inspect(InspectArgs),
    /// Train the small preset on the built-in digits for a few minutes, then write pictures.
    Demo(DemoArgs),
    /// Measure training and sampling speed (images/s) of a preset.
    Bench(BenchArgs),
    /// Evaluate a run as the papers do.
    #[command(subcommand)]
    Eval(EvalCommand),
    /// FID (and precision/recall) between any two of: image folders, data sets, stats files.
    Fid(FidArgs),
    /// Train or evaluate a noisy-image classifier for classifier guidance.
    #[command(subcommand)]
    Classifier(ClassifierCommand),
    /// Invert images to latents x_T with the deterministic DDIM ODE (η = 0).
    Encode(EncodeArgs),
    /// Decode spherical interpolations between the latents of two images (strip PNG + GIF).
    Interpolate(InterpolateArgs),
}

#[derive(Subcommand)]
enum ClassifierCommand {
    /// Train p_φ(y | x_t, t) on noised images (t ~ U), or on clean ones with --clean.
    Train(ClassifierTrainArgs),
    /// Accuracy on a labelled split, by quarter of the timestep range.
    Eval(ClassifierEvalArgs),
}

#[derive(Args)]
struct ClassifierTrainArgs {
    /// Run folder to create.
    #[arg(long, required_unless_present = "resume")]
    run: Option<PathBuf>,
    /// Continue this classifier run from its latest checkpoint.
    #[arg(long, conflicts_with = "run")]
    resume: Option<PathBuf>,
    /// Labelled training data (see `ddpm train --help`).
    #[arg(long, default_value = "mnist5k")]
    data: String,
    /// Encoder preset (the U-Net presets' down half).
    #[arg(long, default_value = "small28")]
    preset: String,
    /// Number of classes (default: from the data).
    #[arg(long)]
    classes: Option<usize>,
    /// Train on clean images only (the classifier that judges guided samples).
    #[arg(long)]
    clean: bool,
    #[command(flatten)]
    diffusion: DiffusionArgs,
    /// Images per step.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Stop after this many steps in total.
    #[arg(long)]
    steps: Option<u64>,
    /// Stop after this many minutes of training in total.
    #[arg(long)]
    minutes: Option<f64>,
    /// Adam learning rate.
    #[arg(long, default_value_t = 3e-4)]
    lr: f64,
    /// Warm-up steps.
    #[arg(long, default_value_t = 200)]
    warmup: u64,
    /// EMA decay.
    #[arg(long, default_value_t = 0.999)]
    ema_decay: f64,
    /// Random horizontal flips.
    #[arg(long)]
    hflip: bool,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Checkpoint every N steps.
    #[arg(long, default_value_t = 500)]
    checkpoint_every: u64,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
struct ClassifierEvalArgs {
    /// Classifier run folder.
    #[arg(long)]
    run: PathBuf,
    /// Labelled data (default: the run's).
    #[arg(long)]
    data: Option<String>,
    /// Split.
    #[arg(long, value_enum, default_value_t = Split::Test)]
    split: Split,
    /// Images (evenly spaced).
    #[arg(long, default_value_t = 2000)]
    n: usize,
}

#[derive(Args)]
struct EncodeArgs {
    /// Run folder written by `ddpm train`.
    #[arg(long)]
    run: PathBuf,
    /// Images: a data set spec or folder (default: the run's data).
    #[arg(long)]
    data: Option<String>,
    /// Number of images (evenly spaced).
    #[arg(long, default_value_t = 8)]
    n: usize,
    /// DDIM steps of the ODE.
    #[arg(long, default_value_t = 100)]
    steps: usize,
    /// Latents out (safetensors, tensor `latents`).
    #[arg(long, default_value = "latents.safetensors")]
    out: PathBuf,
    /// Also decode the latents again and save originals (top) over reconstructions (bottom).
    #[arg(long)]
    check: Option<PathBuf>,
}

#[derive(Args)]
struct InterpolateArgs {
    /// Run folder written by `ddpm train`.
    #[arg(long)]
    run: PathBuf,
    /// Data set the two images come from (default: the run's).
    #[arg(long)]
    data: Option<String>,
    /// First image: an index into --data or a PNG/JPEG path.
    #[arg(long)]
    a: String,
    /// Second image: an index into --data or a PNG/JPEG path.
    #[arg(long)]
    b: String,
    /// Interpolation points, ends included.
    #[arg(long, default_value_t = 9)]
    frames: usize,
    /// DDIM steps of the ODE.
    #[arg(long, default_value_t = 100)]
    steps: usize,
    /// Strip of decoded images (PNG).
    #[arg(long, default_value = "interpolation.png")]
    out: PathBuf,
    /// Also an animated GIF going there and back.
    #[arg(long)]
    gif: Option<PathBuf>,
}

#[derive(Args, Clone)]
struct FidNetArgs {
    /// The FID Inception weights (default: $DDPM_INCEPTION, ~/.cache/ddpm/, ../shared/data/).
    #[arg(long)]
    inception: Option<PathBuf>,
    /// Images per Inception call.
    #[arg(long, default_value_t = 32)]
    fid_batch: usize,
}

#[derive(Args)]
struct FidArgs {
    /// First set: a stats file (*.stats), a data set (`fashion-mnist@test`, `mnist5k`, a folder).
    a: String,
    /// Second set, same forms.
    b: String,
    /// Use at most this many images of each data set (evenly spaced).
    #[arg(long)]
    n: Option<usize>,
    /// Save the statistics of the second set to this stats file.
    #[arg(long)]
    save_stats: Option<PathBuf>,
    #[command(flatten)]
    net: FidNetArgs,
}

#[derive(Subcommand)]
enum EvalCommand {
    /// The variational bound on the negative log-likelihood, in bits/dim (all T terms).
    Nll(NllArgs),
    /// FID, precision and recall of N samples against a data split (TF-2015 Inception).
    Fid(EvalFidArgs),
}

#[derive(Args)]
struct EvalFidArgs {
    /// Run folder written by `ddpm train`.
    #[arg(long)]
    run: PathBuf,
    /// Reference data set (default: the run's).
    #[arg(long)]
    data: Option<String>,
    /// Split of the reference data.
    #[arg(long, value_enum, default_value_t = Split::Test)]
    split: Split,
    /// Number of generated images (and at most this many reference images).
    #[arg(long, default_value_t = 10000)]
    n: usize,
    /// Sampler: `ddim` or `ddpm`.
    #[arg(long, default_value = "ddim")]
    sampler: String,
    /// DDIM steps.
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// DDIM η.
    #[arg(long, default_value_t = 0.0)]
    eta: f64,
    /// DDIM spacing.
    #[arg(long, value_enum, default_value_t = Spacing::Quadratic)]
    spacing: Spacing,
    /// Clip x̂₀ (`--clip false` to turn off).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    clip: bool,
    /// Seed of the samples.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Images per sampling batch.
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    #[command(flatten)]
    net: FidNetArgs,
}

#[derive(Args)]
struct NllArgs {
    /// Run folder written by `ddpm train`.
    #[arg(long)]
    run: PathBuf,
    /// Data set (default: the run's).
    #[arg(long)]
    data: Option<String>,
    /// Split.
    #[arg(long, value_enum, default_value_t = Split::Test)]
    split: Split,
    /// Number of images (evenly spaced through the split). Each costs T network calls.
    #[arg(long, default_value_t = 64)]
    n: usize,
    /// (image, t) pairs per network call.
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    /// Seed of the noise in each x_t.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Use the raw weights instead of the EMA.
    #[arg(long)]
    raw: bool,
    /// Output folder for nll_terms.csv and nll_terms.png (default: RUN/eval).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args, Clone)]
struct DiffusionArgs {
    /// Number of diffusion steps T.
    #[arg(long, default_value_t = 1000)]
    timesteps: usize,
    /// β schedule: `linear` (Ho et al., 1e-4 → 0.02) or `cosine` (Nichol & Dhariwal).
    #[arg(long, default_value = "linear")]
    schedule: String,
    /// Reverse-process variance σ_t²: `large` (β_t) or `small` (β̃_t).
    #[arg(long, value_enum, default_value_t = VarianceType::Large)]
    variance: VarianceType,
    /// Training loss: `simple` (L_simple) or `vlb` (the true bound's weighting).
    #[arg(long, value_enum, default_value_t = LossType::Simple)]
    loss: LossType,
}

impl DiffusionArgs {
    fn config(&self) -> Result<DiffusionConfig> {
        let schedule = match self.schedule.as_str() {
            "linear" => BetaSchedule::linear(),
            "cosine" => BetaSchedule::cosine(),
            other => bail!("unknown schedule `{other}` (linear or cosine)"),
        };
        Ok(DiffusionConfig {
            num_timesteps: self.timesteps,
            schedule,
            variance: self.variance,
            loss: self.loss,
        })
    }
}

#[derive(Args)]
struct TrainArgs {
    /// Run folder to create (config.json, checkpoints/, samples/, log.csv).
    #[arg(long, required_unless_present = "resume")]
    run: Option<PathBuf>,
    /// Continue the run in this folder from its latest checkpoint (exactly where it stopped).
    #[arg(long, conflicts_with = "run")]
    resume: Option<PathBuf>,
    /// Model preset: `small28` (1.6M params, 28×28 grey), `cifar10` (the paper's 35.7M), `tiny`.
    #[arg(long, default_value = "small28")]
    preset: String,
    /// Training data: `mnist5k` (built in), `fashion-mnist` (Debian package), a folder of
    /// IDX files, CIFAR-10 batches or PNG/JPEG images (sub-folder = class).
    #[arg(long, default_value = "mnist5k")]
    data: String,
    /// Image side; images are resized to it (default: the preset's).
    #[arg(long)]
    image_size: Option<usize>,
    /// Image channels (default: the preset's; 1 grey, 3 RGB).
    #[arg(long)]
    channels: Option<usize>,
    /// Base channel count `ch` (overrides the preset).
    #[arg(long)]
    base_channels: Option<usize>,
    /// Channel multipliers per level, e.g. `1,2,2` (overrides the preset).
    #[arg(long, value_delimiter = ',')]
    channel_mult: Option<Vec<usize>>,
    /// Residual blocks per level (overrides the preset).
    #[arg(long)]
    res_blocks: Option<usize>,
    /// Resolutions with self-attention, e.g. `16` or `14,7` (overrides the preset).
    #[arg(long, value_delimiter = ',')]
    attention: Option<Vec<usize>>,
    /// Dropout in residual blocks (overrides the preset).
    #[arg(long)]
    dropout: Option<f64>,
    /// GroupNorm groups (overrides the preset).
    #[arg(long)]
    groups: Option<usize>,
    #[command(flatten)]
    diffusion: DiffusionArgs,
    /// Images per step.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Stop after this many steps in total.
    #[arg(long)]
    steps: Option<u64>,
    /// Stop after this many minutes of training in total (wall clock).
    #[arg(long)]
    minutes: Option<f64>,
    /// Adam learning rate.
    #[arg(long, default_value_t = 2e-4)]
    lr: f64,
    /// Linear learning-rate warm-up steps (the paper: 5000; shorter for short runs).
    #[arg(long, default_value_t = 1000)]
    warmup: u64,
    /// Global gradient-norm clip (0 disables).
    #[arg(long, default_value_t = 1.0)]
    grad_clip: f64,
    /// EMA decay of the weights used for sampling. The paper's 0.9999 averages over ~10k
    /// steps: for runs under ~50k steps use 0.999 (or 0.995 for a few thousand steps).
    #[arg(long, default_value_t = 0.9999)]
    ema_decay: f64,
    /// Random horizontal flips (right for CIFAR-10 and photos, wrong for digits and text).
    #[arg(long)]
    hflip: bool,
    /// Seed for initialisation, batches, t, ε and previews.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Preview grid (EMA weights, 50 DDIM steps) every N steps.
    #[arg(long, default_value_t = 1000)]
    sample_every: u64,
    /// Checkpoint every N steps (also every 10 minutes and at the end).
    #[arg(long, default_value_t = 1000)]
    checkpoint_every: u64,
    /// Images in each preview grid.
    #[arg(long, default_value_t = 64)]
    preview_count: usize,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
struct SampleArgs {
    /// Run folder written by `ddpm train`.
    #[arg(long)]
    run: PathBuf,
    /// Number of images.
    #[arg(long, default_value_t = 64)]
    n: usize,
    /// Seed of x_T and of every z.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output grid (PNG).
    #[arg(long, default_value = "samples.png")]
    out: PathBuf,
    /// Also write the denoising chain as an animated GIF.
    #[arg(long)]
    chain: Option<PathBuf>,
    /// `ddpm` (ancestral, Algorithm 2) or `ddim`.
    #[arg(long, default_value = "ddpm")]
    sampler: String,
    /// DDIM: number of steps.
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// DDIM: η (0 deterministic, 1 ≈ DDPM).
    #[arg(long, default_value_t = 0.0)]
    eta: f64,
    /// DDIM: timestep spacing.
    #[arg(long, value_enum, default_value_t = Spacing::Quadratic)]
    spacing: Spacing,
    /// σ_t² for ancestral sampling (default: the run's).
    #[arg(long, value_enum)]
    variance: Option<VarianceType>,
    /// Clip x̂₀ to [−1, 1] at every step (`--clip false` to turn off).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    clip: bool,
    /// Use the raw weights instead of the EMA.
    #[arg(long)]
    raw: bool,
    /// Images per network call.
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    /// Langevin corrector steps after each sampler step (predictor–corrector; 0 = off).
    #[arg(long, default_value_t = 0)]
    corrector_steps: usize,
    /// Target signal-to-noise ratio of the corrector's step size.
    #[arg(long, default_value_t = 0.16)]
    snr: f64,
    /// Classifier run for classifier guidance (`ddpm classifier train`).
    #[arg(long, requires = "class")]
    classifier: Option<PathBuf>,
    /// Class to steer towards (with --classifier).
    #[arg(long)]
    class: Option<usize>,
    /// Guidance scale s (0 = unguided).
    #[arg(long, default_value_t = 1.0)]
    guidance_scale: f64,
}

#[derive(Args)]
struct InspectArgs {
    /// Data set to take images from.
    #[arg(long, default_value = "mnist5k")]
    data: String,
    /// Timesteps (paper's t, 1..T) to show; 0 shows x_0.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "0,50,100,200,400,600,800,1000"
    )]
    t: Vec<usize>,
    /// Number of images (rows).
    #[arg(long, default_value_t = 4)]
    n: usize,
    /// Output PNG strip.
    #[arg(long, default_value = "forward.png")]
    out: PathBuf,
    /// Resize images to this side.
    #[arg(long)]
    image_size: Option<usize>,
    #[command(flatten)]
    diffusion: DiffusionArgs,
    /// Seed of the noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Args)]
struct DemoArgs {
    /// Where to put the run and the pictures.
    #[arg(long, default_value = "runs/demo")]
    out: PathBuf,
    /// Training time budget in minutes (the whole demo stays under 15 minutes on 2 cores).
    #[arg(long, default_value_t = 12.0)]
    minutes: f64,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Args)]
struct BenchArgs {
    /// Model preset.
    #[arg(long, default_value = "small28")]
    preset: String,
    /// Batch size.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Timed iterations per measurement (after one warm-up).
    #[arg(long, default_value_t = 5)]
    iters: usize,
}

fn pick_device(name: &str) -> Result<Device> {
    match name {
        "cpu" | "flex" => Ok(Device::flex()),
        #[cfg(feature = "wgpu")]
        "wgpu" | "gpu" => Ok(Device::wgpu(Default::default())),
        #[cfg(not(feature = "wgpu"))]
        "wgpu" | "gpu" => bail!(
            "this binary was built without GPU support: rebuild with `cargo build --release --features wgpu`"
        ),
        other => bail!("unknown device `{other}` (cpu or wgpu)"),
    }
}

fn main() {
    ddpm::tune_allocator();
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    if let Some(n) = cli.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .ok();
    }
    let device = pick_device(&cli.device)?;
    match cli.command {
        Command::Train(a) => cmd_train(a, &device),
        Command::Sample(a) => cmd_sample(a, &device),
        Command::Inspect(a) => cmd_inspect(a, &device),
        Command::Demo(a) => cmd_demo(a, &device),
        Command::Bench(a) => cmd_bench(a, &device),
        Command::Eval(EvalCommand::Nll(a)) => cmd_eval_nll(a, &device),
        Command::Eval(EvalCommand::Fid(a)) => cmd_eval_fid(a, &device),
        Command::Fid(a) => cmd_fid(a, &device),
        Command::Classifier(ClassifierCommand::Train(a)) => cmd_classifier_train(a, &device),
        Command::Classifier(ClassifierCommand::Eval(a)) => cmd_classifier_eval(a, &device),
        Command::Encode(a) => cmd_encode(a, &device),
        Command::Interpolate(a) => cmd_interpolate(a, &device),
    }
}

fn model_config(a: &TrainArgs) -> Result<UNetConfig> {
    let mut m = UNetConfig::preset(&a.preset)
        .with_context(|| format!("unknown preset `{}` (small28, cifar10, tiny)", a.preset))?;
    if let Some(s) = a.image_size {
        if s != m.image_size && a.attention.is_none() {
            // Keep attention at the same level of the network.
            let lvl = m.level_sizes();
            let levels: Vec<usize> = m
                .attention_resolutions
                .iter()
                .filter_map(|r| lvl.iter().position(|x| x == r))
                .collect();
            m.image_size = s;
            let lvl = m.level_sizes();
            m.attention_resolutions = levels.iter().map(|&l| lvl[l]).collect();
        }
        m.image_size = s;
    }
    if let Some(c) = a.channels {
        m.in_channels = c;
    }
    if let Some(c) = a.base_channels {
        m.base_channels = c;
    }
    if let Some(c) = &a.channel_mult {
        m.channel_mult = c.clone();
    }
    if let Some(r) = a.res_blocks {
        m.num_res_blocks = r;
    }
    if let Some(r) = &a.attention {
        m.attention_resolutions = r.clone();
    }
    if let Some(d) = a.dropout {
        m.dropout = d;
    }
    if let Some(g) = a.groups {
        m.norm_groups = g;
    }
    m.validate().map_err(|e| anyhow::anyhow!("model: {e}"))?;
    Ok(m)
}

fn cmd_train(a: TrainArgs, device: &Device) -> Result<()> {
    let mut trainer = if let Some(run) = &a.resume {
        Trainer::resume(run, device, |tc| tc.set_budget(a.steps, a.minutes))?
    } else {
        let run = a.run.clone().unwrap();
        if a.steps.is_none() && a.minutes.is_none() {
            bail!("give a budget: --steps N and/or --minutes M");
        }
        let mut model = model_config(&a)?;
        // Match the data's channels when the user did not say otherwise.
        if a.channels.is_none() {
            let probe = data::open(&a.data, Split::Train, Some(model.image_size))?;
            model.in_channels = probe.channels;
        }
        let config = RunConfig {
            model,
            diffusion: a.diffusion.config()?,
            train: TrainConfig {
                data: a.data.clone(),
                batch_size: a.batch_size,
                max_steps: a.steps,
                max_minutes: a.minutes,
                hflip: a.hflip,
                seed: a.seed,
                optim: ddpm::train::OptimConfig {
                    lr: a.lr,
                    warmup_steps: a.warmup,
                    grad_clip: a.grad_clip,
                    ema_decay: a.ema_decay,
                    ..Default::default()
                },
                sample_every: a.sample_every,
                checkpoint_every: a.checkpoint_every,
                preview_count: a.preview_count,
                ..Default::default()
            },
        };
        Trainer::create(&run, config, device)?
    };
    trainer.progress = !a.quiet;
    let n_params: usize = trainer.state.params.iter().map(|p| p.len()).sum();
    println!(
        "run {}: {} parameters, data {} ({} images {}×{}×{}), from step {}",
        trainer.run.display(),
        n_params,
        trainer.config.train.data,
        trainer.data.len(),
        trainer.data.channels,
        trainer.data.height,
        trainer.data.width,
        trainer.state.step
    );
    let s = trainer.train()?;
    println!(
        "done: step {}, loss {:.4}, {:.1} min of training\ncheckpoint: {}",
        s.step,
        s.loss,
        s.wall_seconds / 60.0,
        s.checkpoint.display()
    );
    if let Some(p) = s.preview {
        println!("preview:    {}", p.display());
    }
    Ok(())
}

/// Samples `n` images in batches, optionally recording chain frames of the first batch.
#[allow(clippy::too_many_arguments)]
fn sample_images(
    diffusion: &GaussianDiffusion,
    sampler: &dyn Sampler,
    model: &dyn EpsModel,
    shape: [usize; 3],
    n: usize,
    batch: usize,
    seed: u64,
    device: &Device,
    mut chain: Option<&mut Vec<image::RgbImage>>,
    show_progress: bool,
    corrector: Option<&ddpm::sampling::Langevin>,
    guide: Option<(&dyn ddpm::sampling::ClassifierGrad, usize, f64)>,
) -> Tensor<4> {
    let steps = sampler.timesteps().len();
    let pb = indicatif::ProgressBar::new((steps * n.div_ceil(batch)) as u64);
    if show_progress {
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} sample [{elapsed_precise} < {eta_precise}] {bar:30} {pos}/{len} steps",
            )
            .unwrap(),
        );
    } else {
        pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut noise = NoiseSource::new(seed);
    let mut outs = Vec::new();
    let mut done = 0;
    let every = (steps / 40).max(1);
    while done < n {
        let b = batch.min(n - done);
        let first = done == 0;
        let x_t = noise.normal([b, shape[0], shape[1], shape[2]], device);
        let guidance = guide.map(|(classifier, class, scale)| ddpm::sampling::Guidance {
            classifier,
            labels: vec![class; b],
            scale,
        });
        let opts = ddpm::sampling::LoopOptions {
            corrector: corrector.copied(),
            guidance: guidance.as_ref(),
        };
        let x = ddpm::sampling::sample_loop_with(
            diffusion,
            sampler,
            model,
            x_t,
            &mut noise,
            &opts,
            |k, out| {
                pb.inc(1);
                if first && (k % every == 0 || k + 1 == steps) {
                    if let Some(frames) = chain.as_deref_mut() {
                        let (px, dims) = ddpm::image::tensor_to_u8(out.prev.clone());
                        let ncol = (dims[0] as f64).sqrt().ceil() as usize;
                        let g = ddpm::image::grid(&px, dims, ncol);
                        frames.push(ddpm::image::upscale(&g, ddpm::image::auto_zoom(&g)));
                    }
                }
            },
        );
        outs.push(x);
        done += b;
    }
    pb.finish_and_clear();
    Tensor::cat(outs, 0)
}

fn build_sampler(
    name: &str,
    diffusion: &GaussianDiffusion,
    steps: usize,
    eta: f64,
    spacing: Spacing,
    clip: bool,
) -> Result<Box<dyn Sampler>> {
    Ok(match name {
        "ddpm" | "ancestral" => Box::new(Ancestral::new(diffusion, clip)),
        "ddim" => Box::new(Ddim::new(
            timestep_subsequence(diffusion.num_timesteps(), steps, spacing),
            eta,
            clip,
        )),
        other => bail!("unknown sampler `{other}` (ddpm or ddim)"),
    })
}

fn cmd_sample(a: SampleArgs, device: &Device) -> Result<()> {
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

fn cmd_inspect(a: InspectArgs, device: &Device) -> Result<()> {
    let dcfg = a.diffusion.config()?;
    let diffusion = GaussianDiffusion::new(dcfg);
    let s = &diffusion.schedule;
    let t_max = s.num_timesteps;
    let last = t_max - 1;
    let ln2 = std::f64::consts::LN_2;
    println!("schedule: {} with T = {t_max}", a.diffusion.schedule);
    println!(
        "  β_1 = {:.3e}, β_T = {:.3e}, Σβ = {:.4}",
        s.betas[0],
        s.betas[last],
        s.betas.iter().sum::<f64>()
    );
    println!(
        "  ᾱ_T = {:.4e}, √ᾱ_T = {:.4e}",
        s.alphas_cumprod[last], s.sqrt_alphas_cumprod[last]
    );
    println!(
        "  prior term L_T = KL(q(x_T|x_0) ‖ N(0,I)): {:.3e} bits/dim at x_0 = ±1, {:.3e} at x_0 = 0",
        s.prior_kl_nats(1.0) / ln2,
        s.prior_kl_nats(0.0) / ln2
    );
    println!("  √ᾱ_t (signal) and √(1−ᾱ_t) (noise) at the chosen t:");
    for &t in &a.t {
        if t == 0 {
            continue;
        }
        if t > t_max {
            bail!("t = {t} is beyond T = {t_max}");
        }
        println!(
            "    t = {t:5}: signal {:.4}, noise {:.4}, SNR {:.3e}",
            s.sqrt_alphas_cumprod[t - 1],
            s.sqrt_one_minus_alphas_cumprod[t - 1],
            s.alphas_cumprod[t - 1] / (1.0 - s.alphas_cumprod[t - 1])
        );
    }
    let set = data::open(&a.data, Split::Train, a.image_size)?;
    let (c, h, w) = (set.channels, set.height, set.width);
    // Evenly spaced images, so sorted data sets (e.g. by class) show variety.
    let n = a.n.clamp(1, set.len());
    let x0: Vec<f32> = (0..n)
        .flat_map(|k| {
            set.image(k * set.len() / n)
                .iter()
                .map(|&v| data::to_unit(v))
        })
        .collect();
    let x0 = Tensor::<4>::from_data(TensorData::new(x0, [n, c, h, w]), device);
    let mut noise = NoiseSource::new(a.seed);
    let eps = noise.normal([n, c, h, w], device);
    // Columns: one per t; rows: images. Built as an [n·len(t), c, h, w] batch in row order.
    let mut cols = Vec::new();
    for &t in &a.t {
        cols.push(if t == 0 {
            x0.clone()
        } else {
            diffusion.q_sample(x0.clone(), &vec![t - 1; n], eps.clone())
        });
    }
    let k = cols.len();
    let stacked = Tensor::stack::<5>(cols, 1).reshape([n * k, c, h, w]);
    ddpm::image::save_grid(stacked, k, &a.out)?;
    println!("wrote {} ({n} images × t = {:?})", a.out.display(), a.t);
    Ok(())
}

fn cmd_demo(a: DemoArgs, device: &Device) -> Result<()> {
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
    let (config, model, _) = load_run_model(&run, device, true)?;
    let diffusion = GaussianDiffusion::new(config.diffusion.clone());
    let sampler = Ddim::new(
        timestep_subsequence(1000, 50, Spacing::Quadratic),
        0.0,
        true,
    );
    let mut frames = Vec::new();
    let x = sample_images(
        &diffusion,
        &sampler,
        &model,
        [1, 28, 28],
        64,
        64,
        a.seed,
        device,
        Some(&mut frames),
        true,
        None,
        None,
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

fn cmd_bench(a: BenchArgs, device: &Device) -> Result<()> {
    let m =
        UNetConfig::preset(&a.preset).with_context(|| format!("unknown preset `{}`", a.preset))?;
    let threads = rayon::current_num_threads();
    let n_params = ddpm::params::count(&m.init(device));
    println!(
        "bench: preset {} ({} params, {}×{}×{}), batch {}, {} threads, device {:?}",
        a.preset,
        n_params,
        m.in_channels,
        m.image_size,
        m.image_size,
        a.batch_size,
        threads,
        device
    );
    let diffusion = GaussianDiffusion::new(DiffusionConfig::default());
    let shape = [a.batch_size, m.in_channels, m.image_size, m.image_size];
    // Training step: forward + backward + fused optimiser, as in `ddpm train`.
    let ad = device.clone().autodiff();
    let model = m.init(&ad);
    let mut state = ddpm::train::optim::TrainState::new(
        ddpm::params::collect(&model)
            .into_iter()
            .map(|p| p.values)
            .collect(),
    );
    let ocfg = ddpm::train::OptimConfig::default();
    let mut noise = NoiseSource::new(0);
    let mut model = model;
    // Phases of one step: forward (+ loss), backward, gradients to the host, fused
    // clip/Adam/EMA, weights back into the model.
    let mut phases = [0f64; 5];
    let mut train_step = |model: ddpm::model::UNet, phases: &mut [f64; 5]| -> ddpm::model::UNet {
        let x0 = noise.normal(shape, &ad).clamp(-1.0, 1.0);
        let eps = noise.normal(shape, &ad);
        let t: Vec<usize> = (0..a.batch_size).map(|i| (i * 997) % 1000).collect();
        let mut clock = Instant::now();
        let mut lap = |k: usize, phases: &mut [f64; 5]| {
            phases[k] += clock.elapsed().as_secs_f64();
            clock = Instant::now();
        };
        let xt = diffusion.q_sample(x0, &t, eps.clone());
        let tf: Vec<f32> = t.iter().map(|&i| i as f32).collect();
        let loss = diffusion.training_loss(eps, model.forward(xt, &tf, true), &t);
        let _ = loss.clone().into_data();
        lap(0, phases);
        let grads = loss.backward();
        lap(1, phases);
        let gs = ddpm::train::trainer::collect_grads(&model, &grads);
        lap(2, phases);
        state.update(&gs, &ocfg);
        lap(3, phases);
        let m = ddpm::params::assign(model, &state.params, true);
        lap(4, phases);
        m
    };
    model = train_step(model, &mut [0f64; 5]);
    let t0 = Instant::now();
    for _ in 0..a.iters {
        model = train_step(model, &mut phases);
    }
    let train_secs = t0.elapsed().as_secs_f64();
    let train_ips = (a.iters * a.batch_size) as f64 / train_secs;
    // Sampling: one network call per image per step, no autodiff.
    let inf = m.init(device);
    let x = noise.normal(shape, device);
    let t: Vec<usize> = vec![500; a.batch_size];
    let _ = inf.predict_eps(x.clone(), &t).into_data();
    let t0 = Instant::now();
    for _ in 0..a.iters {
        let _ = inf.predict_eps(x.clone(), &t).into_data();
    }
    let fwd_ips = (a.iters * a.batch_size) as f64 / t0.elapsed().as_secs_f64();
    println!("training:  {train_ips:8.1} images/s (forward + backward + Adam/EMA)");
    let names = [
        "forward + loss",
        "backward",
        "gradients to host",
        "clip + Adam + EMA",
        "weights into model",
    ];
    for (n, p) in names.iter().zip(phases) {
        println!(
            "           {:>5.1}% {n} ({:.1} ms/step)",
            100.0 * p / train_secs,
            1000.0 * p / a.iters as f64
        );
    }
    println!("sampling:  {fwd_ips:8.1} images/s per denoising step (one forward pass)");
    println!(
        "           = {:.3} images/s for 1000-step DDPM, {:.2} images/s for 50-step DDIM",
        fwd_ips / 1000.0,
        fwd_ips / 50.0
    );
    if let Some(mb) = peak_rss_mib() {
        println!("peak RSS:  {mb:8.0} MiB");
    }
    Ok(())
}

/// Peak resident memory of this process (Linux), MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn cmd_eval_nll(a: NllArgs, device: &Device) -> Result<()> {
    let (config, model, step) = load_run_model(&a.run, device, !a.raw)?;
    let diffusion = GaussianDiffusion::new(config.diffusion.clone());
    let m = &config.model;
    let spec = a.data.clone().unwrap_or_else(|| config.train.data.clone());
    let set = data::open(&spec, a.split, Some(m.image_size))?;
    if set.channels != m.in_channels {
        bail!(
            "data `{spec}` has {} channels, the model {}",
            set.channels,
            m.in_channels
        );
    }
    let n = a.n.clamp(1, set.len());
    let x0: Vec<f32> = (0..n)
        .flat_map(|k| {
            set.image(k * set.len() / n)
                .iter()
                .map(|&v| data::to_unit(v))
        })
        .collect();
    let t_max = diffusion.num_timesteps();
    println!(
        "NLL bound of {} (step {step}, {} weights, σ² = {:?}) on {n} {:?} images of `{spec}`: {} network evaluations",
        a.run.display(),
        if a.raw { "raw" } else { "EMA" },
        config.diffusion.variance,
        a.split,
        n * t_max
    );
    let pb = indicatif::ProgressBar::new((n * t_max) as u64);
    pb.set_style(
        indicatif::ProgressStyle::with_template("{spinner} nll [{elapsed_precise} < {eta_precise}] {bar:30} {pos}/{len} (image, t) pairs").unwrap(),
    );
    let t0 = Instant::now();
    let mut noise = NoiseSource::new(a.seed);
    let terms = ddpm::likelihood::calc_bpd(
        &diffusion,
        &model,
        &x0,
        [m.in_channels, m.image_size, m.image_size],
        a.batch_size,
        &mut noise,
        device,
        |done, _| pb.set_position(done as u64),
    );
    pb.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    let stats = |v: Vec<f64>| {
        let k = v.len() as f64;
        let mean = v.iter().sum::<f64>() / k;
        let se = if v.len() > 1 {
            (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (k - 1.0)).sqrt() / k.sqrt()
        } else {
            f64::NAN
        };
        (mean, se)
    };
    let (total, total_se) = stats(terms.iter().map(|t| t.total()).collect());
    let (prior, _) = stats(terms.iter().map(|t| t.prior).collect());
    let (l0, _) = stats(terms.iter().map(|t| t.terms[0]).collect());
    let (mid, _) = stats(terms.iter().map(|t| t.terms[1..].iter().sum()).collect());
    println!(
        "NLL ≤ {total:.4} ± {total_se:.4} bits/dim (mean ± standard error over {n} images, {secs:.0} s)"
    );
    println!("  prior L_T            {prior:.3e}");
    println!("  Σ L_(t−1), t=2..T    {mid:.4}");
    println!("  decoder L_0          {l0:.4}");
    let out = a.out.clone().unwrap_or_else(|| a.run.join("eval"));
    std::fs::create_dir_all(&out)?;
    let per_t: Vec<f64> = (0..t_max)
        .map(|t| terms.iter().map(|x| x.terms[t]).sum::<f64>() / n as f64)
        .collect();
    let mut csv = String::from("t,bits_per_dim\n");
    for (i, v) in per_t.iter().enumerate() {
        csv.push_str(&format!("{},{v:.6e}\n", i + 1));
    }
    std::fs::write(out.join("nll_terms.csv"), csv)?;
    ddpm::image::line_plot(&per_t, true, 800, 400, &out.join("nll_terms.png"))?;
    println!(
        "wrote {} and {} (L_t against t = 1..{t_max}, log y)",
        out.join("nll_terms.csv").display(),
        out.join("nll_terms.png").display()
    );
    update_metrics(
        &a.run,
        "nll",
        serde_json::json!({
            "bits_per_dim": total, "standard_error": total_se, "prior": prior, "decoder_l0": l0,
            "sum_kl": mid, "n": n, "split": format!("{:?}", a.split).to_lowercase(), "data": spec,
            "step": step, "ema": !a.raw, "seconds": secs,
        }),
    )?;
    Ok(())
}

/// Merges `value` under `key` into RUN/metrics.json.
fn update_metrics(run: &std::path::Path, key: &str, value: serde_json::Value) -> Result<()> {
    let path = run.join("metrics.json");
    let mut all: serde_json::Value = std::fs::read_to_string(&path)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_else(|| serde_json::json!({}));
    all[key] = value;
    ddpm::tensorfile::write_atomic(&path, serde_json::to_string_pretty(&all)?.as_bytes())
}

use ddpm::metrics::fid::{
    FEATURE_DIM, FeatureStats, extract_features, frechet_distance, precision_recall,
};
use ddpm::metrics::inception::{FidInception, locate_weights};

/// One side of an FID comparison.
enum FidSet {
    Stats(FeatureStats),
    Features(Vec<f32>),
}

fn fid_progress(len: usize, what: &str) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new(len as u64);
    pb.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{{spinner}} {what} [{{elapsed_precise}} < {{eta_precise}}] {{bar:30}} {{pos}}/{{len}} images"
        ))
        .unwrap(),
    );
    pb
}

fn cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("ddpm")
}

/// Features of (up to) `n` evenly spaced images of a data set, cached on disk.
fn dataset_features(
    spec: &str,
    split: Split,
    n: Option<usize>,
    net: &FidInception,
    batch: usize,
    device: &Device,
) -> Result<Vec<f32>> {
    let set = data::open(spec, split, None)?;
    let n = n.unwrap_or(set.len()).clamp(1, set.len());
    let key: String = format!("{spec}-{split:?}-{n}-of-{}", set.len())
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let cache = cache_dir()
        .join("fid-features")
        .join(format!("{key}.safetensors"));
    if let Ok(t) = ddpm::tensorfile::read_f32_tensors(&cache) {
        if let Some((_, s, v)) = t.into_iter().find(|(k, _, _)| k == "features") {
            if s == vec![n, FEATURE_DIM] {
                println!(
                    "{spec} ({split:?}, {n} images): cached features {}",
                    cache.display()
                );
                return Ok(v);
            }
        }
    }
    let pixels: Vec<u8> = (0..n)
        .flat_map(|k| set.image(k * set.len() / n).to_vec())
        .collect();
    let pb = fid_progress(n, &format!("features of {spec}"));
    let f = extract_features(
        net,
        &pixels,
        set.channels,
        set.height,
        set.width,
        batch,
        device,
        |d| pb.set_position(d as u64),
    );
    pb.finish_and_clear();
    std::fs::create_dir_all(cache.parent().unwrap())?;
    let bytes = ddpm::tensorfile::f32_tensors_to_bytes(
        &[("features".to_string(), vec![n, FEATURE_DIM], &f)],
        None,
    )?;
    ddpm::tensorfile::write_atomic(&cache, &bytes)?;
    Ok(f)
}

fn open_fid_set(
    spec: &str,
    n: Option<usize>,
    net: &mut Option<FidInception>,
    args: &FidNetArgs,
    device: &Device,
) -> Result<FidSet> {
    let path = std::path::Path::new(spec);
    if path.is_file() {
        return Ok(FidSet::Stats(FeatureStats::load(path)?));
    }
    let (name, split) = match spec.rsplit_once('@') {
        Some((n, "train")) => (n, Split::Train),
        Some((n, "test")) => (n, Split::Test),
        Some((_, other)) => bail!("`{spec}`: unknown split `{other}` (train or test)"),
        None => (spec, Split::Train),
    };
    if net.is_none() {
        *net = Some(FidInception::load(
            &locate_weights(args.inception.as_deref())?,
            device,
        )?);
    }
    let f = dataset_features(
        name,
        split,
        n,
        net.as_ref().unwrap(),
        args.fid_batch,
        device,
    )?;
    Ok(FidSet::Features(f))
}

fn stats_of(set: &FidSet) -> FeatureStats {
    match set {
        FidSet::Stats(s) => s.clone(),
        FidSet::Features(f) => FeatureStats::from_features(f, FEATURE_DIM),
    }
}

fn cmd_fid(a: FidArgs, device: &Device) -> Result<()> {
    let mut net = None;
    let t0 = Instant::now();
    let sa = open_fid_set(&a.a, a.n, &mut net, &a.net, device)?;
    let sb = open_fid_set(&a.b, a.n, &mut net, &a.net, device)?;
    let (st_a, st_b) = (stats_of(&sa), stats_of(&sb));
    if let Some(p) = &a.save_stats {
        st_b.save(p)?;
        println!("saved statistics of {} to {}", a.b, p.display());
    }
    let fid = frechet_distance(&st_a, &st_b)?;
    println!(
        "FID({}, {}) = {fid:.4}  (n = {} vs {})",
        a.a, a.b, st_a.n, st_b.n
    );
    if let (FidSet::Features(fa), FidSet::Features(fb)) = (&sa, &sb) {
        let (p, r) = precision_recall(fa, fb, FEATURE_DIM, 3);
        println!(
            "precision {p:.4}, recall {r:.4} (k = 3; {} as the real set)",
            a.a
        );
    }
    println!("{:.0} s", t0.elapsed().as_secs_f64());
    Ok(())
}

fn cmd_eval_fid(a: EvalFidArgs, device: &Device) -> Result<()> {
    let (config, model, step) = load_run_model(&a.run, device, true)?;
    let diffusion = GaussianDiffusion::new(config.diffusion.clone());
    let sampler = build_sampler(&a.sampler, &diffusion, a.steps, a.eta, a.spacing, a.clip)?;
    let m = &config.model;
    let spec = a.data.clone().unwrap_or_else(|| config.train.data.clone());
    let net = FidInception::load(&locate_weights(a.net.inception.as_deref())?, device)?;
    let real = dataset_features(&spec, a.split, Some(a.n), &net, a.net.fid_batch, device)?;
    println!(
        "FID of {} (step {step}, EMA) with {} ({} steps): {} samples against {} {:?} images of `{spec}`",
        a.run.display(),
        a.sampler,
        sampler.timesteps().len(),
        a.n,
        real.len() / FEATURE_DIM,
        a.split
    );
    let t0 = Instant::now();
    let mut noise = NoiseSource::new(a.seed);
    let mut fake = Vec::with_capacity(a.n * FEATURE_DIM);
    let pb = fid_progress(a.n, "sample + features");
    let mut done = 0;
    let mut first: Option<Tensor<4>> = None;
    let (mut t_sample, mut t_feat) = (0.0, 0.0);
    while done < a.n {
        let b = a.batch_size.min(a.n - done);
        let ts = Instant::now();
        let x = sample(
            &diffusion,
            sampler.as_ref(),
            &model,
            [b, m.in_channels, m.image_size, m.image_size],
            device,
            &mut noise,
            |_, _| {},
        );
        t_sample += ts.elapsed().as_secs_f64();
        if first.is_none() {
            first = Some(x.clone().slice([0..b.min(64)]));
        }
        let (px, dims) = ddpm::image::tensor_to_u8(x);
        let tf = Instant::now();
        fake.extend(extract_features(
            &net,
            &px,
            dims[1],
            dims[2],
            dims[3],
            a.net.fid_batch,
            device,
            |_| {},
        ));
        t_feat += tf.elapsed().as_secs_f64();
        done += b;
        pb.set_position(done as u64);
    }
    pb.finish_and_clear();
    let fid = frechet_distance(
        &FeatureStats::from_features(&real, FEATURE_DIM),
        &FeatureStats::from_features(&fake, FEATURE_DIM),
    )?;
    let (precision, recall) = precision_recall(&real, &fake, FEATURE_DIM, 3);
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "FID {fid:.3}, precision {precision:.4}, recall {recall:.4}  ({:.0} s: sampling {t_sample:.0} s, Inception {t_feat:.0} s)",
        secs
    );
    let out = a.run.join("eval");
    std::fs::create_dir_all(&out)?;
    if let Some(x) = first {
        let k = x.dims()[0];
        ddpm::image::save_grid(
            x,
            (k as f64).sqrt().ceil() as usize,
            &out.join("fid-samples.png"),
        )?;
    }
    update_metrics(
        &a.run,
        &format!(
            "fid_{}{}",
            a.sampler,
            if a.sampler == "ddim" {
                format!("{}", a.steps)
            } else {
                String::new()
            }
        ),
        serde_json::json!({
            "fid": fid, "precision": precision, "recall": recall, "n": a.n, "reference": spec,
            "split": format!("{:?}", a.split).to_lowercase(), "sampler": a.sampler, "steps": sampler.timesteps().len(),
            "eta": a.eta, "step": step, "seconds": secs, "sampling_seconds": t_sample, "inception_seconds": t_feat,
        }),
    )?;
    println!("wrote {}", a.run.join("metrics.json").display());
    Ok(())
}

/// One image for the model: an index into `set` or an image file, as model-space values.
fn pick_image(which: &str, set: &data::ImageSet, cfg: &UNetConfig) -> Result<Vec<f32>> {
    let img: Vec<u8> = if let Ok(i) = which.parse::<usize>() {
        if i >= set.len() {
            bail!(
                "image index {i} is beyond the {} images of {}",
                set.len(),
                set.name
            );
        }
        set.image(i).to_vec()
    } else {
        let path = std::path::Path::new(which);
        let dir = tempdir_with(path)?;
        let one = data::folder::open(&dir, Some(cfg.image_size))?;
        std::fs::remove_dir_all(&dir).ok();
        let px = one.image(0).to_vec();
        match (one.channels, cfg.in_channels) {
            (a, b) if a == b => px,
            (3, 1) => px
                .chunks(cfg.image_size * cfg.image_size)
                .next()
                .unwrap()
                .to_vec(),
            (1, 3) => px.iter().cycle().take(px.len() * 3).copied().collect(),
            (a, b) => bail!("{which}: {a} channels, the model needs {b}"),
        }
    };
    let want = cfg.in_channels * cfg.image_size * cfg.image_size;
    if img.len() != want {
        bail!(
            "{which}: image has {} values, the model needs {want}",
            img.len()
        );
    }
    Ok(img.into_iter().map(data::to_unit).collect())
}

/// A temporary folder holding a copy of one image, so the folder loader can read it.
fn tempdir_with(path: &std::path::Path) -> Result<PathBuf> {
    if !path.is_file() {
        bail!("{}: no such image file", path.display());
    }
    let dir = std::env::temp_dir().join(format!("ddpm-one-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::copy(path, dir.join(path.file_name().unwrap()))?;
    Ok(dir)
}

fn cmd_encode(a: EncodeArgs, device: &Device) -> Result<()> {
    let (config, model, step) = load_run_model(&a.run, device, true)?;
    let diffusion = GaussianDiffusion::new(config.diffusion.clone());
    let m = &config.model;
    let spec = a.data.clone().unwrap_or_else(|| config.train.data.clone());
    let set = data::open(&spec, Split::Test, Some(m.image_size))?;
    let n = a.n.clamp(1, set.len());
    let x0: Vec<f32> = (0..n)
        .flat_map(|k| {
            set.image(k * set.len() / n)
                .iter()
                .map(|&v| data::to_unit(v))
        })
        .collect();
    let shape = [n, m.in_channels, m.image_size, m.image_size];
    let x0 = Tensor::<4>::from_data(TensorData::new(x0, shape), device);
    let ts = timestep_subsequence(diffusion.num_timesteps(), a.steps, Spacing::Linear);
    println!(
        "encoding {n} images of `{spec}` with {} (step {step}), {} DDIM steps",
        a.run.display(),
        ts.len()
    );
    let latent = ddpm::sampling::ddim_encode(&diffusion, &model, x0.clone(), &ts, |_| {});
    let lv: Vec<f32> = latent
        .clone()
        .into_data()
        .convert::<f32>()
        .try_into_vec()
        .unwrap();
    let bytes = ddpm::tensorfile::f32_tensors_to_bytes(
        &[("latents".to_string(), shape.to_vec(), &lv)],
        None,
    )?;
    ddpm::tensorfile::write_atomic(&a.out, &bytes)?;
    let rms = (lv.iter().map(|x| x * x).sum::<f32>() / lv.len() as f32).sqrt();
    println!("wrote {} (latent rms {rms:.3})", a.out.display());
    if let Some(check) = &a.check {
        let sampler = Ddim::new(ts, 0.0, false);
        let mut noise = NoiseSource::new(0);
        let back = ddpm::sampling::sample_loop(
            &diffusion,
            &sampler,
            &model,
            latent,
            &mut noise,
            |_, _| {},
        );
        let err: f32 = (back.clone() - x0.clone()).abs().max().into_scalar();
        ddpm::image::save_grid(Tensor::cat(vec![x0, back], 0), n, check)?;
        println!(
            "decoded again: max |x_0 − decode(encode(x_0))| = {err:.4}; wrote {}",
            check.display()
        );
    }
    Ok(())
}

fn cmd_interpolate(a: InterpolateArgs, device: &Device) -> Result<()> {
    let (config, model, step) = load_run_model(&a.run, device, true)?;
    let diffusion = GaussianDiffusion::new(config.diffusion.clone());
    let m = &config.model;
    let spec = a.data.clone().unwrap_or_else(|| config.train.data.clone());
    let set = data::open(&spec, Split::Test, Some(m.image_size))?;
    let xa = pick_image(&a.a, &set, m)?;
    let xb = pick_image(&a.b, &set, m)?;
    let shape1 = [1, m.in_channels, m.image_size, m.image_size];
    let x0 = Tensor::<4>::from_data(
        TensorData::new([xa, xb].concat(), [2, shape1[1], shape1[2], shape1[3]]),
        device,
    );
    let ts = timestep_subsequence(diffusion.num_timesteps(), a.steps, Spacing::Linear);
    println!(
        "interpolating {} ↔ {} with {} (step {step}), {} DDIM steps",
        a.a,
        a.b,
        a.run.display(),
        ts.len()
    );
    let latent: Vec<f32> = ddpm::sampling::ddim_encode(&diffusion, &model, x0.clone(), &ts, |_| {})
        .into_data()
        .convert::<f32>()
        .try_into_vec()
        .unwrap();
    let d = latent.len() / 2;
    let k = a.frames.max(2);
    let mut zs = Vec::with_capacity(k * d);
    for i in 0..k {
        zs.extend(ddpm::sampling::slerp(
            &latent[..d],
            &latent[d..],
            i as f64 / (k - 1) as f64,
        ));
    }
    let z = Tensor::<4>::from_data(
        TensorData::new(zs, [k, shape1[1], shape1[2], shape1[3]]),
        device,
    );
    let sampler = Ddim::new(ts, 0.0, false);
    let mut noise = NoiseSource::new(0);
    let frames =
        ddpm::sampling::sample_loop(&diffusion, &sampler, &model, z, &mut noise, |_, _| {});
    // Strip: originals at both ends, decoded path between.
    let strip = Tensor::cat(
        vec![x0.clone().slice([0..1]), frames.clone(), x0.slice([1..2])],
        0,
    );
    ddpm::image::save_grid(strip, k + 2, &a.out)?;
    println!("wrote {}", a.out.display());
    if let Some(g) = &a.gif {
        let (px, dims) = ddpm::image::tensor_to_u8(frames);
        let per = dims[1] * dims[2] * dims[3];
        let mut imgs = Vec::new();
        let order: Vec<usize> = (0..k).chain((1..k - 1).rev()).collect();
        for i in order {
            let one = ddpm::image::grid(
                &px[i * per..(i + 1) * per],
                [1, dims[1], dims[2], dims[3]],
                1,
            );
            imgs.push(ddpm::image::upscale(&one, 8));
        }
        ddpm::image::save_gif(&imgs, 120, g)?;
        println!("wrote {}", g.display());
    }
    Ok(())
}

fn cmd_classifier_train(a: ClassifierTrainArgs, device: &Device) -> Result<()> {
    use ddpm::train::classifier::{ClassifierRunConfig, ClassifierTrainer};
    let mut trainer = if let Some(run) = &a.resume {
        ClassifierTrainer::resume(run, device, |tc| tc.set_budget(a.steps, a.minutes))?
    } else {
        if a.steps.is_none() && a.minutes.is_none() {
            bail!("give a budget: --steps N and/or --minutes M");
        }
        let mut backbone = UNetConfig::preset(&a.preset)
            .with_context(|| format!("unknown preset `{}`", a.preset))?;
        let probe = data::open(&a.data, Split::Train, Some(backbone.image_size))?;
        backbone.in_channels = probe.channels;
        let classes = a.classes.unwrap_or_else(|| probe.num_classes());
        if classes < 2 {
            bail!("data `{}` has no labels or a single class", a.data);
        }
        let config = ClassifierRunConfig {
            kind: "classifier".into(),
            model: ddpm::model::classifier::ClassifierConfig {
                backbone,
                num_classes: classes,
            },
            diffusion: a.diffusion.config()?,
            train: TrainConfig {
                data: a.data.clone(),
                batch_size: a.batch_size,
                max_steps: a.steps,
                max_minutes: a.minutes,
                hflip: a.hflip,
                seed: a.seed,
                optim: ddpm::train::OptimConfig {
                    lr: a.lr,
                    warmup_steps: a.warmup,
                    ema_decay: a.ema_decay,
                    ..Default::default()
                },
                checkpoint_every: a.checkpoint_every,
                ..Default::default()
            },
            clean: a.clean,
        };
        ClassifierTrainer::create(a.run.as_ref().unwrap(), config, device)?
    };
    trainer.progress = !a.quiet;
    let n_params: usize = trainer.state.params.iter().map(|p| p.len()).sum();
    println!(
        "classifier run {}: {n_params} parameters, {} classes, {} inputs, from step {}",
        trainer.run.display(),
        trainer.config.model.num_classes,
        if trainer.config.clean {
            "clean"
        } else {
            "noisy (t ~ U)"
        },
        trainer.state.step
    );
    let ckpt = trainer.train()?;
    println!(
        "done: step {}; checkpoint {}; per-step accuracy by t in {}",
        trainer.state.step,
        ckpt.display(),
        trainer.run.join("log.csv").display()
    );
    Ok(())
}

fn cmd_classifier_eval(a: ClassifierEvalArgs, device: &Device) -> Result<()> {
    use ddpm::train::classifier::{evaluate, load_classifier};
    let (config, model) = load_classifier(&a.run, device, true)?;
    let spec = a.data.clone().unwrap_or_else(|| config.train.data.clone());
    let set = data::open(&spec, a.split, Some(config.model.backbone.image_size))?;
    if set.labels.is_none() {
        bail!("data `{spec}` has no labels");
    }
    let acc = evaluate(&config, &model, &set, a.n, device, 0);
    println!(
        "accuracy on {} {:?} images of `{spec}`: {:.4}",
        a.n.min(set.len()),
        a.split,
        acc.overall()
    );
    if !config.clean {
        let t_max = config.diffusion.num_timesteps;
        for q in 0..4 {
            println!(
                "  t in [{}, {}): {:.4} ({} images)",
                q * t_max / 4 + 1,
                (q + 1) * t_max / 4 + 1,
                acc.quarter(q),
                acc.quarters[q].1
            );
        }
    }
    Ok(())
}
