//! `ddpm train`: Algorithm 1 into a run folder, or `--resume` one.

use super::prelude::*;
use ddpm::train::resample::TimestepSampling;
use ddpm::train::{LrSchedule, Recipe};

#[derive(Args)]
pub(crate) struct TrainArgs {
    /// Run folder to create (config.json, checkpoints/, samples/, log.csv).
    #[arg(long, required_unless_present = "resume")]
    pub(crate) run: Option<PathBuf>,
    /// Continue the run in this folder from its latest checkpoint (exactly where it stopped).
    #[arg(long, conflicts_with = "run")]
    pub(crate) resume: Option<PathBuf>,
    /// Model preset: `small28` (1.6M params, 28×28 grey), `cifar10` (the paper's 35.7M), `tiny`.
    #[arg(long, default_value = "small28")]
    pub(crate) preset: String,
    /// Training data: `mnist5k` (built in), `fashion-mnist` (Debian package), a folder of
    /// IDX files, CIFAR-10 batches or PNG/JPEG images (sub-folder = class).
    #[arg(long, default_value_t = TrainConfig::default().data)]
    pub(crate) data: String,
    /// Image side; images are resized to it (default: the preset's).
    #[arg(long)]
    pub(crate) image_size: Option<usize>,
    /// Image channels (default: the preset's; 1 grey, 3 RGB).
    #[arg(long)]
    pub(crate) channels: Option<usize>,
    /// Base channel count `ch` (overrides the preset).
    #[arg(long)]
    pub(crate) base_channels: Option<usize>,
    /// Channel multipliers per level, e.g. `1,2,2` (overrides the preset).
    #[arg(long, value_delimiter = ',')]
    pub(crate) channel_mult: Option<Vec<usize>>,
    /// Residual blocks per level (overrides the preset).
    #[arg(long)]
    pub(crate) res_blocks: Option<usize>,
    /// Resolutions with self-attention, e.g. `16` or `14,7` (overrides the preset).
    #[arg(long, value_delimiter = ',')]
    pub(crate) attention: Option<Vec<usize>>,
    /// Dropout in residual blocks (overrides the preset).
    #[arg(long)]
    pub(crate) dropout: Option<f64>,
    /// GroupNorm groups (overrides the preset).
    #[arg(long)]
    pub(crate) groups: Option<usize>,
    /// Defaults for the settings not given: `short` (v-prediction, L_simple, lr 1e-3 after
    /// 100 warm-up steps, EMA 0.995, batch 32; the best of the recipes compared at equal wall
    /// time in the README, for runs of minutes to hours) or `paper` (Ho et al. 2020: ε, L_simple,
    /// lr 2e-4 after 5000 warm-up steps, EMA 0.9999, batch 128). Explicit flags win.
    #[arg(long, value_enum, default_value_t = Recipe::default())]
    pub(crate) recipe: Recipe,
    #[command(flatten)]
    pub(crate) diffusion: DiffusionArgs,
    /// Images per step [default: the recipe's].
    #[arg(long)]
    pub(crate) batch_size: Option<usize>,
    /// Stop after this many steps in total.
    #[arg(long)]
    pub(crate) steps: Option<u64>,
    /// Stop after this many minutes of training in total (wall clock).
    #[arg(long)]
    pub(crate) minutes: Option<f64>,
    /// Adam learning rate (Ho et al. 2020: 2e-4) [default: the recipe's].
    #[arg(long)]
    pub(crate) lr: Option<f64>,
    /// Linear learning-rate warm-up steps. Ho et al. 2020 use 5000 over 800k steps; a few
    /// hundred suit runs of a few thousand steps [default: the recipe's].
    #[arg(long)]
    pub(crate) warmup: Option<u64>,
    /// Learning rate after the warm-up: `constant` (Ho et al. 2020), or `cosine` / `linear`
    /// decay to zero at the last of `--steps` (Loshchilov & Hutter 2017). A decay lets the
    /// final weights settle instead of jittering at the peak rate; on the README's Fashion-MNIST
    /// hour cosine lowered the training loss 4% but not FID ("Recipes for short runs"). A
    /// resumed run keeps the end it was started with.
    #[arg(long, value_enum, default_value_t = LrSchedule::Constant)]
    pub(crate) lr_schedule: LrSchedule,
    /// Global gradient-norm clip, 0 disables (Ho et al. 2020: 1).
    #[arg(long, default_value_t = TrainConfig::default().optim.grad_clip)]
    pub(crate) grad_clip: f64,
    /// EMA decay of the weights used for sampling. The paper's 0.9999 averages over ~10k
    /// steps: for runs under ~50k steps use 0.999 (or 0.995 for a few thousand steps)
    /// [default: the recipe's].
    #[arg(long)]
    pub(crate) ema_decay: Option<f64>,
    /// Random horizontal flips (right for CIFAR-10 and photos, wrong for digits and text).
    #[arg(long)]
    pub(crate) hflip: bool,
    /// Seed for initialisation, batches, t, ε and previews.
    #[arg(long, default_value_t = TrainConfig::default().seed)]
    pub(crate) seed: u64,
    /// Preview grid (EMA weights, 50 DDIM steps) every N steps.
    #[arg(long, default_value_t = TrainConfig::default().sample_every)]
    pub(crate) sample_every: u64,
    /// Checkpoint every N steps (also every 10 minutes and at the end); loss.png is redrawn
    /// from log.csv at every checkpoint.
    #[arg(long, default_value_t = TrainConfig::default().checkpoint_every)]
    pub(crate) checkpoint_every: u64,
    /// Images in each preview grid (0: no previews).
    #[arg(long, default_value_t = TrainConfig::default().preview_count)]
    pub(crate) preview_count: usize,
    /// No progress bar.
    #[arg(long)]
    pub(crate) quiet: bool,
    /// Class-conditional model: a learned class embedding added to the time embedding
    /// (diffusers' `num_class_embeds`), for `ddpm sample --class K --cfg-scale W`. Needs
    /// labelled data (IDX labels, CIFAR-10, or class sub-folders).
    #[arg(long)]
    pub(crate) class_cond: bool,
    /// Share of labels dropped to the null label ∅ each step (classifier-free guidance).
    #[arg(long, default_value_t = TrainConfig::default().label_dropout)]
    pub(crate) label_dropout: f64,
    /// How t is drawn: `uniform` (Ho et al. Algorithm 1) or `importance` (p_t ∝ √E[L_t²] over
    /// the last 10 losses at each t, each loss weighted by 1/(T·p_t); Nichol & Dhariwal 2021,
    /// eq. 17), which lowers the variance of `--loss vlb` (with `--variance learned`: their
    /// L_vlb objective). Uniform until every t has 10 losses.
    #[arg(long, value_enum, default_value_t = TrainConfig::default().t_sampling)]
    pub(crate) t_sampling: TimestepSampling,
}

