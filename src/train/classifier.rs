//! Training the noisy-image classifier of classifier guidance: cross-entropy on x_t with
//! t ~ U{1..T} (or on clean images for the evaluation classifier), with the same optimiser,
//! run folders, atomic checkpoints and exact resume as diffusion training.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::tensor::{Device, Tensor, TensorData};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

use super::checkpoint::{
    CheckpointMeta, latest_checkpoint, load_checkpoint, load_weights, save_checkpoint,
};
use super::config::TrainConfig;
use super::optim::TrainState;
use super::trainer::{collect_grads, step_progress_bar};
use crate::data::{self, ImageSet, Loader, Split};
use crate::diffusion::{DiffusionConfig, GaussianDiffusion};
use crate::model::classifier::{ClassifierConfig, NoisyClassifier};
use crate::params;
use crate::sampling::NoiseSource;
use crate::tensorfile::write_atomic;

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

    fn save(&self, run: &Path) -> Result<()> {
        fs::create_dir_all(run)?;
        write_atomic(
            &run.join("config.json"),
            serde_json::to_string_pretty(self)?.as_bytes(),
        )
    }
}

/// Accuracy in four t ranges (quarters of 1..T) plus overall.
#[derive(Clone, Debug, Default)]
pub struct AccuracyByT {
    /// (correct, total) per quarter of the timestep range.
    pub quarters: [(usize, usize); 4],
}

impl AccuracyByT {
    fn add(&mut self, t: &[usize], correct: &[bool], t_max: usize) {
        for (&ti, &ok) in t.iter().zip(correct) {
            let q = (ti * 4 / t_max.max(1)).min(3);
            self.quarters[q].1 += 1;
            self.quarters[q].0 += ok as usize;
        }
    }

    /// Accuracy of quarter q (NaN when empty).
    pub fn quarter(&self, q: usize) -> f64 {
        let (c, n) = self.quarters[q];
        c as f64 / n as f64
    }

    /// Overall accuracy.
    pub fn overall(&self) -> f64 {
        let (c, n) = self
            .quarters
            .iter()
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
        c as f64 / n as f64
    }
}

/// A classifier run being trained.
pub struct ClassifierTrainer {
    /// Run folder.
    pub run: PathBuf,
    /// Configuration.
    pub config: ClassifierRunConfig,
    /// Training images with labels.
    pub data: ImageSet,
    /// Optimiser state.
    pub state: TrainState,
    diffusion: GaussianDiffusion,
    device: Device,
    layout: Vec<(String, Vec<usize>)>,
    meta: CheckpointMeta,
    /// Show a progress bar.
    pub progress: bool,
}

fn load_labelled(config: &ClassifierRunConfig, split: Split) -> Result<ImageSet> {
    let b = &config.model.backbone;
    let set = data::open(&config.train.data, split, Some(b.image_size))?;
    let Some(labels) = &set.labels else {
        bail!(
            "data `{}` has no labels: a classifier needs class sub-folders or label files",
            config.train.data
        );
    };
    if set.channels != b.in_channels {
        bail!(
            "data `{}` has {} channels, the classifier {}",
            config.train.data,
            set.channels,
            b.in_channels
        );
    }
    if let Some(&bad) = labels
        .iter()
        .find(|&&l| l as usize >= config.model.num_classes)
    {
        bail!(
            "data `{}` has label {bad} but the classifier has {} classes",
            config.train.data,
            config.model.num_classes
        );
    }
    Ok(set)
}

impl ClassifierTrainer {
    /// Starts a new classifier run.
    pub fn create(run: &Path, config: ClassifierRunConfig, device: &Device) -> Result<Self> {
        if latest_checkpoint(run)?.is_some() {
            bail!(
                "{} already holds a run; continue it with --resume",
                run.display()
            );
        }
        let data = load_labelled(&config, Split::Train)?;
        config.save(run)?;
        device.seed(config.train.seed);
        let model = config.model.init(device);
        let layout = params::layout(&model);
        let values = params::collect(&model)
            .into_iter()
            .map(|p| p.values)
            .collect();
        fs::write(
            run.join("log.csv"),
            "step,loss,accuracy,acc_t_q1,acc_t_q2,acc_t_q3,acc_t_q4,lr,wall_s\n",
        )?;
        Ok(ClassifierTrainer {
            run: run.to_path_buf(),
            diffusion: GaussianDiffusion::new(config.diffusion.clone()),
            config,
            data,
            state: TrainState::new(values),
            device: device.clone(),
            layout,
            meta: CheckpointMeta::fresh(),
            progress: false,
        })
    }

