//! Training the diffusion model, Algorithm 1 of Ho et al. 2020: x_0 from the data,
//! t ~ U{1..T}, ε ~ N(0, I), one gradient step on the loss; clipping, Adam, warm-up and EMA
//! follow in the shared loop ([`super::session`]), which also writes the previews this task
//! draws from the EMA weights.
//!
//! All randomness of step `n` (batch order, flips, t, ε, dropout) is a pure function of
//! (seed, n) and, with importance-sampled t, of the sampler's loss history, which checkpoints
//! carry; so a resumed run follows the uninterrupted trajectory bit for bit on the CPU.

use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::tensor::{Device, Tensor};
use rand::{Rng, SeedableRng, rngs::StdRng};

use super::config::RunConfig;
use super::resample::{LossSecondMomentSampler, SamplerState, TimestepSampling};
use super::session::{LogRow, Session, Task};
use crate::data::{self, ImageSet, Loader, Split};
use crate::diffusion::{GaussianDiffusion, LossType};
use crate::model::UNet;
use crate::sampling::{
    Conditioning, Ddim, LoopOptions, NoiseSource, Spacing, sample_loop_with, timestep_subsequence,
};

pub use super::session::{TrainSummary, collect_grads, step_progress_bar};

/// A diffusion-model run being trained.
pub type Trainer = Session<DiffusionTask>;

/// The diffusion model's step (Algorithm 1) and log columns.
pub struct DiffusionTask {
    /// The run's configuration.
    pub config: RunConfig,
    /// The diffusion process.
    pub diffusion: GaussianDiffusion,
    /// The importance sampler of t (`t_sampling = importance`).
    pub t_sampler: Option<LossSecondMomentSampler>,
}

/// The inputs of one step of Algorithm 1.
pub struct DiffusionBatch {
    /// Class labels after label dropout (class-conditional models only; the null label is K).
    pub labels: Option<Vec<usize>>,
    /// Training images in [−1, 1].
    pub x0: Tensor<4>,
    /// Timestep indices (paper's t − 1).
    pub t: Vec<usize>,
    /// The noise ε.
    pub eps: Tensor<4>,
    /// Importance weights 1/(T·p_t) of the samples (importance-sampled t only).
    pub weights: Option<Vec<f64>>,
}

