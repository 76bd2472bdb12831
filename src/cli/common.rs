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
    /// Reverse-process variance σ_t²: `large` (β_t), `small` (β̃_t) or `learned` (Nichol &
    /// Dhariwal 2021: the network outputs 2C channels; trained with L_hybrid).
    #[arg(long, value_enum, default_value_t = VarianceType::Large)]
    pub(crate) variance: VarianceType,
    /// Loss weighting: `simple` (L_simple, Ho et al. eq. 14), `min-snr` (Hang et al. 2023,
    /// min(SNR, γ)) or `vlb` (the true bound's weighting, Ho et al. eq. 12) [default: `train`'s
    /// recipe; `simple` elsewhere].
    #[arg(long, value_enum)]
    pub(crate) loss: Option<LossType>,
    /// What the network predicts: `eps` (ε, Ho et al.), `x0`, or `v` (Salimans & Ho 2022)
    /// [default: `train`'s recipe; `eps` elsewhere].
    #[arg(long, value_enum)]
    pub(crate) prediction: Option<Prediction>,
    /// γ of `--loss min-snr`.
    #[arg(long, default_value_t = 5.0)]
    pub(crate) min_snr_gamma: f64,
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
            loss: self.loss.unwrap_or_default(),
            prediction: self.prediction.unwrap_or_default(),
            min_snr_gamma: self.min_snr_gamma,
            ..Default::default()
        })
    }
}

pub(crate) fn pick_device(name: &str) -> Result<Device> {
    name.parse::<ddpm::device::DeviceSpec>()?.open()
}

/// The sampler and what steers it, shared by `ddpm sample` and `ddpm eval fid`.
#[derive(Args)]
pub(crate) struct SamplingArgs {
    /// `ddpm` (ancestral, Ho et al. Algorithm 2), `ddim` (Song et al. 2021), `dpm-solver++`
    /// (2M, Lu et al. 2022) or `heun` (Karras et al. 2022) [default: ddpm for `sample`, ddim for
    /// `eval fid`].
    #[arg(long)]
    pub(crate) sampler: Option<String>,
    /// Steps of ddim, dpm-solver++ and heun (heun makes 2·steps − 1 network calls).
    #[arg(long, default_value_t = 50)]
    pub(crate) steps: usize,
    /// DDIM: η (0 deterministic, 1 ≈ DDPM). With a learned variance the step's noise is
    /// σ² = η²·Σ_θ of the respaced step (docs/math.md §12).
    #[arg(long, default_value_t = 0.0)]
    pub(crate) eta: f64,
    /// Timestep spacing: `quadratic` (the DDIM paper's CIFAR-10 choice), `linear`, or `karras`
    /// (Karras et al. 2022, ρ = 7) [default: quadratic].
    #[arg(long, value_enum)]
    pub(crate) spacing: Option<Spacing>,
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
    /// Class of every sample, for classifier guidance or a class-conditional model (default:
    /// sample i gets class i mod K, so the samples cover every class equally).
    #[arg(long)]
    pub(crate) class: Option<usize>,
    /// Classifier guidance scale s (0 = unguided).
    #[arg(long, default_value_t = 1.0)]
    pub(crate) guidance_scale: f64,
    /// Classifier-free guidance scale w of a class-conditional model (Ho & Salimans 2022):
    /// ε̃ = ε(x, ∅) + w·(ε(x, y) − ε(x, ∅)); 0 samples the unconditional model, 1 the
    /// conditional one; omitted: the conditional model alone (one network call per step).
    #[arg(long)]
    pub(crate) cfg_scale: Option<f64>,
}

/// What [`SamplingArgs::plan`] builds.
pub(crate) struct SamplingPlan {
    pub(crate) config: SamplerConfig,
    pub(crate) diffusion: GaussianDiffusion,
    pub(crate) sampler: Box<dyn Sampler>,
    pub(crate) corrector: Option<ddpm::sampling::Langevin>,
    /// The guidance classifier and its number of classes K.
    pub(crate) classifier: Option<(ddpm::model::classifier::ClassifierGuide, usize)>,
    /// Classes of a class-conditional model (K; its null label is K).
    pub(crate) model_classes: Option<usize>,
}

