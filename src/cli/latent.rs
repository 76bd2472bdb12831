//! `ddpm encode` / `ddpm interpolate`: DDIM inversion and latent interpolation.

use super::prelude::*;

#[derive(Args)]
pub(crate) struct EncodeArgs {
    /// Run folder written by `ddpm train`.
    #[arg(long)]
    pub(crate) run: PathBuf,
    /// Images: a data set spec or folder (default: the run's data).
    #[arg(long)]
    pub(crate) data: Option<String>,
    /// Number of images (evenly spaced).
    #[arg(long, default_value_t = 8)]
    pub(crate) n: usize,
    /// DDIM steps of the ODE.
    #[arg(long, default_value_t = 100)]
    pub(crate) steps: usize,
    /// Latents out (safetensors, tensor `latents`).
    #[arg(long, default_value = "latents.safetensors")]
    pub(crate) out: PathBuf,
    /// Also decode the latents again and save originals (top) over reconstructions (bottom).
    #[arg(long)]
    pub(crate) check: Option<PathBuf>,
}

#[derive(Args)]
pub(crate) struct InterpolateArgs {
    /// Run folder written by `ddpm train`.
    #[arg(long)]
    pub(crate) run: PathBuf,
    /// Data set the two images come from (default: the run's).
    #[arg(long)]
    pub(crate) data: Option<String>,
    /// First image: an index into --data or a PNG/JPEG path.
    #[arg(long)]
    pub(crate) a: String,
    /// Second image: an index into --data or a PNG/JPEG path.
    #[arg(long)]
    pub(crate) b: String,
    /// Interpolation points, ends included.
    #[arg(long, default_value_t = 9)]
    pub(crate) frames: usize,
    /// DDIM steps of the ODE.
    #[arg(long, default_value_t = 100)]
    pub(crate) steps: usize,
    /// Strip of decoded images (PNG).
    #[arg(long, default_value = "interpolation.png")]
    pub(crate) out: PathBuf,
    /// Also an animated GIF going there and back.
    #[arg(long)]
    pub(crate) gif: Option<PathBuf>,
}

/// One image for the model: an index into `set` or an image file, as model-space values.
pub(crate) fn pick_image(which: &str, set: &data::ImageSet, cfg: &UNetConfig) -> Result<Vec<f32>> {
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
        data::folder::load_one(std::path::Path::new(which), cfg.image_size, cfg.in_channels)?
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

pub(crate) fn cmd_encode(a: EncodeArgs, device: &Device) -> Result<()> {
    let (config, model, step) = Run::open(&a.run)?.model(device, true)?;
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
    let ts = timestep_subsequence(&diffusion.schedule, a.steps, Spacing::Linear);
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

pub(crate) fn cmd_interpolate(a: InterpolateArgs, device: &Device) -> Result<()> {
    let (config, model, step) = Run::open(&a.run)?.model(device, true)?;
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
    let ts = timestep_subsequence(&diffusion.schedule, a.steps, Spacing::Linear);
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
        vec![
            x0.clone().narrow(0, 0, 1),
            frames.clone(),
            x0.narrow(0, 1, 1),
        ],
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