/// A well-mixed stream seed for step `step` of a run with `seed` (`salt` picks the stream).
pub(crate) fn mix(seed: u64, step: u64, salt: u64) -> u64 {
    // SplitMix64 finaliser over the combination: distinct, well-mixed streams per step.
    let mut z = seed
        .wrapping_add(step.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(salt.wrapping_mul(0xBF58_476D_1CE4_E5B9));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
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
    if let Some(k) = m.num_classes() {
        let Some(labels) = &set.labels else {
            bail!(
                "a class-conditional model needs labelled data; `{}` has no labels (use a data set with labels or class sub-folders)",
                config.train.data
            );
        };
        if let Some(&y) = labels.iter().max()
            && y as usize >= k
        {
            bail!(
                "data `{}` has label {y}, but the model has {k} classes",
                config.train.data
            );
        }
    }
    Ok(set)
}

impl Task for DiffusionTask {
    type Config = RunConfig;
    type Model = UNet;
    type Batch = DiffusionBatch;
    const LABEL: &'static str = "train";
    const COMMAND: &'static str = "ddpm train";
    const LOG_HEADER: &'static str = "step,loss,lr,grad_norm,images_per_s,wall_s";

    fn new(config: RunConfig) -> Result<Self> {
        config
            .model
            .validate()
            .map_err(|e| anyhow::anyhow!("model config: {e}"))?;
        let diffusion = GaussianDiffusion::new(config.diffusion.clone());
        let m = &config.model;
        let want = diffusion.output_channels(m.in_channels);
        let have = m.out_channels.unwrap_or(m.in_channels);
        if want != have {
            bail!(
                "model config: {have} output channels, but σ² = {:?} needs {want} ({} image channels{})",
                config.diffusion.variance,
                m.in_channels,
                if want > m.in_channels {
                    " + as many for the learned variance"
                } else {
                    ""
                }
            );
        }
        if !(0.0..1.0).contains(&config.train.label_dropout) {
            bail!(
                "label dropout {} must be in [0, 1)",
                config.train.label_dropout
            );
        }
        let t_sampler = match config.train.t_sampling {
            TimestepSampling::Uniform => None,
            TimestepSampling::Importance => {
                if config.diffusion.loss != LossType::Vlb {
                    bail!(
                        "importance sampling of t weights the terms of the bound: it needs --loss vlb (this run has {:?})",
                        config.diffusion.loss
                    );
                }
                Some(LossSecondMomentSampler::new(diffusion.num_timesteps()))
            }
        };
        Ok(DiffusionTask {
            config,
            diffusion,
            t_sampler,
        })
    }

    fn config(&self) -> &RunConfig {
        &self.config
    }

    fn init(&self, device: &Device) -> UNet {
        self.config.model.init(device)
    }

    fn load_data(&self) -> Result<ImageSet> {
        load_data(&self.config)
    }

    fn batch(&self, data: &ImageSet, step: u64, device: &Device) -> DiffusionBatch {
        let tc = &self.config.train;
        let loader = Loader::new(data, tc.batch_size, tc.hflip, tc.seed);
        let (x0, labels) = loader.batch(step, device);
        let b = x0.dims()[0];
        let mut rng = StdRng::seed_from_u64(mix(tc.seed, step, 1));
        let (t, weights) = match &self.t_sampler {
            Some(s) => {
                let (t, w) = s.sample(&mut rng, b);
                (t, Some(w))
            }
            None => (
                (0..b)
                    .map(|_| rng.random_range(0..self.diffusion.num_timesteps()))
                    .collect(),
                None,
            ),
        };
        let mut noise = NoiseSource::new(mix(tc.seed, step, 2));
        let eps = noise.normal(x0.dims(), device);
        // Label dropout to ∅ (label K), drawn from its own stream so unconditional runs see
        // exactly the batches they always did.
        let labels = self.config.model.num_classes().map(|k| {
            let mut drop = StdRng::seed_from_u64(mix(tc.seed, step, 4));
            labels
                .iter()
                .map(|&y| {
                    if drop.random::<f64>() < tc.label_dropout {
                        k
                    } else {
                        y as usize
                    }
                })
                .collect()
        });
        DiffusionBatch {
            x0,
            t,
            eps,
            labels,
            weights,
        }
    }

    fn loss(&mut self, model: &UNet, batch: DiffusionBatch, step: u64) -> Tensor<1> {
        let DiffusionBatch {
            x0,
            t,
            eps,
            labels,
            weights,
        } = batch;
        let x_t = self.diffusion.q_sample(x0.clone(), &t, eps.clone());
        let tf: Vec<f32> = t.iter().map(|&i| i as f32).collect();
        let raw = if self.config.model.dropout > 0.0 {
            // The dropout keys are drawn during the forward pass.
            let _rng = crate::device::rng_guard();
            model.devices()[0].seed(mix(self.config.train.seed, step, 3));
            model.forward_with(x_t.clone(), &tf, labels.as_deref(), true)
        } else {
            model.forward_with(x_t.clone(), &tf, labels.as_deref(), true)
        };
        match (&mut self.t_sampler, weights) {
            (Some(sampler), Some(w)) => {
                // Nichol & Dhariwal 2021, eq. 17: record the unweighted terms, then weight each
                // by 1/(T·p_t) so that the batch mean stays an unbiased estimate of L_vlb/T.
                let terms = self.diffusion.vlb_per_sample(raw, x0, eps, x_t, &t);
                let values = terms
                    .clone()
                    .into_data()
                    .convert::<f64>()
                    .try_into_vec::<f64>()
                    .expect("a float tensor converts to f64");
                sampler.update(&t, &values);
                let device = terms.device();
                let w = Tensor::<1>::from_data(
                    burn::tensor::TensorData::new(
                        w.iter().map(|&x| x as f32).collect::<Vec<_>>(),
                        [w.len()],
                    ),
                    &device,
                );
                (terms * w).mean()
            }
            _ => self.diffusion.training_loss(raw, x0, eps, x_t, &t),
        }
    }

    fn state(&self) -> Option<serde_json::Value> {
        self.t_sampler
            .as_ref()
            .and_then(|s| serde_json::to_value(s.state()).ok())
    }

    fn restore(&mut self, state: Option<&serde_json::Value>) -> Result<()> {
        let Some(sampler) = &mut self.t_sampler else {
            return Ok(());
        };
        match state {
            Some(v) => {
                let s: SamplerState = serde_json::from_value(v.clone())
                    .context("state.json: unreadable importance-sampler state")?;
                *sampler = LossSecondMomentSampler::from_state(self.diffusion.num_timesteps(), &s)
                    .context("state.json")?;
            }
            None => bail!(
                "state.json: the run samples t by importance but the checkpoint has no sampler state"
            ),
        }
        Ok(())
    }

    fn log_row(&mut self, r: &LogRow) -> (String, String) {
        (
            format!(
                "{},{:.6},{:.3e},{:.4},{:.2},{:.1}",
                r.step, r.loss, r.update.lr, r.update.grad_norm, r.images_per_s, r.wall_seconds
            ),
            format!("loss {:.4} | {:.1} img/s", r.smoothed_loss, r.images_per_s),
        )
    }

    fn wants_preview(&self) -> bool {
        self.config.train.preview_count > 0
    }

    /// A grid sampled from the EMA weights with DDIM (Song et al. 2021, η = 0, quadratic
    /// spacing, `preview_steps` steps) and a fixed seed, so grids of a run are comparable.
    fn preview(&self, ema: &UNet, device: &Device, path: &Path) -> Result<()> {
        let tc = &self.config.train;
        let m = &self.config.model;
        let ts = timestep_subsequence(
            &self.diffusion.schedule,
            tc.preview_steps,
            Spacing::Quadratic,
        );
        let sampler = Ddim::new(ts, 0.0, true);
        let mut noise = NoiseSource::new(tc.seed ^ 0x5EED);
        let n = tc.preview_count;
        // Class-conditional models: sample i of class i mod K, so the grid shows every class.
        let conditioning = m.num_classes().map(|k| Conditioning {
            labels: (0..n).map(|i| i % k).collect(),
            cfg: None,
        });
        let opts = LoopOptions {
            conditioning: conditioning.as_ref(),
            ..Default::default()
        };
        let x_t = noise.normal([n, m.in_channels, m.image_size, m.image_size], device);
        let x = sample_loop_with(
            &self.diffusion,
            &sampler,
            ema,
            x_t,
            &mut noise,
            &opts,
            |_, _| {},
        );
        crate::image::save_grid(x, (n as f64).sqrt().ceil() as usize, path)
    }
}
