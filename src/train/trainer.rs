//! The training loop, Algorithm 1 of Ho et al. 2020: x_0 from the data, t ~ U{1..T},
//! ε ~ N(0, I), one gradient step on the loss, then clipping, Adam, warm-up and EMA.
//!
//! All randomness of step `n` (batch order, flips, t, ε, dropout) is a pure function of
//! (seed, n), and all optimiser state is saved in checkpoints, so a resumed run follows the
//! uninterrupted trajectory bit for bit on the CPU.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor};
use rand::{Rng, SeedableRng, rngs::StdRng};

use super::checkpoint::{CheckpointMeta, latest_checkpoint, load_checkpoint, save_checkpoint};
use super::config::{RunConfig, TrainConfig};
use super::optim::TrainState;
use crate::data::{self, ImageSet, Loader, Split};
use crate::diffusion::GaussianDiffusion;
use crate::model::UNet;
use crate::params;
use crate::sampling::{Ddim, NoiseSource, Spacing, sample, timestep_subsequence};

/// How a training session ended.
#[derive(Clone, Debug)]
pub struct TrainSummary {
    /// Total steps completed.
    pub step: u64,
    /// Total training wall time, seconds.
    pub wall_seconds: f64,
    /// Smoothed final loss.
    pub loss: f64,
    /// The last checkpoint written.
    pub checkpoint: PathBuf,
    /// The last preview grid written.
    pub preview: Option<PathBuf>,
}

/// A run being trained.
pub struct Trainer {
    /// The run folder.
    pub run: PathBuf,
    /// Its configuration.
    pub config: RunConfig,
    /// The diffusion process.
    pub diffusion: GaussianDiffusion,
    /// Training images.
    pub data: ImageSet,
    /// Weights, EMA, moments, step.
    pub state: TrainState,
    device: Device,
    layout: Vec<(String, Vec<usize>)>,
    meta: CheckpointMeta,
    /// Show a progress bar.
    pub progress: bool,
}

/// A step progress bar for a training loop (`label` names the loop), starting at `step`.
pub fn step_progress_bar(label: &str, target: u64, step: u64) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new(if target == u64::MAX { 0 } else { target });
    pb.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{{spinner}} {label} [{{elapsed_precise}} < {{eta_precise}}] {{bar:30}} step {{pos}}/{{len}} {{msg}}"
        ))
        .unwrap(),
    );
    pb.set_position(step);
    pb
}

fn mix(seed: u64, step: u64, salt: u64) -> u64 {
    // SplitMix64 finaliser over the combination: distinct, well-mixed streams per step.
    let mut z = seed
        .wrapping_add(step.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(salt.wrapping_mul(0xBF58_476D_1CE4_E5B9));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

struct GradCollector<'a> {
    grads: &'a burn::tensor::Gradients,
    out: Vec<Vec<f32>>,
}

impl ModuleVisitor for GradCollector<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let t = param.val();
        let n = t.shape().num_elements();
        let g = match t.grad(self.grads) {
            Some(g) => g
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .expect("f32 grad"),
            // A parameter the loss does not reach has a zero gradient.
            None => vec![0.0; n],
        };
        self.out.push(g);
    }
}

/// The gradient of every parameter of `model`, in parameter order (zeros where the loss does
/// not depend on a parameter).
pub fn collect_grads<M: Module>(model: &M, grads: &burn::tensor::Gradients) -> Vec<Vec<f32>> {
    let mut c = GradCollector {
        grads,
        out: Vec::new(),
    };
    model.visit(&mut c);
    c.out
}

fn load_data(config: &RunConfig) -> Result<ImageSet> {
    let m = &config.model;
    let set = data::open(&config.train.data, Split::Train, Some(m.image_size))
        .with_context(|| format!("loading training data `{}`", config.train.data))?;
    if set.channels != m.in_channels {
        bail!(
            "data `{}` has {} channel(s) but the model expects {} (set --channels {} or pick another data set)",
            config.train.data,
            set.channels,
            m.in_channels,
            set.channels
        );
    }
    if set.len() < config.train.batch_size {
        bail!(
            "data `{}` has {} images, fewer than the batch size {}",
            config.train.data,
            set.len(),
            config.train.batch_size
        );
    }
    Ok(set)
}

impl Trainer {
    /// Starts a new run in `run` (refuses a folder that already holds checkpoints).
    pub fn create(run: &Path, config: RunConfig, device: &Device) -> Result<Self> {
        if latest_checkpoint(run)?.is_some() {
            bail!(
                "{} already holds a run; continue it with `ddpm train --resume {}` or choose another --run",
                run.display(),
                run.display()
            );
        }
        config
            .model
            .validate()
            .map_err(|e| anyhow::anyhow!("model config: {e}"))?;
        let data = load_data(&config)?;
        config.save(run)?;
        device.seed(config.train.seed);
        let model = config.model.init(device);
        let layout = params::layout(&model);
        let values = params::collect(&model)
            .into_iter()
            .map(|p| p.values)
            .collect();
        let diffusion = GaussianDiffusion::new(config.diffusion.clone());
        // A fresh run starts a fresh log.
        fs::create_dir_all(run)?;
        fs::write(
            run.join("log.csv"),
            "step,loss,lr,grad_norm,images_per_s,wall_s\n",
        )?;
        Ok(Trainer {
            run: run.to_path_buf(),
            config,
            diffusion,
            data,
            state: TrainState::new(values),
            device: device.clone(),
            layout,
            meta: CheckpointMeta::fresh(),
            progress: false,
        })
    }

