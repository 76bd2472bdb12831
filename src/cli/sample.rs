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
    /// Also write one PNG per image into this (new or empty) folder: 000000.png, 000001.png, …
    #[arg(long)]
    pub(crate) out_dir: Option<PathBuf>,
    /// Also write the images as NumPy .npz: uint8 N×H×W×C under `arr_0`, the layout
    /// guided-diffusion's evaluator reads.
    #[arg(long)]
    pub(crate) npz: Option<PathBuf>,
    /// Use the raw weights instead of the EMA.
    #[arg(long)]
    pub(crate) raw: bool,
    #[command(flatten)]
    pub(crate) sampling: SamplingArgs,
}

pub(crate) fn cmd_sample(a: SampleArgs, device: &Device) -> Result<()> {
    let (config, model, step) = load_run_model(&a.run, device, !a.raw)?;
    let plan = a.sampling.plan(&config.diffusion, "ddpm", device)?;
    let m = &config.model;
    println!(
        "sampling {} images from {} (step {step}, {} weights) with {}",
        a.n,
        a.run.display(),
        if a.raw { "raw" } else { "EMA" },
        a.sampling.describe(&plan)
    );
    let label = |i: usize| {
        a.sampling
            .label(i, plan.classifier.as_ref().map_or(1, |c| c.1))
    };
    let t0 = Instant::now();
    let mut frames = Vec::new();
    let x = sample_images(
        &plan.diffusion,
        plan.sampler.as_ref(),
        &model,
        [m.in_channels, m.image_size, m.image_size],
        a.n,
        a.sampling.batch_size,
        a.seed,
        device,
        a.chain.is_some().then_some(&mut frames),
        true,
        plan.corrector.as_ref(),
        plan.classifier.as_ref().map(|(g, _)| Guide {
            classifier: g,
            label: &label,
            scale: a.sampling.guidance_scale,
        }),
    );
    let secs = t0.elapsed().as_secs_f64();
    if a.out_dir.is_some() || a.npz.is_some() {
        let (px, dims) = ddpm::image::tensor_to_u8(x.clone());
        if let Some(dir) = &a.out_dir {
            let n = ddpm::output::save_pngs(&px, dims, dir)?.len();
            println!("wrote {n} PNGs to {}", dir.display());
        }
        if let Some(p) = &a.npz {
            ddpm::output::save_npz(&px, dims, p)?;
            let [n, c, h, w] = dims;
            println!(
                "wrote {} (uint8 [{n}, {h}, {w}, {c}] as arr_0)",
                p.display()
            );
        }
    }
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
