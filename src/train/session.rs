//! The training loop every task shares: create or resume a run folder, step until the step or
//! time budget, log to `log.csv`, checkpoint atomically, plot the loss, write previews.
//!
//! A [`Task`] (the diffusion model of Ho et al. 2020, Algorithm 1, in [`super::trainer`]; the
//! noisy-image classifier of Dhariwal & Nichol 2021 in [`super::classifier`]) supplies its
//! configuration, network, data, one step's batch and loss, and its log columns; [`Session`]
//! does everything else. All randomness of step `n` is a pure function of (seed, n) and the
//! whole optimiser state is checkpointed, so a resumed run follows the uninterrupted trajectory
//! bit for bit on the CPU.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor};

use super::checkpoint::{
    CheckpointMeta, checkpoint_name, latest_checkpoint, load_newest_intact, point_latest_at,
    save_checkpoint, set_aside,
};
use super::config::{TaskConfig, TrainConfig};
use super::device_optim::DeviceOptim;
use super::optim::{TrainState, UpdateStats};
use crate::data::ImageSet;
use crate::params;
use crate::tensorfile::write_atomic;

/// What one kind of training contributes to the shared loop: its step and its metrics.
pub trait Task: Sized {
    /// The run's configuration.
    type Config: TaskConfig;
    /// The network being trained.
    type Model: Module;
    /// The inputs of one step, drawn from (seed, step) alone.
    type Batch;
    /// Label of the progress bar.
    const LABEL: &'static str;
    /// The command that continues such a run, for messages (`ddpm train`).
    const COMMAND: &'static str;
    /// The header of `log.csv`; its first two columns are `step` and `loss`.
    const LOG_HEADER: &'static str;

    /// Builds the task from a run configuration, checking it.
    fn new(config: Self::Config) -> Result<Self>;
    /// The run configuration.
    fn config(&self) -> &Self::Config;
    /// A freshly initialised network on `device`.
    fn init(&self, device: &Device) -> Self::Model;
    /// The training images, checked against the network.
    fn load_data(&self) -> Result<ImageSet>;
    /// The inputs of step `step` (0-based) on `device`.
    fn batch(&self, data: &ImageSet, step: u64, device: &Device) -> Self::Batch;
    /// The scalar loss of one batch on the autodiff device; may record metrics for the log.
    fn loss(&mut self, model: &Self::Model, batch: Self::Batch, step: u64) -> Tensor<1>;
    /// The `log.csv` row (without newline) and the progress-bar message after step `row.step`;
    /// resets the metrics gathered since the last row.
    fn log_row(&mut self, row: &LogRow) -> (String, String);
    /// State of the task that a checkpoint must carry for a bit-exact resume (beyond weights,
    /// EMA and optimiser), if any.
    fn state(&self) -> Option<serde_json::Value> {
        None
    }
    /// Restores [`Task::state`] from the checkpoint resumed (None when it had none).
    fn restore(&mut self, _state: Option<&serde_json::Value>) -> Result<()> {
        Ok(())
    }
    /// Whether [`Task::preview`] writes anything.
    fn wants_preview(&self) -> bool {
        false
    }
    /// Writes a preview of the EMA network `ema` to `path`.
    fn preview(&self, _ema: &Self::Model, _device: &Device, _path: &Path) -> Result<()> {
        Ok(())
    }
}

/// The loop's numbers at a logged step.
#[derive(Clone, Copy, Debug)]
pub struct LogRow {
    /// Steps completed.
    pub step: u64,
    /// This step's loss.
    pub loss: f64,
    /// Mean loss over the steps since the previous row.
    pub mean_loss: f64,
    /// Exponentially smoothed loss (weight 0.02 per step).
    pub smoothed_loss: f64,
    /// Learning rate and gradient norm of this step.
    pub update: UpdateStats,
    /// Throughput since the previous row.
    pub images_per_s: f64,
    /// Training wall time so far, seconds.
    pub wall_seconds: f64,
}

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
    /// The last preview written.
    pub preview: Option<PathBuf>,
}

/// A checkpoint passed over on resume because it could not be read.
#[derive(Clone, Debug)]
pub struct SkippedCheckpoint {
    /// Where it was.
    pub dir: PathBuf,
    /// What was wrong.
    pub problem: String,
    /// Where it was moved so that it is neither resumed from nor pruned.
    pub moved_to: PathBuf,
}

