//! `ddpm sample`: any sampler from a run, with chains, a corrector, classifier or
//! classifier-free guidance, SDEdit and inpainting.

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
    /// SDEdit (Meng et al. 2022): start from this image noised to level `--strength`·T
    /// instead of from pure noise.
    #[arg(long)]
    pub(crate) init: Option<PathBuf>,
    /// SDEdit strength in (0, 1]: how much of the noise range is re-generated (1 = ignore the
    /// image, small = stay close to it).
    #[arg(long, default_value_t = 0.5)]
    pub(crate) strength: f64,
    /// Inpainting (RePaint, Lugmayr et al. 2022): the image whose known pixels are kept.
    #[arg(long, requires = "mask")]
    pub(crate) inpaint: Option<PathBuf>,
    /// Inpainting mask image: white (≥ 128) where the pixel is known and kept, black where it
    /// is generated.
    #[arg(long, requires = "inpaint")]
    pub(crate) mask: Option<PathBuf>,
    /// RePaint's resampling count U per step (1 = none; the paper uses 10).
    #[arg(long, default_value_t = 1)]
    pub(crate) resample: usize,
    #[command(flatten)]
    pub(crate) sampling: SamplingArgs,
}

/// One image file as a [1, C, H, W] tensor in [−1, 1] at the model's size.
fn image_tensor(path: &std::path::Path, m: &UNetConfig, device: &Device) -> Result<Tensor<4>> {
    let px = data::folder::load_one(path, m.image_size, m.in_channels)?;
    let v: Vec<f32> = px.into_iter().map(data::to_unit).collect();
    Ok(Tensor::from_data(
        TensorData::new(v, [1, m.in_channels, m.image_size, m.image_size]),
        device,
    ))
}

pub(crate) fn cmd_sample(a: SampleArgs, device: &Device) -> Result<()> {
    let (config, model, step) = Run::open(&a.run)?.model(device, !a.raw)?;
    let m = &config.model;
    let mut plan = a
        .sampling
        .plan(&config.diffusion, m.num_classes(), "ddpm", device)?;
    if a.init.is_some() && a.inpaint.is_some() {
        bail!("--init (SDEdit) and --inpaint cannot be combined");
    }
    if !(a.strength > 0.0 && a.strength <= 1.0) {
        bail!("--strength {} must be in (0, 1]", a.strength);
    }
    let mut what = a.sampling.describe(&plan);
    let guide = match &a.init {
        Some(p) => {
            let sd = ddpm::sampling::SdEdit::new(plan.sampler, &plan.diffusion, a.strength);
            what = format!(
                "{what}, SDEdit from {} at strength {} ({} steps)",
                p.display(),
                a.strength,
                sd.timesteps().len()
            );
            plan.sampler = Box::new(sd);
            Some(image_tensor(p, m, device)?)
        }
        None => None,
    };
    if let (Some(img), Some(mask)) = (&a.inpaint, &a.mask) {
        let known = image_tensor(img, m, device)?;
        let mask_px = data::folder::load_one(mask, m.image_size, 1)?;
        let mv: Vec<f32> = mask_px
            .iter()
            .map(|&v| if v >= 128 { 1.0 } else { 0.0 })
            .collect();
        let known_share = mv.iter().sum::<f32>() / mv.len() as f32;
        let mask_t = Tensor::<4>::from_data(
            TensorData::new(mv, [1, 1, m.image_size, m.image_size]),
            device,
        );
        what = format!(
            "{what}, inpainting {} ({:.0}% of pixels known, U = {})",
            img.display(),
            100.0 * known_share,
            a.resample
        );
        plan.sampler = Box::new(ddpm::sampling::Inpaint::new(
            plan.sampler,
            known,
            mask_t,
            a.resample,
        ));
    }
    println!(
        "sampling {} images from {} (step {step}, {} weights) with {what}",
        a.n,
        a.run.display(),
        if a.raw { "raw" } else { "EMA" },
    );
    let k = a.sampling.num_classes(&plan).unwrap_or(1);
    let label = |i: usize| a.sampling.label(i, k);
    let mut opts = a.sampling.batch_options(&plan, a.seed, &label);
    let start = |range: std::ops::Range<usize>, noise: &mut NoiseSource| -> Tensor<4> {
        let g = guide.clone().expect("SDEdit guide image");
        let t0 = plan.sampler.timesteps()[0];
        ddpm::sampling::SdEdit::start(&plan.diffusion, t0, g.repeat_dim(0, range.len()), noise)
    };
    if guide.is_some() {
        opts.start = Some(&start);
    }
    let t0 = Instant::now();
    let mut frames = Vec::new();
    let x = sample_images(
        &plan.diffusion,
        plan.sampler.as_ref(),
        &model,
        [m.in_channels, m.image_size, m.image_size],
        a.n,
        device,
        &opts,
        a.chain.is_some().then_some(&mut frames),
        true,
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