    /// Reopens a run at its latest checkpoint; `update` may change the budgets.
    pub fn resume(
        run: &Path,
        device: &Device,
        update: impl FnOnce(&mut TrainConfig),
    ) -> Result<Self> {
        let mut config = RunConfig::load(run)?;
        update(&mut config.train);
        let ckpt = latest_checkpoint(run)?
            .with_context(|| format!("{}: no checkpoint to resume from", run.display()))?;
        let layout = params::layout(&config.model.init(device));
        let (state, meta) = load_checkpoint(&ckpt, &layout)
            .with_context(|| format!("resuming from {}", ckpt.display()))?;
        let data = load_data(&config)?;
        config.save(run)?;
        // Drop log rows written after the checkpoint, so the log matches the trajectory.
        let log = run.join("log.csv");
        if let Ok(text) = fs::read_to_string(&log) {
            let kept: Vec<&str> = text
                .lines()
                .enumerate()
                .filter(|(i, l)| {
                    *i == 0
                        || l.split(',')
                            .next()
                            .and_then(|s| s.parse::<u64>().ok())
                            .is_some_and(|s| s <= meta.step)
                })
                .map(|(_, l)| l)
                .collect();
            fs::write(&log, kept.join("\n") + "\n")?;
        }
        let diffusion = GaussianDiffusion::new(config.diffusion.clone());
        Ok(Trainer {
            run: run.to_path_buf(),
            config,
            diffusion,
            data,
            state,
            device: device.clone(),
            layout,
            meta,
            progress: false,
        })
    }

    /// The model with the given weights on the inference (non-autodiff) device.
    pub fn model_with(&self, weights: &[Vec<f32>]) -> UNet {
        params::assign(self.config.model.init(&self.device), weights, false)
    }

    /// One step of Algorithm 1 on `model` (autodiff); returns the loss and the gradients.
    fn loss_and_grads(&self, model: &UNet, step: u64) -> Result<(f64, Vec<Vec<f32>>)> {
        let tc = &self.config.train;
        let ad = model.devices()[0].clone();
        let loader = Loader::new(&self.data, tc.batch_size, tc.hflip, tc.seed);
        let (x0, _) = loader.batch(step, &ad);
        let b = x0.dims()[0];
        let mut rng = StdRng::seed_from_u64(mix(tc.seed, step, 1));
        let t: Vec<usize> = (0..b)
            .map(|_| rng.random_range(0..self.diffusion.num_timesteps()))
            .collect();
        let mut noise = NoiseSource::new(mix(tc.seed, step, 2));
        let eps = noise.normal(x0.dims(), &ad);
        let x_t = self.diffusion.q_sample(x0, &t, eps.clone());
        if self.config.model.dropout > 0.0 {
            ad.seed(mix(tc.seed, step, 3));
        }
        let tf: Vec<f32> = t.iter().map(|&i| i as f32).collect();
        let eps_pred = model.forward(x_t, &tf, true);
        let loss = self.diffusion.training_loss(eps, eps_pred, &t);
        let value = loss
            .clone()
            .into_data()
            .convert::<f64>()
            .try_into_vec::<f64>()
            .unwrap()[0];
        if !value.is_finite() {
            bail!(
                "loss is {value} at step {step}: training diverged; stopping. The last good checkpoint in {} is kept — resume from it with a lower --lr",
                self.run.join("checkpoints").display()
            );
        }
        let grads = loss.backward();
        Ok((value, collect_grads(model, &grads)))
    }

    fn save(&mut self) -> Result<PathBuf> {
        self.meta.step = self.state.step;
        save_checkpoint(
            &self.run,
            &self.layout,
            &self.state,
            &self.meta,
            self.config.train.keep_checkpoints,
        )
    }

    /// Writes a preview grid sampled from the EMA weights (DDIM, fixed seed).
    pub fn preview(&self) -> Result<PathBuf> {
        let tc = &self.config.train;
        let m = &self.config.model;
        let model = self.model_with(&self.state.ema);
        let ts = timestep_subsequence(
            self.diffusion.num_timesteps(),
            tc.preview_steps,
            Spacing::Quadratic,
        );
        let sampler = Ddim::new(ts, 0.0, true);
        let mut noise = NoiseSource::new(tc.seed ^ 0x5EED);
        let n = tc.preview_count;
        let x = sample(
            &self.diffusion,
            &sampler,
            &model,
            [n, m.in_channels, m.image_size, m.image_size],
            &self.device,
            &mut noise,
            |_, _| {},
        );
        let path = self.run.join("samples").join(format!(
            "{}.png",
            super::checkpoint::checkpoint_name(self.state.step)
        ));
        crate::image::save_grid(x, (n as f64).sqrt().ceil() as usize, &path)?;
        Ok(path)
    }

