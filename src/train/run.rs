//! Opening a run folder written by training: its configuration, the trained networks (weights
//! or EMA weights of the latest checkpoint), and a report of its state (`ddpm inspect --run`).
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! let device = burn::tensor::Device::flex();
//! let run = ddpm::train::Run::open("runs/fashion".as_ref())?;
//! let (config, unet, step) = run.model(&device, true)?; // EMA weights
//! # Ok(()) }
//! ```

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::Device;

use super::checkpoint::{CheckpointMeta, check_checkpoint, latest_checkpoint, list_checkpoints};
use super::config::{ClassifierRunConfig, RunConfig, TrainConfig};
use crate::model::UNet;
use crate::model::classifier::NoisyClassifier;
use crate::params;
use crate::train::checkpoint::load_weights;

/// What a run folder trains.
#[derive(Clone, Debug)]
pub enum RunKind {
    /// A diffusion model (`ddpm train`).
    Diffusion(RunConfig),
    /// A classifier for guidance or judging (`ddpm classifier train`).
    Classifier(ClassifierRunConfig),
}

/// An opened run folder.
#[derive(Clone, Debug)]
pub struct Run {
    /// The folder.
    pub dir: PathBuf,
    /// Its configuration.
    pub kind: RunKind,
}

/// One checkpoint folder and whether it reads completely.
#[derive(Clone, Debug)]
pub struct CheckpointStatus {
    /// Its folder.
    pub dir: PathBuf,
    /// Total bytes of its files.
    pub bytes: u64,
    /// Whether `checkpoints/latest` names it.
    pub latest: bool,
    /// Its state, when intact.
    pub meta: Option<CheckpointMeta>,
    /// What is wrong with it, when damaged.
    pub problem: Option<String>,
}

/// The state of a run, for `ddpm inspect --run`.
#[derive(Clone, Debug)]
pub struct RunReport {
    /// `config.json` as written.
    pub config: serde_json::Value,
    /// Checkpoints, newest first.
    pub checkpoints: Vec<CheckpointStatus>,
    /// Rows of `log.csv` after its header.
    pub log_rows: usize,
    /// The last `(step, loss)` row of `log.csv`.
    pub last_log: Option<(u64, f64)>,
    /// `metrics.json` (written by `ddpm eval`), if any.
    pub metrics: Option<serde_json::Value>,
    /// `loss.png`, if written.
    pub loss_plot: Option<PathBuf>,
}

