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
    name.parse::<ddpm::device::DeviceSpec>()?.open()
}

/// Classifier guidance for a whole sampling job: the gradient, the class of sample i, and s.
#[derive(Clone, Copy)]
pub(crate) struct Guide<'a> {
    pub(crate) classifier: &'a dyn ddpm::sampling::ClassifierGrad,
    pub(crate) label: &'a dyn Fn(usize) -> usize,
    pub(crate) scale: f64,
}

impl<'a> Guide<'a> {
    /// The guidance of the samples with these (global) indices.
    pub(crate) fn for_samples(
        &self,
        range: std::ops::Range<usize>,
    ) -> ddpm::sampling::Guidance<'a> {
        ddpm::sampling::Guidance {
            classifier: self.classifier,
            labels: range.map(self.label).collect(),
            scale: self.scale,
        }
    }
}

/// The sampler and what steers it, shared by `ddpm sample` and `ddpm eval fid`.
#[derive(Args)]
pub(crate) struct SamplingArgs {
    /// `ddpm` (ancestral, Algorithm 2) or `ddim` [default: ddpm for `sample`, ddim for `eval fid`].
    #[arg(long)]
    pub(crate) sampler: Option<String>,
    /// DDIM: number of steps.
    #[arg(long, default_value_t = 50)]
    pub(crate) steps: usize,
    /// DDIM: η (0 deterministic, 1 ≈ DDPM).
    #[arg(long, default_value_t = 0.0)]
    pub(crate) eta: f64,
    /// DDIM: timestep spacing.
    #[arg(long, value_enum, default_value_t = Spacing::Quadratic)]
    pub(crate) spacing: Spacing,
    /// σ_t² for ancestral sampling (default: the run's).
    #[arg(long, value_enum)]
    pub(crate) variance: Option<VarianceType>,
    /// Clip x̂₀ to [−1, 1] at every step (`--clip false` to turn off).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub(crate) clip: bool,
    /// Images per network call.
    #[arg(long, default_value_t = 256)]
    pub(crate) batch_size: usize,
    /// Langevin corrector steps after each sampler step (predictor–corrector; 0 = off).
    #[arg(long, default_value_t = 0)]
    pub(crate) corrector_steps: usize,
    /// Target signal-to-noise ratio of the corrector's step size.
    #[arg(long, default_value_t = 0.16)]
    pub(crate) snr: f64,
    /// Noisy classifier run for classifier guidance (`ddpm classifier train`).
    #[arg(long)]
    pub(crate) classifier: Option<PathBuf>,
    /// Class to steer every sample towards (default with --classifier: sample i gets class
    /// i mod K, so the samples cover every class equally).
    #[arg(long)]
    pub(crate) class: Option<usize>,
    /// Guidance scale s (0 = unguided).
    #[arg(long, default_value_t = 1.0)]
    pub(crate) guidance_scale: f64,
}

/// What [`SamplingArgs::plan`] builds.
pub(crate) struct SamplingPlan {
    /// `ddpm` or `ddim`.
    pub(crate) name: String,
    pub(crate) diffusion: GaussianDiffusion,
    pub(crate) sampler: Box<dyn Sampler>,
    pub(crate) corrector: Option<ddpm::sampling::Langevin>,
    /// The guidance classifier and its number of classes K.
    pub(crate) classifier: Option<(ddpm::model::classifier::ClassifierGuide, usize)>,
}

impl SamplingArgs {
    /// The diffusion (the run's, with `--variance` applied), the sampler, the corrector and the
    /// guidance classifier.
    pub(crate) fn plan(
        &self,
        run_diffusion: &DiffusionConfig,
        default_sampler: &str,
        device: &Device,
    ) -> Result<SamplingPlan> {
        let mut dcfg = run_diffusion.clone();
        if let Some(v) = self.variance {
            dcfg.variance = v;
        }
        let diffusion = GaussianDiffusion::new(dcfg);
        let name = self.sampler.clone().unwrap_or(default_sampler.to_string());
        let sampler = build_sampler(
            &name,
            &diffusion,
            self.steps,
            self.eta,
            self.spacing,
            self.clip,
        )?;
        let classifier = match &self.classifier {
            Some(dir) => {
                let (ccfg, clf) = ddpm::train::classifier::load_classifier(dir, device, true)?;
                let k = ccfg.model.num_classes;
                if let Some(c) = self.class
                    && c >= k
                {
                    bail!(
                        "--class {c}: {} has {k} classes (0..{})",
                        dir.display(),
                        k - 1
                    );
                }
                Some((
                    ddpm::model::classifier::ClassifierGuide::new(clf, device),
                    k,
                ))
            }
            None => {
                if self.class.is_some() {
                    bail!("--class needs --classifier (a run of `ddpm classifier train`)");
                }
                None
            }
        };
        Ok(SamplingPlan {
            name,
            diffusion,
            sampler,
            corrector: (self.corrector_steps > 0).then_some(ddpm::sampling::Langevin {
                steps: self.corrector_steps,
                snr: self.snr,
            }),
            classifier,
        })
    }

    /// The class requested for sample i: `--class`, or i mod K.
    pub(crate) fn label(&self, i: usize, num_classes: usize) -> usize {
        self.class.unwrap_or(i % num_classes.max(1))
    }

    /// e.g. "ddim (50 steps, 1 corrector step(s) at snr 0.16, guided to class i mod 10 with s = 3)".
    pub(crate) fn describe(&self, plan: &SamplingPlan) -> String {
        let mut parts = vec![format!("{} steps", plan.sampler.timesteps().len())];
        if let Some(c) = &plan.corrector {
            parts.push(format!("{} corrector step(s) at snr {}", c.steps, c.snr));
        }
        if let Some((_, k)) = &plan.classifier {
            let target = match self.class {
                Some(c) => format!("class {c}"),
                None => format!("class i mod {k}"),
            };
            parts.push(format!(
                "guided to {target} with s = {}",
                self.guidance_scale
            ));
        }
        format!("{} ({})", plan.name, parts.join(", "))
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
    guide: Option<Guide<'_>>,
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
        let guidance = guide.map(|g| g.for_samples(done..done + b));
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
