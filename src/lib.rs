//! # ddpm — denoising diffusion probabilistic models on burn
//!
//! Ho et al. 2020 (DDPM), Song et al. 2021 (DDIM) and Dhariwal & Nichol 2021 (classifier
//! guidance), with the mathematics ([`schedule`], [`diffusion`], [`likelihood`], [`sampling`])
//! kept free of I/O so it can be checked against exact values, and the CLI a thin layer over
//! these calls.
//!
//! ```no_run
//! use burn::tensor::Device;
//! use ddpm::diffusion::{DiffusionConfig, GaussianDiffusion};
//! use ddpm::model::UNetConfig;
//! use ddpm::sampling::{BatchOptions, SamplerConfig, sample_batched};
//! use ddpm::train::{Run, RunConfig, TrainConfig, Trainer};
//!
//! let device = Device::flex();
//! // Train a tiny model on the built-in MNIST-5k digits for 200 steps (Algorithm 1).
//! let config = RunConfig {
//!     model: UNetConfig::tiny(28, 1),
//!     diffusion: DiffusionConfig::default(),
//!     train: TrainConfig { max_steps: Some(200), ..Default::default() },
//! };
//! let run = std::path::Path::new("runs/tiny");
//! Trainer::create(run, config, &device)?.train()?;
//! // Sample 16 digits with 50 DDIM steps from the EMA weights and save a grid.
//! let (config, model, _step) = Run::open(run)?.model(&device, true)?;
//! let diffusion = GaussianDiffusion::new(config.diffusion);
//! let sampler = SamplerConfig::from_name("dpm-solver++", 20, 0.0, None, true).unwrap().build(&diffusion);
//! let opts = BatchOptions { seed: 0, ..Default::default() };
//! let x = sample_batched(&diffusion, sampler.as_ref(), &model, [1, 28, 28], 16, &device, &opts, |_, _, _| {});
//! ddpm::image::save_grid(x, 4, "runs/tiny/grid.png".as_ref())?;
//! # Ok::<(), anyhow::Error>(())
//! ```

pub mod data;
pub mod device;
pub mod diffusers;
pub mod diffusion;
pub mod image;
pub mod kernels;
pub mod likelihood;
pub mod metrics;
pub mod model;
pub mod noise;
pub mod oracle;
pub mod output;
pub mod params;
pub mod sampling;
pub mod schedule;
pub mod selftest;
pub mod tensorfile;
pub mod torchscript;
pub mod train;

#[cfg(test)]
pub(crate) mod testing;

/// Tunes the system allocator for tensor workloads; call once at start-up.
///
/// A training step allocates and frees many multi-megabyte buffers. glibc serves those with
/// fresh `mmap`s and returns them on `free`, so every step pays for the kernel zeroing new pages
/// (19% of a training step in a profile of `ddpm bench`). Keeping freed memory in the heap
/// removes that cost (BENCHMARKS.md has the before/after). Not calling it keeps glibc's
/// defaults (the CLI's `--malloc default`, for before/after measurements).
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before any threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
    }
}
