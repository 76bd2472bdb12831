//! `ddpm import` and `ddpm export`: diffusers `UNet2DModel` folders in and out of run folders.

use super::prelude::*;

#[derive(Args)]
pub(crate) struct ImportArgs {
    /// diffusers model folder: config.json + diffusion_pytorch_model.safetensors (or the
    /// PyTorch `.bin`), or a pipeline folder with unet/ and scheduler/ (e.g. a download of
    /// google/ddpm-cifar10-32). scheduler_config.json beside the model, in scheduler/ or in the
    /// parent's scheduler/ sets T, the β schedule and the variance; without one the run uses
    /// ddpm's defaults (Ho et al.: T = 1000, β linear 1e-4 → 0.02, σ² = β).
    #[arg(long)]
    pub(crate) diffusers: PathBuf,
    /// Run folder to create (must not hold a run yet).
    #[arg(long)]
    pub(crate) run: PathBuf,
    /// Data set recorded in the run for further training with `ddpm train --resume` (set it
    /// to the data to fine-tune on; sampling does not use it).
    #[arg(long, default_value = "mnist5k")]
    pub(crate) data: String,
}

#[derive(Args)]
pub(crate) struct ExportArgs {
    /// Run folder written by `ddpm train` (its latest checkpoint is exported).
    #[arg(long)]
    pub(crate) run: PathBuf,
    /// Output folder: config.json, diffusion_pytorch_model.safetensors and
    /// scheduler_config.json, loadable with diffusers' `UNet2DModel.from_pretrained(OUT)` and
    /// `DDPMScheduler.from_pretrained(OUT)`.
    #[arg(long)]
    pub(crate) diffusers: PathBuf,
    /// Export the raw weights instead of the EMA.
    #[arg(long)]
    pub(crate) raw: bool,
}

pub(crate) fn cmd_import(a: ImportArgs) -> Result<()> {
    let r = ddpm::diffusers::import_run(&a.diffusers, &a.run, &a.data)?;
    let m = &r.run_config.model;
    println!(
        "read {} and {}",
        r.model.files.config.display(),
        r.model.files.weights.display()
    );
    match &r.model.files.scheduler {
        Some(p) => println!("diffusion from {}", p.display()),
        None => println!(
            "no scheduler_config.json found: ddpm's default diffusion (T = 1000, linear β 1e-4 → 0.02, σ² = β)"
        ),
    }
    for note in &r.model.notes {
        println!("note: {note}");
    }
    let d = &r.run_config.diffusion;
    println!(
        "wrote run {}: {}×{}×{}, ch {} × {:?}, {} res blocks, attention at {:?}, {} parameters; T = {}, {:?} β, σ² {:?}; checkpoint {}",
        a.run.display(),
        m.in_channels,
        m.image_size,
        m.image_size,
        m.base_channels,
        m.channel_mult,
        m.num_res_blocks,
        m.attention_resolutions,
        r.model.weights.iter().map(Vec::len).sum::<usize>(),
        d.num_timesteps,
        d.schedule,
        d.variance,
        r.checkpoint.display()
    );
    Ok(())
}

pub(crate) fn cmd_export(a: ExportArgs) -> Result<()> {
    let r = ddpm::diffusers::export_run(&a.run, &a.diffusers, !a.raw)?;
    println!(
        "exported {} (step {}, {} weights) to {}",
        r.checkpoint.display(),
        r.step,
        if a.raw { "raw" } else { "EMA" },
        a.diffusers.display()
    );
    for f in &r.files {
        println!("  {}", f.display());
    }
    Ok(())
}
