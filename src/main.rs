//! `ddpm`: train diffusion models on your images, sample from them, and look inside.

mod cli;

use anyhow::Result;
use clap::{Parser, Subcommand};

use cli::classifier::*;
use cli::eval::*;
use cli::interop::*;
use cli::latent::*;
use cli::prelude::pick_device;
use cli::{bench::*, demo::*, fid::*, inspect::*, sample::*, selftest::*, train::*};

#[derive(Parser)]
#[command(
    name = "ddpm",
    version,
    about = "Denoising diffusion probabilistic models (Ho et al. 2020) in pure Rust",
    long_about = "Train DDPMs on your own images, sample from them (ancestral DDPM, DDIM, DPM-Solver++ or Heun), and \
inspect the forward process.\n\nStart with `ddpm demo`: it trains a small model on the built-in \
MNIST-5k digits for a few minutes and writes a sample grid and a denoising GIF."
)]
struct Cli {
    /// Compute device: `cpu` (pure-Rust burn-flex, all cores), `cuda` or `cuda:N` (NVIDIA GPU N;
    /// needs the `cuda` cargo feature), `wgpu` or `vulkan` (GPU through wgpu; needs the `wgpu`
    /// or `vulkan` cargo feature). `ddpm selftest --device D` checks a device against the CPU.
    #[arg(long, global = true, default_value = "cpu")]
    device: String,
    /// CPU threads (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// CPU kernels: `auto` (this crate's kernels, each convolution on the fastest of im2col +
    /// GEMM, the direct kernel and Winograd F(4×4, 3×3), timed once per shape on this machine
    /// and remembered in ~/.cache/ddpm/conv-choices.json; runs record theirs in checkpoints),
    /// `rule` (the same kernels chosen by a fixed size limit, no Winograd), `gemm` (every
    /// convolution as im2col + GEMM), `direct` (the direct kernel for every stride-1
    /// convolution; AVX-512 only), `winograd` (Winograd for every stride-1 3×3 convolution,
    /// `rule` for the rest) or `burn` (burn's own ops). BENCHMARKS.md compares them.
    #[arg(long, global = true, default_value = "auto")]
    kernels: ddpm::kernels::KernelPolicy,
    /// Memory allocator settings: `tuned` (freed buffers stay in the heap; see BENCHMARKS.md)
    /// or `default` (glibc's defaults).
    #[arg(long, global = true, default_value = "tuned", value_parser = ["tuned", "default"])]
    malloc: String,
    /// Arithmetic of the network's matrix products: `f32`, or `bf16` (operands rounded to
    /// bfloat16, sums in f32). On the CPU: the stride-1 convolutions on AVX512_BF16 (AMD Zen 4+,
    /// Intel Sapphire Rapids+). On GPUs (and under `--kernels burn`): every convolution, the
    /// attention's linear layers and its two products, through burn's ops with bf16 operands and
    /// results cast back to f32. In training (recorded in the run; resumes continue in it) the
    /// forward pass and both gradients of those ops are bf16, while Adam, master weights, EMA,
    /// GroupNorm, softmax and the loss stay f32, as with PyTorch's autocast. The FID network
    /// always computes in f32. BENCHMARKS.md has the speed, the README the FID of bf16 against
    /// f32.
    #[arg(long, global = true, default_value = "f32")]
    precision: ddpm::kernels::Precision,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model (Algorithm 1) into a run folder, or continue one with --resume.
    Train(TrainArgs),
    /// Sample images from a trained run (Algorithm 2, DDIM, DPM-Solver++ or Heun; guidance, editing).
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
    /// Make a run folder from a diffusers UNet2DModel folder (DDPM configuration).
    Import(ImportArgs),
    /// Write a run's weights as a diffusers UNet2DModel folder (+ scheduler_config.json).
    Export(ExportArgs),
    /// Check a device against the CPU and the exact answers (U-Net, samplers, guidance,
    /// a training step, determinism, checkpoints); prints a table, fails on any FAIL.
    Selftest(SelftestArgs),
}

fn main() {
    let cli = Cli::parse();
    if cli.malloc == "tuned" {
        ddpm::tune_allocator();
    }
    ddpm::kernels::set_policy(cli.kernels);
    if cli.kernels == ddpm::kernels::KernelPolicy::Auto {
        let cache = ddpm::metrics::evaluate::cache_dir().join("conv-choices.json");
        ddpm::kernels::tune::enable(Some(&cache));
    }
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    // Before any kernel runs: the level is fixed at first use.
    ddpm::kernels::simd::check_env().map_err(anyhow::Error::msg)?;
    if let Some(n) = cli.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .ok();
    }
    let device = pick_device(&cli.device)?;
    let precision = cli.precision;
    if precision == ddpm::kernels::Precision::Bf16 {
        check_bf16(&cli.command, &device)?;
    }
    ddpm::kernels::with_precision(precision, || dispatch(cli, &device))
}

/// `--precision bf16`: the CPU's AVX512_BF16 kernels, or bf16 operands through burn's ops on
/// GPUs (and under `--kernels burn`); training, sampling and evaluation only.
fn check_bf16(command: &Command, device: &burn::tensor::Device) -> Result<()> {
    use anyhow::bail;
    if let Err(e) = ddpm::kernels::check_precision(ddpm::kernels::Precision::Bf16, device) {
        bail!("{e}");
    }
    match command {
        Command::Train(_)
        | Command::Classifier(_)
        | Command::Sample(_)
        | Command::Demo(_)
        | Command::Bench(_)
        | Command::Eval(_)
        | Command::Encode(_)
        | Command::Interpolate(_) => Ok(()),
        _ => bail!(
            "--precision bf16 applies to training, sampling and evaluation (train, classifier, \
             sample, eval, encode, interpolate, demo, bench); this command computes in f32, \
             omit it"
        ),
    }
}

fn dispatch(cli: Cli, device: &burn::tensor::Device) -> Result<()> {
    let device = device.clone();
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
        Command::Import(a) => cmd_import(a),
        Command::Export(a) => cmd_export(a),
        Command::Selftest(a) => cmd_selftest(a, &device, &cli.device),
    }
}