/// A run being trained.
pub struct Session<T: Task> {
    /// The run folder.
    pub run: PathBuf,
    /// The task with its configuration.
    pub task: T,
    /// Training images.
    pub data: ImageSet,
    /// Weights, EMA, moments, step.
    pub state: TrainState,
    /// Newer checkpoints that `resume` found damaged and passed over (newest first).
    pub skipped: Vec<SkippedCheckpoint>,
    /// Show a progress bar.
    pub progress: bool,
    /// Run clipping, Adam and the EMA as tensor operations on the device ([`DeviceOptim`])
    /// instead of on the host state. Default: on GPUs, where the host update would move every
    /// gradient and weight across the bus each step; off on the CPU, where the host update's
    /// f64 gradient norm does not depend on the thread count and runs trained so far keep
    /// their exact trajectory.
    pub optim_on_device: bool,
    device: Device,
    layout: Vec<(String, Vec<usize>)>,
    meta: CheckpointMeta,
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

/// Drops `log.csv` rows written after `step`, so the log matches a resumed trajectory.
fn trim_log(run: &Path, step: u64) -> Result<()> {
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
                        .is_some_and(|s| s <= step)
            })
            .map(|(_, l)| l)
            .collect();
        fs::write(&log, kept.join("\n") + "\n")
            .with_context(|| format!("writing {}", log.display()))?;
    }
    Ok(())
}

/// The `(step, loss)` rows of a run's `log.csv` (the columns named `step` and `loss`).
pub fn read_loss_log(run: &Path) -> Result<Vec<(u64, f64)>> {
    let path = run.join("log.csv");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split(',').collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .with_context(|| format!("{}: no `{name}` column", path.display()))
    };
    let (cs, cl) = (col("step")?, col("loss")?);
    let mut rows = Vec::new();
    for (i, line) in lines.enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(',').collect();
        let parsed = f
            .get(cs)
            .and_then(|s| s.parse::<u64>().ok())
            .zip(f.get(cl).and_then(|s| s.parse::<f64>().ok()));
        let Some(row) = parsed else {
            bail!("{}: line {}: cannot read `{line}`", path.display(), i + 2);
        };
        rows.push(row);
    }
    Ok(rows)
}

/// Draws the loss column of `RUN/log.csv` against the logged steps (log scale) into
/// `RUN/loss.png`, atomically.
pub fn plot_loss(run: &Path) -> Result<PathBuf> {
    let losses: Vec<f64> = read_loss_log(run)?.into_iter().map(|(_, l)| l).collect();
    let out = run.join("loss.png");
    let tmp = run.join(format!(".loss-{}.png", std::process::id()));
    crate::image::line_plot(&losses, true, 640, 360, &tmp)?;
    let bytes = fs::read(&tmp).with_context(|| format!("reading {}", tmp.display()))?;
    fs::remove_file(&tmp).ok();
    write_atomic(&out, &bytes)?;
    Ok(out)
}

/// The task of `config`, with the checks every task shares (the optimiser's) after its own.
fn checked_task<T: Task>(config: T::Config) -> Result<T> {
    let task = T::new(config)?;
    task.config()
        .train()
        .optim
        .validate()
        .map_err(|e| anyhow::anyhow!("training config: {e}"))?;
    Ok(task)
}

impl<T: Task> Session<T> {
    /// Starts a new run in `run` (refuses a folder that already holds checkpoints).
    pub fn create(run: &Path, config: T::Config, device: &Device) -> Result<Self> {
        if latest_checkpoint(run)?.is_some() {
            bail!(
                "{} already holds a run; continue it with `{} --resume {}` or choose another --run",
                run.display(),
                T::COMMAND,
                run.display()
            );
        }
        let task = checked_task::<T>(config)?;
        let data = task.load_data()?;
        task.config().save(run)?;
        let model = {
            let _rng = crate::device::rng_guard();
            device.seed(task.config().train().seed);
            task.init(device)
        };
        let layout = params::layout(&model);
        let values = params::collect(&model)
            .into_iter()
            .map(|p| p.values)
            .collect();
        // A fresh run starts a fresh log.
        fs::create_dir_all(run)?;
        fs::write(run.join("log.csv"), format!("{}\n", T::LOG_HEADER))?;
        Ok(Session {
            run: run.to_path_buf(),
            task,
            data,
            state: TrainState::new(values),
            skipped: Vec::new(),
            progress: false,
            optim_on_device: !crate::kernels::is_cpu(device),
            device: device.clone(),
            layout,
            meta: CheckpointMeta::fresh(),
        })
    }