    /// Reopens a classifier run at its latest checkpoint.
    pub fn resume(
        run: &Path,
        device: &Device,
        update: impl FnOnce(&mut TrainConfig),
    ) -> Result<Self> {
        let mut config = ClassifierRunConfig::load(run)?;
        update(&mut config.train);
        let ckpt =
            latest_checkpoint(run)?.with_context(|| format!("{}: no checkpoint", run.display()))?;
        let layout = params::layout(&config.model.init(device));
        let (state, meta) = load_checkpoint(&ckpt, &layout)?;
        let data = load_labelled(&config, Split::Train)?;
        config.save(run)?;
        Ok(ClassifierTrainer {
            run: run.to_path_buf(),
            diffusion: GaussianDiffusion::new(config.diffusion.clone()),
            config,
            data,
            state,
            device: device.clone(),
            layout,
            meta,
            progress: false,
        })
    }

    /// Noisy inputs for a batch: x_t with t ~ U (or the clean images), and the t used.
    fn noisy(&self, x0: Tensor<4>, seed: u64) -> (Tensor<4>, Vec<usize>) {
        let b = x0.dims()[0];
        if self.config.clean {
            return (x0, vec![0; b]);
        }
        let mut rng = StdRng::seed_from_u64(seed);
        let t: Vec<usize> = (0..b)
            .map(|_| rng.random_range(0..self.diffusion.num_timesteps()))
            .collect();
        let mut noise = NoiseSource::new(seed ^ 0xC1A5);
        let eps = noise.normal(x0.dims(), &x0.device());
        (self.diffusion.q_sample(x0, &t, eps), t)
    }

    /// Trains until the step or time budget; returns the final checkpoint.
    pub fn train(&mut self) -> Result<PathBuf> {
        let tc = self.config.train.clone();
        let ad = self.device.clone().autodiff();
        let mut model = params::assign(self.config.model.init(&ad), &self.state.params, true);
        let loader = Loader::new(&self.data, tc.batch_size, tc.hflip, tc.seed);
        let start = Instant::now();
        let wall0 = self.meta.wall_seconds;
        let target = tc.max_steps.unwrap_or(u64::MAX);
        let budget = tc.max_minutes.map(|m| m * 60.0);
        let bar = self
            .progress
            .then(|| step_progress_bar("classifier", target, self.state.step));
        let mut log = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(self.run.join("log.csv"))?;
        let mut acc = AccuracyByT::default();
        let mut loss_sum = 0.0;
        let mut since_log = 0u64;
        let mut last = None;
        loop {
            let elapsed = wall0 + start.elapsed().as_secs_f64();
            if self.state.step >= target || budget.is_some_and(|b| elapsed >= b) {
                break;
            }
            let step = self.state.step;
            let (x0, labels) = loader.batch(step, &ad);
            let (x_t, t) = self.noisy(x0, tc.seed.wrapping_mul(31).wrapping_add(step));
            let tf: Vec<f32> = t.iter().map(|&i| i as f32).collect();
            let labels: Vec<usize> = labels.iter().map(|&l| l as usize).collect();
            let logits = model.forward(x_t, &tf, true);
            let pred: Vec<i64> = logits
                .clone()
                .argmax(1)
                .into_data()
                .convert::<i64>()
                .try_into_vec()
                .unwrap();
            let correct: Vec<bool> = pred
                .iter()
                .zip(&labels)
                .map(|(p, y)| *p as usize == *y)
                .collect();
            acc.add(&t, &correct, self.diffusion.num_timesteps());
            let (loss, _) = NoisyClassifier::cross_entropy(logits, &labels);
            let value = loss
                .clone()
                .into_data()
                .convert::<f64>()
                .try_into_vec::<f64>()
                .unwrap()[0];
            if !value.is_finite() {
                bail!(
                    "loss is {value} at step {step}: training diverged; the last good checkpoint is kept"
                );
            }
            let grads = collect_grads(&model, &loss.backward());
            let stats = self.state.update(&grads, &tc.optim);
            model = params::assign(model, &self.state.params, true);
            loss_sum += value;
            since_log += 1;
            self.meta.wall_seconds = wall0 + start.elapsed().as_secs_f64();
            self.meta.images_seen += tc.batch_size as u64;
            self.meta.loss = value;
            let n = self.state.step;
            if n.is_multiple_of(tc.log_every.max(1)) {
                writeln!(
                    log,
                    "{n},{:.5},{:.4},{:.4},{:.4},{:.4},{:.4},{:.3e},{:.1}",
                    loss_sum / since_log as f64,
                    acc.overall(),
                    acc.quarter(0),
                    acc.quarter(1),
                    acc.quarter(2),
                    acc.quarter(3),
                    stats.lr,
                    self.meta.wall_seconds
                )?;
                if let Some(pb) = &bar {
                    pb.set_message(format!(
                        "loss {:.3} | acc {:.3}",
                        loss_sum / since_log as f64,
                        acc.overall()
                    ));
                }
                acc = AccuracyByT::default();
                loss_sum = 0.0;
                since_log = 0;
            }
            if let Some(pb) = &bar {
                pb.set_position(n);
            }
            if tc.checkpoint_every > 0 && n.is_multiple_of(tc.checkpoint_every) {
                self.meta.step = n;
                last = Some(save_checkpoint(
                    &self.run,
                    &self.layout,
                    &self.state,
                    &self.meta,
                    tc.keep_checkpoints,
                )?);
            }
        }
        if let Some(pb) = bar {
            pb.finish_and_clear();
        }
        self.meta.step = self.state.step;
        match last {
            Some(p) if p.ends_with(super::checkpoint::checkpoint_name(self.state.step)) => Ok(p),
            _ => save_checkpoint(
                &self.run,
                &self.layout,
                &self.state,
                &self.meta,
                tc.keep_checkpoints,
            ),
        }
    }
}

