//! Load a diffusers `UNet2DModel` folder (DDPM configuration: `config.json` +
//! `diffusion_pytorch_model.safetensors`, e.g. the `unet/` folder of google/ddpm-cifar10-32)
//! and sample from it with 50 DDIM steps.
//!
//! `cargo run --release --example load_diffusers -- DIR [OUT.png] [N]`
//!
//! The schedule is the one such models are trained with (Ho et al. 2020: T = 1000, β linear
//! from 1e-4 to 0.02), which is [`DiffusionConfig::default`].

use anyhow::Context;
use burn::tensor::Device;
use ddpm::diffusers::load_diffusers_unet;
use ddpm::diffusion::{DiffusionConfig, GaussianDiffusion};
use ddpm::sampling::{BatchOptions, SamplerConfig, sample_batched};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(
        args.next()
            .context("usage: load_diffusers DIR [OUT.png] [N]")?,
    );
    let out = std::path::PathBuf::from(args.next().unwrap_or("diffusers-samples.png".into()));
    let n: usize = args.next().map_or(Ok(16), |s| s.parse())?;
    let device = Device::flex();

    let (config, model) = load_diffusers_unet(&dir, &device)?;
    println!(
        "loaded {}: {}×{}×{}, {} parameters",
        dir.display(),
        config.in_channels,
        config.image_size,
        config.image_size,
        ddpm::params::count(&model)
    );

    let diffusion = GaussianDiffusion::new(DiffusionConfig::default());
    let sampler = SamplerConfig::default().build(&diffusion); // DDIM, 50 quadratic steps
    let shape = [config.in_channels, config.image_size, config.image_size];
    let opts = BatchOptions::default();
    let x = sample_batched(
        &diffusion,
        sampler.as_ref(),
        &model,
        shape,
        n,
        &device,
        &opts,
        |_, _, _| {},
    );
    ddpm::image::save_grid(x, (n as f64).sqrt().ceil() as usize, &out)?;
    println!("wrote {}", out.display());
    Ok(())
}