    /// Reopens a run at its newest intact checkpoint; `update` may change the budgets.
    ///
    /// Newer checkpoints that cannot be read (a truncated tensor file, an unreadable
    /// `state.json`) are moved aside to `checkpoints/damaged-step-…` and listed in
    /// [`Session::skipped`] with what was wrong; `latest` then names the checkpoint resumed.
    pub fn resume(
        run: &Path,
        device: &Device,
        update: impl FnOnce(&mut TrainConfig),
    ) -> Result<Self> {
        let mut config = T::Config::load(run)?;
        update(config.train_mut());
        let mut task = checked_task::<T>(config)?;
        let layout = params::layout(&task.init(device));
        let found = load_newest_intact(run, &layout)
            .with_context(|| format!("resuming {}", run.display()))?;
        task.restore(found.meta.task_state.as_ref())
            .with_context(|| format!("resuming {}", found.dir.display()))?;
        if let Some(choices) = &found.meta.kernel_choices {
            crate::kernels::tune::pin(choices);
        }
        let data = task.load_data()?;
        task.config().save(run)?;
        let mut skipped = Vec::new();
        for (dir, problem) in found.skipped {
            let moved_to = set_aside(&dir)?;
            skipped.push(SkippedCheckpoint {
                dir,
                problem,
                moved_to,
            });
        }
        if !skipped.is_empty() {
            point_latest_at(run, &found.dir)?;
        }
        trim_log(run, found.meta.step)?;
        Ok(Session {
            run: run.to_path_buf(),
            task,
            data,
            state: found.state,
            skipped,
            progress: false,
            optim_on_device: !crate::kernels::is_cpu(device),
            device: device.clone(),
            layout,
            meta: found.meta,
        })
    }

    /// The run configuration.
    pub fn config(&self) -> &T::Config {
        self.task.config()
    }

    /// The network with the given weights on the inference (non-autodiff) device.
    pub fn model_with(&self, weights: &[Vec<f32>]) -> T::Model {
        params::assign(self.task.init(&self.device), weights, false)
    }

    /// Writes the task's preview of the EMA weights to `RUN/samples/step-N.png`, if it has one.
    pub fn preview(&self) -> Result<Option<PathBuf>> {
        if !self.task.wants_preview() {
            return Ok(None);
        }
        let path = self
            .run
            .join("samples")
            .join(format!("{}.png", checkpoint_name(self.state.step)));
        let ema = self.model_with(&self.state.ema);
        self.task.preview(&ema, &self.device, &path)?;
        Ok(Some(path))
    }

    /// Checkpoint, then the loss plot from the log.
    fn save(&mut self) -> Result<PathBuf> {
        self.meta.step = self.state.step;
        self.meta.task_state = self.task.state();
        let choices = crate::kernels::tune::snapshot();
        self.meta.kernel_choices = (!choices.is_empty()).then_some(choices);
        let dir = save_checkpoint(
            &self.run,
            &self.layout,
            &self.state,
            &self.meta,
            self.task.config().train().keep_checkpoints,
        )?;
        plot_loss(&self.run)?;
        Ok(dir)
    }

    /// The forward phase of step `step`: its batch, the loss, and the loss's value, refusing
    /// a non-finite one (the last good checkpoint stays in place).
    pub fn forward(&mut self, model: &T::Model, step: u64) -> Result<(Tensor<1>, f64)> {
        let device = model.devices()[0].clone();
        let batch = self.task.batch(&self.data, step, &device);
        let loss = self.task.loss(model, batch, step);
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
        Ok((loss, value))
    }

    /// The backward phase: every parameter's gradient, in parameter order.
    pub fn backward(model: &T::Model, loss: Tensor<1>) -> Vec<Vec<f32>> {
        collect_grads(model, &loss.backward())
    }

    /// The update phase: clipping, Adam, EMA on the host state, then the new weights in `model`.
    pub fn update(&mut self, model: T::Model, grads: &[Vec<f32>]) -> (T::Model, UpdateStats) {
        let stats = self.state.update(grads, &self.task.config().train().optim);
        (params::assign(model, &self.state.params, true), stats)
    }

    /// Trains until the step or time budget is reached.
    pub fn train(&mut self) -> Result<TrainSummary> {
        let precision = self.task.config().train().precision;
        crate::kernels::check_precision(precision, &self.device)
            .map_err(|e| anyhow::anyhow!("this run trains in {precision}: {e}"))?;
        crate::kernels::with_precision(precision, || self.train_in_scope())
    }

