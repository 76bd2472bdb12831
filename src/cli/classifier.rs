//! `ddpm classifier train|eval`: the noisy-image classifier of classifier guidance.

use super::prelude::*;

#[derive(Subcommand)]
pub(crate) enum ClassifierCommand {
    /// Train p_φ(y | x_t, t) on noised images (t ~ U), or on clean ones with --clean.
    Train(ClassifierTrainArgs),
    /// Accuracy on a labelled split, by quarter of the timestep range.
    Eval(ClassifierEvalArgs),
}

#[derive(Args)]
pub(crate) struct ClassifierTrainArgs {
    /// Run folder to create.
    #[arg(long, required_unless_present = "resume")]
    pub(crate) run: Option<PathBuf>,
    /// Continue this classifier run from its latest checkpoint.
    #[arg(long, conflicts_with = "run")]
    pub(crate) resume: Option<PathBuf>,
    /// Labelled training data (see `ddpm train --help`).
    #[arg(long, default_value_t = TrainConfig::classifier().data)]
    pub(crate) data: String,
    /// Encoder preset (the U-Net presets' down half).
    #[arg(long, default_value = "small28")]
    pub(crate) preset: String,
    /// Number of classes (default: from the data).
    #[arg(long)]
    pub(crate) classes: Option<usize>,
    /// Train on clean images only (the classifier that judges guided samples).
    #[arg(long)]
    pub(crate) clean: bool,
    #[command(flatten)]
    pub(crate) diffusion: DiffusionArgs,
    /// Images per step.
    #[arg(long, default_value_t = TrainConfig::classifier().batch_size)]
    pub(crate) batch_size: usize,
    /// Stop after this many steps in total.
    #[arg(long)]
    pub(crate) steps: Option<u64>,
    /// Stop after this many minutes of training in total.
    #[arg(long)]
    pub(crate) minutes: Option<f64>,
    /// Adam learning rate (Dhariwal & Nichol 2021 train their classifiers at 3e-4).
    #[arg(long, default_value_t = TrainConfig::classifier().optim.lr)]
    pub(crate) lr: f64,
    /// Linear learning-rate warm-up steps.
    #[arg(long, default_value_t = TrainConfig::classifier().optim.warmup_steps)]
    pub(crate) warmup: u64,
    /// EMA decay of the weights used for guidance and judging.
    #[arg(long, default_value_t = TrainConfig::classifier().optim.ema_decay)]
    pub(crate) ema_decay: f64,
    /// Random horizontal flips.
    #[arg(long)]
    pub(crate) hflip: bool,
    /// Seed.
    #[arg(long, default_value_t = TrainConfig::classifier().seed)]
    pub(crate) seed: u64,
    /// Checkpoint every N steps (also every 10 minutes and at the end).
    #[arg(long, default_value_t = TrainConfig::classifier().checkpoint_every)]
    pub(crate) checkpoint_every: u64,
    /// No progress bar.
    #[arg(long)]
    pub(crate) quiet: bool,
}

#[derive(Args)]
pub(crate) struct ClassifierEvalArgs {
    /// Classifier run folder.
    #[arg(long)]
    pub(crate) run: PathBuf,
    /// Labelled data (default: the run's).
    #[arg(long)]
    pub(crate) data: Option<String>,
    /// Split.
    #[arg(long, value_enum, default_value_t = Split::Test)]
    pub(crate) split: Split,
    /// Images (evenly spaced).
    #[arg(long, default_value_t = 2000)]
    pub(crate) n: usize,
}

pub(crate) fn cmd_classifier_train(a: ClassifierTrainArgs, device: &Device) -> Result<()> {
    use ddpm::train::classifier::{ClassifierRunConfig, ClassifierTrainer};
    let mut trainer = if let Some(run) = &a.resume {
        ClassifierTrainer::resume(run, device, |tc| tc.set_budget(a.steps, a.minutes))?
    } else {
        if a.steps.is_none() && a.minutes.is_none() {
            bail!("give a budget: --steps N and/or --minutes M");
        }
        let mut backbone = UNetConfig::preset(&a.preset)
            .with_context(|| format!("unknown preset `{}`", a.preset))?;
        let probe = data::open(&a.data, Split::Train, Some(backbone.image_size))?;
        backbone.in_channels = probe.channels;
        let classes = a.classes.unwrap_or_else(|| probe.num_classes());
        if classes < 2 {
            bail!("data `{}` has no labels or a single class", a.data);
        }
        let config = ClassifierRunConfig {
            kind: "classifier".into(),
            model: ddpm::model::classifier::ClassifierConfig {
                backbone,
                num_classes: classes,
            },
            diffusion: a.diffusion.config()?,
            train: TrainConfig {
                data: a.data.clone(),
                batch_size: a.batch_size,
                max_steps: a.steps,
                max_minutes: a.minutes,
                hflip: a.hflip,
                seed: a.seed,
                optim: ddpm::train::OptimConfig {
                    lr: a.lr,
                    warmup_steps: a.warmup,
                    ema_decay: a.ema_decay,
                    ..TrainConfig::classifier().optim
                },
                checkpoint_every: a.checkpoint_every,
                ..TrainConfig::classifier()
            },
            clean: a.clean,
        };
        ClassifierTrainer::create(a.run.as_ref().unwrap(), config, device)?
    };
    trainer.progress = !a.quiet;
    super::train::report_skipped(&trainer.skipped, trainer.state.step);
    let n_params: usize = trainer.state.params.iter().map(|p| p.len()).sum();
    println!(
        "classifier run {}: {n_params} parameters, {} classes, {} inputs, from step {}",
        trainer.run.display(),
        trainer.config().model.num_classes,
        if trainer.config().clean {
            "clean"
        } else {
            "noisy (t ~ U)"
        },
        trainer.state.step
    );
    let s = trainer.train()?;
    println!(
        "done: step {}; checkpoint {}; per-step accuracy by t in {}",
        s.step,
        s.checkpoint.display(),
        trainer.run.join("log.csv").display()
    );
    Ok(())
}

pub(crate) fn cmd_classifier_eval(a: ClassifierEvalArgs, device: &Device) -> Result<()> {
    use ddpm::train::classifier::evaluate;
    let (config, model) = Run::open(&a.run)?.classifier(device, true)?;
    let spec = a.data.clone().unwrap_or_else(|| config.train.data.clone());
    let set = data::open(&spec, a.split, Some(config.model.backbone.image_size))?;
    if set.labels.is_none() {
        bail!("data `{spec}` has no labels");
    }
    let acc = evaluate(&config, &model, &set, a.n, device, 0);
    println!(
        "accuracy on {} {:?} images of `{spec}`: {:.4}",
        a.n.min(set.len()),
        a.split,
        acc.overall()
    );
    if !config.clean {
        let t_max = config.diffusion.num_timesteps;
        for q in 0..4 {
            println!(
                "  t in [{}, {}): {:.4} ({} images)",
                q * t_max / 4 + 1,
                (q + 1) * t_max / 4 + 1,
                acc.quarter(q),
                acc.quarters[q].1
            );
        }
    }
    Ok(())
}