    /// Trains until the step or time budget is reached.
    pub fn train(&mut self) -> Result<TrainSummary> {
        let tc = self.config.train.clone();
        let ad = self.device.clone().autodiff();
        let mut model = params::assign(self.config.model.init(&ad), &self.state.params, true);
        let start = Instant::now();
        let wall0 = self.meta.wall_seconds;
        let step0 = self.state.step;
        let target = tc.max_steps.unwrap_or(u64::MAX);
        let time_budget = tc.max_minutes.map(|m| m * 60.0);
        let bar = self
            .progress
            .then(|| step_progress_bar("train", target, step0));
        let mut log = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(self.run.join("log.csv"))?;
        let mut smoothed = if self.meta.loss.is_finite() {
            self.meta.loss
        } else {
            f64::NAN
        };
        let (mut last_log_t, mut last_log_step) = (Instant::now(), step0);
        let mut last_save = Instant::now();
        let mut preview = None;
        let mut checkpoint = None;
        loop {
            let elapsed = wall0 + start.elapsed().as_secs_f64();
            if self.state.step >= target || time_budget.is_some_and(|b| elapsed >= b) {
                break;
            }
            let step = self.state.step;
            let (loss, grads) = self.loss_and_grads(&model, step)?;
            let stats = self.state.update(&grads, &tc.optim);
            model = params::assign(model, &self.state.params, true);
            smoothed = if smoothed.is_finite() {
                0.98 * smoothed + 0.02 * loss
            } else {
                loss
            };
            self.meta.images_seen += tc.batch_size as u64;
            self.meta.wall_seconds = wall0 + start.elapsed().as_secs_f64();
            self.meta.loss = smoothed;
            let n = self.state.step;
            if n.is_multiple_of(tc.log_every.max(1)) {
                let dt = last_log_t.elapsed().as_secs_f64();
                let ips = (n - last_log_step) as f64 * tc.batch_size as f64 / dt.max(1e-9);
                writeln!(
                    log,
                    "{n},{loss:.6},{:.3e},{:.4},{ips:.2},{:.1}",
                    stats.lr, stats.grad_norm, self.meta.wall_seconds
                )?;
                log.flush()?;
                if let Some(pb) = &bar {
                    pb.set_message(format!("loss {smoothed:.4} | {ips:.1} img/s"));
                }
                last_log_t = Instant::now();
                last_log_step = n;
            }
            if let Some(pb) = &bar {
                pb.set_position(n);
            }
            if tc.checkpoint_every > 0 && n.is_multiple_of(tc.checkpoint_every)
                || last_save.elapsed().as_secs_f64() > tc.checkpoint_minutes * 60.0
            {
                checkpoint = Some(self.save()?);
                last_save = Instant::now();
            }
            if tc.sample_every > 0 && n.is_multiple_of(tc.sample_every) {
                preview = Some(self.preview()?);
            }
        }
        if let Some(pb) = bar {
            pb.finish_and_clear();
        }
        let ckpt_is_current = checkpoint.as_ref().is_some_and(|p: &PathBuf| {
            p.ends_with(super::checkpoint::checkpoint_name(self.state.step))
        });
        let checkpoint = if ckpt_is_current {
            checkpoint.unwrap()
        } else {
            self.save()?
        };
        let preview_is_current = preview.as_ref().is_some_and(|p: &PathBuf| {
            p.file_stem().and_then(|s| s.to_str())
                == Some(super::checkpoint::checkpoint_name(self.state.step).as_str())
        });
        if !preview_is_current && tc.preview_count > 0 {
            preview = Some(self.preview()?);
        }
        Ok(TrainSummary {
            step: self.state.step,
            wall_seconds: self.meta.wall_seconds,
            loss: smoothed,
            checkpoint,
            preview,
        })
    }
}

/// Loads the EMA (or raw) weights of a run's latest checkpoint into a model on `device`.
pub fn load_run_model(run: &Path, device: &Device, ema: bool) -> Result<(RunConfig, UNet, u64)> {
    let config = RunConfig::load(run)?;
    let ckpt = latest_checkpoint(run)?
        .with_context(|| format!("{}: no checkpoint yet (train first)", run.display()))?;
    let model = config.model.init(device);
    let layout = params::layout(&model);
    let file = ckpt.join(if ema {
        "ema.safetensors"
    } else {
        "model.safetensors"
    });
    let weights = super::checkpoint::load_weights(&file, &layout, "")?;
    let meta: CheckpointMeta = serde_json::from_str(&fs::read_to_string(ckpt.join("state.json"))?)?;
    Ok((config, params::assign(model, &weights, false), meta.step))
}
