//! Shared pieces of the commands: diffusion flags, device choice, batched sampling, metrics files.

use super::prelude::*;

#[derive(Args, Clone)]
pub(crate) struct DiffusionArgs {
    /// Number of diffusion steps T.
    #[arg(long, default_value_t = 1000)]
    pub(crate) timesteps: usize,
    /// β schedule: `linear` (Ho et al., 1e-4 → 0.02) or `cosine` (Nichol & Dhariwal).
    #[arg(long, default_value = "linear")]
    pub(crate) schedule: String,
    /// Reverse-process variance σ_t²: `large` (β_t) or `small` (β̃_t).
    #[arg(long, value_enum, default_value_t = VarianceType::Large)]
    pub(crate) variance: VarianceType,
    /// Training loss: `simple` (L_simple) or `vlb` (the true bound's weighting).
    #[arg(long, value_enum, default_value_t = LossType::Simple)]
    pub(crate) loss: LossType,
}

impl DiffusionArgs {
    pub(crate) fn config(&self) -> Result<DiffusionConfig> {
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

pub(crate) fn pick_device(name: &str) -> Result<Device> {
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

/// Samples `n` images in batches, optionally recording chain frames of the first batch.
#[allow(clippy::too_many_arguments)]
pub(crate) fn sample_images(
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
                if first
                    && (k % every == 0 || k + 1 == steps)
                    && let Some(frames) = chain.as_deref_mut()
                {
                    let (px, dims) = ddpm::image::tensor_to_u8(out.prev.clone());
                    let ncol = (dims[0] as f64).sqrt().ceil() as usize;
                    let g = ddpm::image::grid(&px, dims, ncol);
                    frames.push(ddpm::image::upscale(&g, ddpm::image::auto_zoom(&g)));
                }
            },
        );
        outs.push(x);
        done += b;
    }
    pb.finish_and_clear();
    Tensor::cat(outs, 0)
}

pub(crate) fn build_sampler(
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

/// Merges `value` under `key` into RUN/metrics.json.
pub(crate) fn update_metrics(
    run: &std::path::Path,
    key: &str,
    value: serde_json::Value,
) -> Result<()> {
    let path = run.join("metrics.json");
    let mut all: serde_json::Value = std::fs::read_to_string(&path)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_else(|| serde_json::json!({}));
    all[key] = value;
    ddpm::tensorfile::write_atomic(&path, serde_json::to_string_pretty(&all)?.as_bytes())
}