/// Loads a classifier run's EMA (or raw) weights.
pub fn load_classifier(
    run: &Path,
    device: &Device,
    ema: bool,
) -> Result<(ClassifierRunConfig, NoisyClassifier)> {
    let config = ClassifierRunConfig::load(run)?;
    let ckpt =
        latest_checkpoint(run)?.with_context(|| format!("{}: no checkpoint", run.display()))?;
    let model = config.model.init(device);
    let layout = params::layout(&model);
    let w = load_weights(
        &ckpt.join(if ema {
            "ema.safetensors"
        } else {
            "model.safetensors"
        }),
        &layout,
        "",
    )?;
    Ok((config, params::assign(model, &w, false)))
}

/// Accuracy of a classifier on a labelled split, by t quarter (noisy inputs) or clean.
pub fn evaluate(
    config: &ClassifierRunConfig,
    model: &NoisyClassifier,
    set: &ImageSet,
    n: usize,
    device: &Device,
    seed: u64,
) -> AccuracyByT {
    let diffusion = GaussianDiffusion::new(config.diffusion.clone());
    let m = &config.model.backbone;
    let n = n.clamp(1, set.len());
    let mut rng = StdRng::seed_from_u64(seed);
    let mut noise = NoiseSource::new(seed);
    let mut acc = AccuracyByT::default();
    let idx: Vec<usize> = (0..n).map(|k| k * set.len() / n).collect();
    for chunk in idx.chunks(256) {
        let b = chunk.len();
        let x: Vec<f32> = chunk
            .iter()
            .flat_map(|&i| set.image(i).iter().map(|&v| data::to_unit(v)))
            .collect();
        let x0 = Tensor::<4>::from_data(
            TensorData::new(x, [b, m.in_channels, m.image_size, m.image_size]),
            device,
        );
        let (x_t, t) = if config.clean {
            (x0, vec![0; b])
        } else {
            let t: Vec<usize> = (0..b)
                .map(|_| rng.random_range(0..diffusion.num_timesteps()))
                .collect();
            let eps = noise.normal(x0.dims(), device);
            (diffusion.q_sample(x0, &t, eps), t)
        };
        let tf: Vec<f32> = t.iter().map(|&i| i as f32).collect();
        let pred: Vec<i64> = model
            .forward(x_t, &tf, false)
            .argmax(1)
            .into_data()
            .convert::<i64>()
            .try_into_vec()
            .unwrap();
        let labels = set.labels.as_ref().unwrap();
        let correct: Vec<bool> = chunk
            .iter()
            .zip(&pred)
            .map(|(&i, &p)| labels[i] as i64 == p)
            .collect();
        acc.add(&t, &correct, diffusion.num_timesteps());
    }
    acc
}

/// Predicted classes of clean images in model space ([−1, 1]).
pub fn predict(model: &NoisyClassifier, x: Tensor<4>) -> Vec<usize> {
    let b = x.dims()[0];
    model
        .forward(x, &vec![0.0; b], false)
        .argmax(1)
        .into_data()
        .convert::<i64>()
        .try_into_vec::<i64>()
        .unwrap()
        .into_iter()
        .map(|p| p as usize)
        .collect()
}