impl RunReport {
    /// The newest checkpoint that reads completely.
    pub fn newest_intact(&self) -> Option<&CheckpointStatus> {
        self.checkpoints.iter().find(|c| c.problem.is_none())
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .map(|it| {
            it.filter_map(|e| e.ok())
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

impl Run {
    /// Opens the run in `dir`: reads `config.json` and tells diffusion from classifier runs.
    pub fn open(dir: &Path) -> Result<Run> {
        let p = dir.join("config.json");
        let text = fs::read_to_string(&p).with_context(|| {
            format!(
                "{}: cannot read (is {} a run directory?)",
                p.display(),
                dir.display()
            )
        })?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: invalid run config", p.display()))?;
        let kind = if value.get("kind").and_then(|k| k.as_str()) == Some("classifier") {
            RunKind::Classifier(ClassifierRunConfig::load(dir)?)
        } else {
            RunKind::Diffusion(RunConfig::load(dir)?)
        };
        Ok(Run {
            dir: dir.to_path_buf(),
            kind,
        })
    }

    /// "diffusion model" or "classifier".
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            RunKind::Diffusion(_) => "diffusion model",
            RunKind::Classifier(_) => "classifier",
        }
    }

    /// The data and optimisation settings.
    pub fn train_config(&self) -> &TrainConfig {
        match &self.kind {
            RunKind::Diffusion(c) => &c.train,
            RunKind::Classifier(c) => &c.train,
        }
    }

    /// The parameter layout of the run's network.
    fn layout(&self) -> Vec<(String, Vec<usize>)> {
        let device = Device::flex();
        match &self.kind {
            RunKind::Diffusion(c) => params::layout(&c.model.init(&device)),
            RunKind::Classifier(c) => params::layout(&c.model.init(&device)),
        }
    }

    /// The checkpoint `latest` names.
    pub fn latest_checkpoint(&self) -> Result<PathBuf> {
        latest_checkpoint(&self.dir)?
            .with_context(|| format!("{}: no checkpoint yet (train first)", self.dir.display()))
    }

    /// Weights (`ema`: the EMA weights) of the latest checkpoint, and its state.
    fn weights(
        &self,
        layout: &[(String, Vec<usize>)],
        ema: bool,
    ) -> Result<(Vec<Vec<f32>>, CheckpointMeta)> {
        let ckpt = self.latest_checkpoint()?;
        let file = ckpt.join(if ema {
            "ema.safetensors"
        } else {
            "model.safetensors"
        });
        let weights = load_weights(&file, layout, "")?;
        let state = ckpt.join("state.json");
        let meta: CheckpointMeta = serde_json::from_str(
            &fs::read_to_string(&state).with_context(|| format!("reading {}", state.display()))?,
        )
        .with_context(|| format!("{}: invalid checkpoint state", state.display()))?;
        Ok((weights, meta))
    }

    /// The diffusion model of the latest checkpoint on `device` (`ema`: the EMA weights),
    /// with the run's configuration and the checkpoint's step.
    pub fn model(&self, device: &Device, ema: bool) -> Result<(RunConfig, UNet, u64)> {
        let RunKind::Diffusion(config) = &self.kind else {
            bail!(
                "{} is a classifier run, not a diffusion model run",
                self.dir.display()
            );
        };
        let model = config.model.init(device);
        let (weights, meta) = self.weights(&params::layout(&model), ema)?;
        Ok((
            config.clone(),
            params::assign(model, &weights, false),
            meta.step,
        ))
    }

    /// The classifier of the latest checkpoint on `device` (`ema`: the EMA weights).
    pub fn classifier(
        &self,
        device: &Device,
        ema: bool,
    ) -> Result<(ClassifierRunConfig, NoisyClassifier)> {
        let RunKind::Classifier(config) = &self.kind else {
            bail!(
                "{}: a diffusion model run, not a classifier run (train one with `ddpm classifier train`)",
                self.dir.display()
            );
        };
        let model = config.model.init(device);
        let (weights, _) = self.weights(&params::layout(&model), ema)?;
        Ok((config.clone(), params::assign(model, &weights, false)))
    }

    /// Configuration, checkpoints (each read completely to tell intact from damaged), the
    /// log's last row and `metrics.json`.
    pub fn report(&self) -> Result<RunReport> {
        let config: serde_json::Value = serde_json::from_str(
            &fs::read_to_string(self.dir.join("config.json"))
                .with_context(|| format!("reading {}", self.dir.join("config.json").display()))?,
        )?;
        let latest = fs::read_to_string(self.dir.join("checkpoints").join("latest"))
            .map(|s| s.trim().to_string())
            .ok();
        let layout = self.layout();
        let checkpoints = list_checkpoints(&self.dir)?
            .into_iter()
            .map(|(_, dir)| {
                let check = check_checkpoint(&dir, &layout);
                let name = dir.file_name().and_then(|n| n.to_str()).map(str::to_string);
                CheckpointStatus {
                    bytes: dir_bytes(&dir),
                    latest: name.is_some() && name == latest,
                    problem: check.as_ref().err().map(|e| format!("{e:#}")),
                    meta: check.ok(),
                    dir,
                }
            })
            .collect();
        let (log_rows, last_log) = match super::session::read_loss_log(&self.dir) {
            Ok(rows) => (rows.len(), rows.last().copied()),
            Err(_) => (0, None),
        };
        let metrics_path = self.dir.join("metrics.json");
        let metrics = if metrics_path.exists() {
            Some(
                serde_json::from_str(
                    &fs::read_to_string(&metrics_path)
                        .with_context(|| format!("reading {}", metrics_path.display()))?,
                )
                .with_context(|| format!("{}: invalid JSON", metrics_path.display()))?,
            )
        } else {
            None
        };
        let plot = self.dir.join("loss.png");
        Ok(RunReport {
            config,
            checkpoints,
            log_rows,
            last_log,
            metrics,
            loss_plot: plot.exists().then_some(plot),
        })
    }
}
