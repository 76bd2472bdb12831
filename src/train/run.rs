//! Opening a run folder written by training: its configuration and the trained networks
//! (weights or EMA weights of the latest checkpoint).
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

use super::checkpoint::{CheckpointMeta, latest_checkpoint};
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
}