impl SamplingArgs {
    /// The diffusion (the run's, with `--variance` applied), the sampler, the corrector and the
    /// guidance classifier, for a model with `model_classes` classes (class-conditional) or none.
    pub(crate) fn plan(
        &self,
        run_diffusion: &DiffusionConfig,
        model_classes: Option<usize>,
        default_sampler: &str,
        device: &Device,
    ) -> Result<SamplingPlan> {
        let mut dcfg = run_diffusion.clone();
        if let Some(v) = self.variance {
            if (v == VarianceType::Learned) != (dcfg.variance == VarianceType::Learned) {
                bail!(
                    "--variance {v:?}: the run's model was trained with {:?} variances; a learned variance can be neither added nor removed at sampling time",
                    dcfg.variance
                );
            }
            dcfg.variance = v;
        }
        let diffusion = GaussianDiffusion::new(dcfg);
        let name = self.sampler.as_deref().unwrap_or(default_sampler);
        let config = SamplerConfig::from_name(name, self.steps, self.eta, self.spacing, self.clip)?;
        let sampler = config.build(&diffusion);
        let classifier = match &self.classifier {
            Some(dir) => {
                let (ccfg, clf) = ddpm::train::Run::open(dir)?.classifier(device, true)?;
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
            None => None,
        };
        match model_classes {
            Some(k) => {
                if let Some(c) = self.class
                    && c >= k
                {
                    bail!("--class {c}: the model has {k} classes (0..{})", k - 1);
                }
            }
            None => {
                if self.cfg_scale.is_some() {
                    bail!(
                        "--cfg-scale needs a class-conditional model (`ddpm train --class-cond`); for an unconditional model use --classifier and --guidance-scale"
                    );
                }
                if self.class.is_some() && classifier.is_none() {
                    bail!(
                        "--class needs a class-conditional model or --classifier (a run of `ddpm classifier train`)"
                    );
                }
            }
        }
        Ok(SamplingPlan {
            config,
            diffusion,
            sampler,
            corrector: (self.corrector_steps > 0).then_some(ddpm::sampling::Langevin {
                steps: self.corrector_steps,
                snr: self.snr,
            }),
            classifier,
            model_classes,
        })
    }

    /// The class requested for sample i: `--class`, or i mod K.
    pub(crate) fn label(&self, i: usize, num_classes: usize) -> usize {
        self.class.unwrap_or(i % num_classes.max(1))
    }

    /// The number of classes that labels cycle through (model's or classifier's).
    pub(crate) fn num_classes(&self, plan: &SamplingPlan) -> Option<usize> {
        plan.model_classes.or(plan.classifier.as_ref().map(|c| c.1))
    }

    /// e.g. "ddim (50 quadratic steps, η = 0, 1 corrector step(s) at snr 0.16, guided to class i mod 10 with s = 3)".
    pub(crate) fn describe(&self, plan: &SamplingPlan) -> String {
        let mut parts = vec![plan.config.describe(&plan.diffusion)];
        if let Some(c) = &plan.corrector {
            parts.push(format!("{} corrector step(s) at snr {}", c.steps, c.snr));
        }
        let target = |k: usize| match self.class {
            Some(c) => format!("class {c}"),
            None => format!("class i mod {k}"),
        };
        if let Some(k) = plan.model_classes {
            match self.cfg_scale {
                Some(w) => parts.push(format!(
                    "{} with classifier-free guidance w = {w}",
                    target(k)
                )),
                None => parts.push(format!("conditioned on {}", target(k))),
            }
        }
        if let Some((_, k)) = &plan.classifier {
            parts.push(format!(
                "guided to {} with s = {}",
                target(*k),
                self.guidance_scale
            ));
        }
        parts.join(", ")
    }

    /// The library's batch options for this plan; `label` gives the class of sample i.
    pub(crate) fn batch_options<'a>(
        &self,
        plan: &'a SamplingPlan,
        seed: u64,
        label: &'a dyn Fn(usize) -> usize,
    ) -> BatchOptions<'a> {
        BatchOptions {
            batch_size: self.batch_size,
            seed,
            corrector: plan.corrector,
            label: self.num_classes(plan).map(|_| label),
            classifier: plan.classifier.as_ref().map(|(g, _)| {
                (
                    g as &dyn ddpm::sampling::ClassifierGrad,
                    self.guidance_scale,
                )
            }),
            conditional: plan.model_classes.is_some(),
            cfg: match (plan.model_classes, self.cfg_scale) {
                (Some(k), Some(w)) => Some((w, k)),
                _ => None,
            },
            start: None,
        }
    }
}

/// A progress bar over `len` sampler steps (hidden when `show` is false).
pub(crate) fn step_progress(len: usize, show: bool) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new(len as u64);
    if show {
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} sample [{elapsed_precise} < {eta_precise}] {bar:30} {pos}/{len} steps",
            )
            .unwrap(),
        );
    } else {
        pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    pb
}

/// Samples `n` images through [`ddpm::sampling::sample_batched`] with a progress bar,
/// recording ~40 chain frames of the first batch when asked.
#[allow(clippy::too_many_arguments)]
pub(crate) fn sample_images(
    diffusion: &GaussianDiffusion,
    sampler: &dyn Sampler,
    model: &dyn Denoiser,
    shape: [usize; 3],
    n: usize,
    device: &Device,
    opts: &BatchOptions<'_>,
    mut chain: Option<&mut Vec<image::RgbImage>>,
    show_progress: bool,
) -> Tensor<4> {
    let steps = sampler.timesteps().len();
    let pb = step_progress(steps * n.div_ceil(opts.batch_size.max(1)), show_progress);
    let every = (steps / 40).max(1);
    let x = ddpm::sampling::sample_batched(
        diffusion,
        sampler,
        model,
        shape,
        n,
        device,
        opts,
        |first, k, out| {
            pb.inc(1);
            if first == 0
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
    pb.finish_and_clear();
    x
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