pub(crate) fn model_config(a: &TrainArgs) -> Result<UNetConfig> {
    let mut m = UNetConfig::preset(&a.preset)
        .with_context(|| format!("unknown preset `{}` (small28, cifar10, tiny)", a.preset))?;
    if let Some(s) = a.image_size {
        if s != m.image_size && a.attention.is_none() {
            // Keep attention at the same level of the network.
            let lvl = m.level_sizes();
            let levels: Vec<usize> = m
                .attention_resolutions
                .iter()
                .filter_map(|r| lvl.iter().position(|x| x == r))
                .collect();
            m.image_size = s;
            let lvl = m.level_sizes();
            m.attention_resolutions = levels.iter().map(|&l| lvl[l]).collect();
        }
        m.image_size = s;
    }
    if let Some(c) = a.channels {
        m.in_channels = c;
    }
    if let Some(c) = a.base_channels {
        m.base_channels = c;
    }
    if let Some(c) = &a.channel_mult {
        m.channel_mult = c.clone();
    }
    if let Some(r) = a.res_blocks {
        m.num_res_blocks = r;
    }
    if let Some(r) = &a.attention {
        m.attention_resolutions = r.clone();
    }
    if let Some(d) = a.dropout {
        m.dropout = d;
    }
    if let Some(g) = a.groups {
        m.norm_groups = g;
    }
    m.validate().map_err(|e| anyhow::anyhow!("model: {e}"))?;
    Ok(m)
}