    fn train_in_scope(&mut self) -> Result<TrainSummary> {
        let tc = self.task.config().train().clone();
        let ad = self.device.clone().autodiff();
        let mut model = params::assign(self.task.init(&ad), &self.state.params, true);
        let start = Instant::now();
        let wall0 = self.meta.wall_seconds;
        let step0 = self.state.step;
        let target = tc.max_steps.unwrap_or(u64::MAX);
        let time_budget = tc.max_minutes.map(|m| m * 60.0);
        let bar = self
            .progress
            .then(|| step_progress_bar(T::LABEL, target, step0));
        let log_path = self.run.join("log.csv");
        let mut log = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let mut smoothed = if self.meta.loss.is_finite() {
            self.meta.loss
        } else {
            f64::NAN
        };
        let (mut last_log_t, mut last_log_step) = (Instant::now(), step0);
        let (mut loss_sum, mut since_log) = (0.0, 0u64);
        let mut last_save = Instant::now();
        let mut preview = None;
        let mut checkpoint = None;
        let mut on_device = self
            .optim_on_device
            .then(|| DeviceOptim::new(&self.state, &ad));
        loop {
            let elapsed = wall0 + start.elapsed().as_secs_f64();
            if self.state.step >= target || time_budget.is_some_and(|b| elapsed >= b) {
                break;
            }
            let step = self.state.step;
            let (loss, value) = match self.forward(&model, step) {
                Ok(v) => v,
                Err(e) => {
                    // Leave the host state at the last completed step, as the host update does.
                    if let Some(opt) = &on_device {
                        opt.download_into(&model, &mut self.state);
                    }
                    return Err(e);
                }
            };
            let (updated, stats) = match &mut on_device {
                Some(opt) => {
                    let out = opt.update(model, &loss.backward(), &tc.optim);
                    self.state.step = opt.step();
                    out
                }
                None => {
                    let grads = Self::backward(&model, loss);
                    self.update(model, &grads)
                }
            };
            model = updated;
            smoothed = if smoothed.is_finite() {
                0.98 * smoothed + 0.02 * value
            } else {
                value
            };
            loss_sum += value;
            since_log += 1;
            self.meta.images_seen += tc.batch_size as u64;
            self.meta.wall_seconds = wall0 + start.elapsed().as_secs_f64();
            self.meta.loss = smoothed;
            let n = self.state.step;
            if n.is_multiple_of(tc.log_every.max(1)) {
                let dt = last_log_t.elapsed().as_secs_f64();
                let row = LogRow {
                    step: n,
                    loss: value,
                    mean_loss: loss_sum / since_log as f64,
                    smoothed_loss: smoothed,
                    update: stats,
                    images_per_s: (n - last_log_step) as f64 * tc.batch_size as f64 / dt.max(1e-9),
                    wall_seconds: self.meta.wall_seconds,
                };
                let (line, message) = self.task.log_row(&row);
                writeln!(log, "{line}")?;
                log.flush()?;
                if let Some(pb) = &bar {
                    pb.set_message(message);
                }
                last_log_t = Instant::now();
                last_log_step = n;
                (loss_sum, since_log) = (0.0, 0);
            }
            if let Some(pb) = &bar {
                pb.set_position(n);
            }
            let save_now = tc.checkpoint_every > 0 && n.is_multiple_of(tc.checkpoint_every)
                || last_save.elapsed().as_secs_f64() > tc.checkpoint_minutes * 60.0;
            let preview_now = tc.sample_every > 0 && n.is_multiple_of(tc.sample_every);
            if let Some(opt) = on_device.as_ref().filter(|_| save_now || preview_now) {
                opt.download_into(&model, &mut self.state);
            }
            if save_now {
                checkpoint = Some(self.save()?);
                last_save = Instant::now();
            }
            if preview_now {
                preview = self.preview()?.or(preview);
            }
        }
        if let Some(opt) = &on_device {
            opt.download_into(&model, &mut self.state);
        }
        if let Some(pb) = bar {
            pb.finish_and_clear();
        }
        let name = checkpoint_name(self.state.step);
        let checkpoint = match checkpoint {
            Some(p) if p.ends_with(&name) => p,
            _ => self.save()?,
        };
        let preview_is_current = preview.as_ref().is_some_and(|p: &PathBuf| {
            p.file_stem().and_then(|s| s.to_str()) == Some(name.as_str())
        });
        if !preview_is_current {
            preview = self.preview()?.or(preview);
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
