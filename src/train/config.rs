//! The configuration of a run (`RUN/config.json`): the network, the diffusion process, data
//! and optimisation, for diffusion runs ([`RunConfig`]) and classifier runs
//! ([`ClassifierRunConfig`]).

use std::fs;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::optim::OptimConfig;
use super::resample::TimestepSampling;
use crate::diffusion::DiffusionConfig;
use crate::model::UNetConfig;
use crate::model::classifier::ClassifierConfig;
use crate::tensorfile::write_atomic;

/// Everything needed to rebuild model, diffusion and data of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    /// The network.
    pub model: UNetConfig,
    /// The diffusion process.
    pub diffusion: DiffusionConfig,
    /// Data and optimisation.
    pub train: TrainConfig,
}

impl RunConfig {
    /// Reads `RUN/config.json`.
    pub fn load(run: &Path) -> Result<Self> {
        let p = run.join("config.json");
        let text = fs::read_to_string(&p).with_context(|| {
            format!(
                "{}: cannot read (is {} a run directory?)",
                p.display(),
                run.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("{}: invalid run config", p.display()))
    }

    /// Writes `RUN/config.json` atomically.
    pub fn save(&self, run: &Path) -> Result<()> {
        fs::create_dir_all(run).with_context(|| format!("creating {}", run.display()))?;
        write_atomic(
            &run.join("config.json"),
            serde_json::to_string_pretty(self)?.as_bytes(),
        )
    }
}

/// Data and optimisation settings of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Data set spec (see [`crate::data::open`]).
    pub data: String,
    /// Images per step.
    pub batch_size: usize,
    /// Stop after this many steps in total (None: no step limit).
    pub max_steps: Option<u64>,
    /// Stop after this much training wall time in total, minutes (None: no time limit).
    pub max_minutes: Option<f64>,
    /// Random horizontal flips (Ho et al. use them on CIFAR-10; wrong for digits).
    pub hflip: bool,
    /// Seed of everything random.
    pub seed: u64,
    /// Adam, warm-up, clipping, EMA.
    pub optim: OptimConfig,
    /// Write a preview grid every this many steps (0: only at the end).
    pub sample_every: u64,
    /// Save a checkpoint every this many steps (and at the end).
    pub checkpoint_every: u64,
    /// Also save when this many minutes have passed since the last save.
    pub checkpoint_minutes: f64,
    /// Checkpoints kept on disk.
    pub keep_checkpoints: usize,
    /// Images in a preview grid.
    pub preview_count: usize,
    /// DDIM steps for previews.
    pub preview_steps: usize,
    /// Log every this many steps.
    pub log_every: u64,
    /// Class-conditional models: the share of labels replaced by the null label ∅ at each step,
    /// so one network learns ε(x, y) and ε(x, ∅) for classifier-free guidance (Ho & Salimans
    /// 2022 use 0.1–0.2).
    #[serde(default = "default_label_dropout")]
    pub label_dropout: f64,
    /// How Algorithm 1 draws t: uniformly, or by importance sampling for `--loss vlb`
    /// (Nichol & Dhariwal 2021, eq. 17).
    #[serde(default)]
    pub t_sampling: TimestepSampling,
    /// Arithmetic of the stride-1 convolutions: f32, or bf16 operands with f32 sums in the
    /// forward pass and both gradients (Adam, the master weights and the EMA stay f32); see
    /// [`crate::kernels::precision`].
    #[serde(default)]
    pub precision: crate::kernels::Precision,
}

fn default_label_dropout() -> f64 {
    0.1
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            data: "mnist5k".into(),
            batch_size: 64,
            max_steps: None,
            max_minutes: None,
            hflip: false,
            seed: 0,
            optim: OptimConfig::default(),
            sample_every: 1000,
            checkpoint_every: 1000,
            checkpoint_minutes: 10.0,
            keep_checkpoints: 2,
            preview_count: 64,
            preview_steps: 50,
            log_every: 20,
            label_dropout: default_label_dropout(),
            t_sampling: TimestepSampling::Uniform,
            precision: crate::kernels::Precision::F32,
        }
    }
}

impl TrainConfig {
    /// The defaults of a classifier run (`ddpm classifier train`): Adam at 3e-4 (the rate
    /// Dhariwal & Nichol 2021 train their noisy classifiers with), 200 warm-up steps, EMA 0.999
    /// (a classifier trains for thousands, not hundreds of thousands, of steps), a checkpoint
    /// every 500 steps.
    pub fn classifier() -> Self {
        TrainConfig {
            optim: OptimConfig {
                lr: 3e-4,
                warmup_steps: 200,
                ema_decay: 0.999,
                ..Default::default()
            },
            checkpoint_every: 500,
            ..Default::default()
        }
    }

    /// Replaces the step and/or time budget where a new one is given (resuming a run).
    pub fn set_budget(&mut self, steps: Option<u64>, minutes: Option<f64>) {
        if steps.is_some() {
            self.max_steps = steps;
        }
        if minutes.is_some() {
            self.max_minutes = minutes;
        }
    }
}