pub(crate) fn cmd_train(a: TrainArgs, device: &Device) -> Result<()> {
    let mut trainer = if let Some(run) = &a.resume {
        Trainer::resume(run, device, |tc| tc.set_budget(a.steps, a.minutes))?
    } else {
        let run = a.run.clone().unwrap();
        if a.steps.is_none() && a.minutes.is_none() {
            bail!("give a budget: --steps N and/or --minutes M");
        }
        let mut model = model_config(&a)?;
        // Match the data's channels when the user did not say otherwise.
        let probe = (a.channels.is_none() || a.class_cond)
            .then(|| data::open(&a.data, Split::Train, Some(model.image_size)))
            .transpose()?;
        if let Some(p) = &probe
            && a.channels.is_none()
        {
            model.in_channels = p.channels;
        }
        if a.class_cond {
            let k = probe.as_ref().map_or(0, |p| p.num_classes());
            if k == 0 {
                bail!("--class-cond: data `{}` has no labels", a.data);
            }
            // K classes and the null label ∅.
            model.num_class_embeds = Some(k + 1);
        }
        let r = a.recipe.defaults();
        let mut diffusion = a.diffusion.config()?;
        diffusion.prediction = a.diffusion.prediction.unwrap_or(r.prediction);
        diffusion.loss = a.diffusion.loss.unwrap_or(r.loss);
        if diffusion.variance == VarianceType::Learned {
            model.out_channels = Some(2 * model.in_channels);
        }
        let config = RunConfig {
            model,
            diffusion,
            train: TrainConfig {
                data: a.data.clone(),
                batch_size: a.batch_size.unwrap_or(r.batch_size),
                max_steps: a.steps,
                max_minutes: a.minutes,
                hflip: a.hflip,
                seed: a.seed,
                optim: ddpm::train::OptimConfig {
                    lr: a.lr.unwrap_or(r.lr),
                    warmup_steps: a.warmup.unwrap_or(r.warmup_steps),
                    grad_clip: a.grad_clip,
                    ema_decay: a.ema_decay.unwrap_or(r.ema_decay),
                    lr_schedule: a.lr_schedule,
                    decay_steps: a.steps.filter(|_| a.lr_schedule != LrSchedule::Constant),
                    ..Default::default()
                },
                sample_every: a.sample_every,
                checkpoint_every: a.checkpoint_every,
                preview_count: a.preview_count,
                label_dropout: a.label_dropout,
                t_sampling: a.t_sampling,
                // The global --precision (main.rs runs every command in its scope).
                precision: ddpm::kernels::precision::current(),
                ..Default::default()
            },
        };
        Trainer::create(&run, config, device)?
    };
    let (given, recorded) = (
        ddpm::kernels::precision::current(),
        trainer.config().train.precision,
    );
    if given != recorded && given != ddpm::kernels::Precision::F32 {
        println!("note: this run was started in {recorded} and continues in {recorded}");
    }
    let optim = &trainer.config().train.optim;
    if let (Some(end), Some(target)) = (optim.decay_steps, trainer.config().train.max_steps)
        && optim.lr_schedule != LrSchedule::Constant
        && target > end
    {
        println!(
            "note: this run's {} learning rate reaches zero at step {end}; Adam does not move the weights after it",
            optim.lr_schedule
        );
    }
    trainer.progress = !a.quiet;
    report_skipped(&trainer.skipped, trainer.state.step);
    let n_params: usize = trainer.state.params.iter().map(|p| p.len()).sum();
    println!(
        "run {}: {} parameters, data {} ({} images {}×{}×{}), from step {}",
        trainer.run.display(),
        n_params,
        trainer.config().train.data,
        trainer.data.len(),
        trainer.data.channels,
        trainer.data.height,
        trainer.data.width,
        trainer.state.step
    );
    let s = trainer.train()?;
    println!(
        "done: step {}, loss {:.4}, {:.1} min of training\ncheckpoint: {}",
        s.step,
        s.loss,
        s.wall_seconds / 60.0,
        s.checkpoint.display()
    );
    if let Some(p) = s.preview {
        println!("preview:    {}", p.display());
    }
    Ok(())
}

/// Tells the user which damaged checkpoints `--resume` passed over, why, and where it resumes.
pub(crate) fn report_skipped(skipped: &[ddpm::train::session::SkippedCheckpoint], step: u64) {
    for s in skipped {
        eprintln!(
            "warning: checkpoint {} is damaged and was skipped ({}); moved to {}",
            s.dir.display(),
            s.problem,
            s.moved_to.display()
        );
    }
    if !skipped.is_empty() {
        eprintln!("warning: resuming from the newest intact checkpoint, step {step}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::classifier::ClassifierTrainArgs;
    use clap::Parser;

    #[derive(Parser)]
    struct Train {
        #[command(flatten)]
        a: TrainArgs,
    }

    #[derive(Parser)]
    struct Classifier {
        #[command(flatten)]
        a: ClassifierTrainArgs,
    }

    #[test]
    fn cli_defaults_are_the_library_defaults() {
        let a = Train::parse_from(["train", "--run", "r"]).a;
        let d = TrainConfig::default();
        assert_eq!(
            (&a.data, a.seed, a.preview_count),
            (&d.data, d.seed, d.preview_count)
        );
        assert_eq!(
            (a.sample_every, a.checkpoint_every),
            (d.sample_every, d.checkpoint_every)
        );
        assert_eq!(a.grad_clip, d.optim.grad_clip);
        assert_eq!(a.lr_schedule, d.optim.lr_schedule);
        // The recipe decides the rest, unless a flag says otherwise.
        assert_eq!(a.recipe, Recipe::Short);
        assert_eq!(
            (a.batch_size, a.lr, a.warmup, a.ema_decay),
            (None, None, None, None)
        );
        assert_eq!((a.diffusion.prediction, a.diffusion.loss), (None, None));
        assert_eq!(a.diffusion.config().unwrap(), DiffusionConfig::default());
        assert_eq!(
            (a.label_dropout, a.t_sampling),
            (d.label_dropout, d.t_sampling)
        );

        let c = Classifier::parse_from(["classifier", "--run", "r"]).a;
        let d = TrainConfig::classifier();
        assert_eq!(
            (&c.data, c.batch_size, c.seed, c.checkpoint_every),
            (&d.data, d.batch_size, d.seed, d.checkpoint_every)
        );
        assert_eq!(
            (c.lr, c.warmup, c.ema_decay),
            (d.optim.lr, d.optim.warmup_steps, d.optim.ema_decay)
        );
    }
}