/// A set of training defaults: what `ddpm train` uses for every setting not given on the
/// command line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Recipe {
    /// For runs of minutes to hours on a CPU, chosen by comparing recipes at equal wall time
    /// (README, "Recipes for short runs"): v-prediction (Salimans & Ho 2022) with L_simple,
    /// Adam at 1e-3 after 100 warm-up steps, EMA 0.995, batch 32.
    #[default]
    Short,
    /// Ho et al. 2020 §4: ε-prediction with L_simple, Adam at 2e-4 after 5000 warm-up steps,
    /// EMA 0.9999, batch 128, gradients clipped to norm 1.
    Paper,
}

/// The settings a [`Recipe`] decides.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RecipeDefaults {
    /// What the network predicts.
    pub prediction: crate::diffusion::Prediction,
    /// The loss weighting.
    pub loss: crate::diffusion::LossType,
    /// Adam's learning rate.
    pub lr: f64,
    /// Linear warm-up steps.
    pub warmup_steps: u64,
    /// EMA decay.
    pub ema_decay: f64,
    /// Images per step.
    pub batch_size: usize,
}

impl Recipe {
    /// The recipe's settings.
    pub fn defaults(self) -> RecipeDefaults {
        use crate::diffusion::{LossType, Prediction};
        match self {
            Recipe::Short => RecipeDefaults {
                prediction: Prediction::V,
                loss: LossType::Simple,
                lr: 1e-3,
                warmup_steps: 100,
                ema_decay: 0.995,
                batch_size: 32,
            },
            Recipe::Paper => RecipeDefaults {
                prediction: Prediction::Epsilon,
                loss: LossType::Simple,
                lr: 2e-4,
                warmup_steps: 5000,
                ema_decay: 0.9999,
                batch_size: 128,
            },
        }
    }

    /// `config` with this recipe's settings.
    pub fn apply(self, mut config: RunConfig) -> RunConfig {
        let d = self.defaults();
        config.diffusion.prediction = d.prediction;
        config.diffusion.loss = d.loss;
        config.train.optim.lr = d.lr;
        config.train.optim.warmup_steps = d.warmup_steps;
        config.train.optim.ema_decay = d.ema_decay;
        config.train.batch_size = d.batch_size;
        config
    }
}

/// A default run configuration for a preset and data set.
pub fn default_run_config(model: UNetConfig, data: &str) -> RunConfig {
    RunConfig {
        model,
        diffusion: Default::default(),
        train: TrainConfig {
            data: data.to_string(),
            ..Default::default()
        },
    }
}

/// Everything that defines a classifier run (its `config.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassifierRunConfig {
    /// Always "classifier", so runs of the two kinds are not confused.
    pub kind: String,
    /// The network.
    pub model: ClassifierConfig,
    /// The diffusion whose x_t the classifier sees.
    pub diffusion: DiffusionConfig,
    /// Data and optimisation.
    pub train: TrainConfig,
    /// Train on clean images only (t = 0, no noise): the evaluation classifier.
    pub clean: bool,
}

impl ClassifierRunConfig {
    /// Reads `RUN/config.json`, refusing diffusion runs.
    pub fn load(run: &Path) -> Result<Self> {
        let p = run.join("config.json");
        let text =
            fs::read_to_string(&p).with_context(|| format!("{}: cannot read", p.display()))?;
        let cfg: Self = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a classifier run config", p.display()))?;
        if cfg.kind != "classifier" {
            bail!(
                "{}: kind is `{}`, not a classifier run",
                p.display(),
                cfg.kind
            );
        }
        Ok(cfg)
    }

    /// Writes `RUN/config.json` atomically.
    pub fn save(&self, run: &Path) -> Result<()> {
        fs::create_dir_all(run).with_context(|| format!("creating {}", run.display()))?;
        write_atomic(
            &run.join("config.json"),
            serde_json::to_string_pretty(self)?.as_bytes(),
        )
    }
}

/// A run's `config.json` as the shared training loop ([`super::session`]) sees it: whatever
/// the task needs, with the data, budget and optimisation part.
pub trait TaskConfig: Clone + Serialize + DeserializeOwned {
    /// Data, budgets and optimisation.
    fn train(&self) -> &TrainConfig;
    /// Data, budgets and optimisation, to change on resume.
    fn train_mut(&mut self) -> &mut TrainConfig;
    /// Reads `RUN/config.json`.
    fn load(run: &Path) -> Result<Self>;
    /// Writes `RUN/config.json` atomically.
    fn save(&self, run: &Path) -> Result<()>;
}

macro_rules! task_config {
    ($t:ty) => {
        impl TaskConfig for $t {
            fn train(&self) -> &TrainConfig {
                &self.train
            }
            fn train_mut(&mut self) -> &mut TrainConfig {
                &mut self.train
            }
            fn load(run: &Path) -> Result<Self> {
                <$t>::load(run)
            }
            fn save(&self, run: &Path) -> Result<()> {
                <$t>::save(self, run)
            }
        }
    };
}

task_config!(RunConfig);
task_config!(ClassifierRunConfig);
