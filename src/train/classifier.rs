//! Training the noisy-image classifier of classifier guidance: cross-entropy on x_t with
//! t ~ U{1..T} (or on clean images for the evaluation classifier), with the same optimiser,
//! run folders, atomic checkpoints and exact resume as diffusion training.

use anyhow::{Result, bail};
use burn::tensor::{Device, Tensor, TensorData};
use rand::{Rng, SeedableRng, rngs::StdRng};

use super::session::{LogRow, Session, Task};
use crate::data::{self, ImageSet, Loader, Split};
use crate::diffusion::GaussianDiffusion;
use crate::model::classifier::NoisyClassifier;
use crate::sampling::NoiseSource;

pub use super::config::ClassifierRunConfig;

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
pub type ClassifierTrainer = Session<ClassifierTask>;

/// The classifier's step (cross-entropy on x_t, or on clean images) and log columns
/// (accuracy by quarter of the timestep range).
pub struct ClassifierTask {
    /// The run's configuration.
    pub config: ClassifierRunConfig,
    diffusion: GaussianDiffusion,
    accuracy: AccuracyByT,
}

/// The inputs of one classifier step.
pub struct ClassifierBatch {
    /// Noisy (or clean) images.
    pub x_t: Tensor<4>,
    /// Their timestep indices (all 0 for clean images).
    pub t: Vec<usize>,
    /// Their classes.
    pub labels: Vec<usize>,
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

impl ClassifierTask {
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
}

impl Task for ClassifierTask {
    type Config = ClassifierRunConfig;
    type Model = NoisyClassifier;
    type Batch = ClassifierBatch;
    const LABEL: &'static str = "classifier";
    const COMMAND: &'static str = "ddpm classifier train";
    const LOG_HEADER: &'static str =
        "step,loss,accuracy,acc_t_q1,acc_t_q2,acc_t_q3,acc_t_q4,lr,wall_s";

    fn new(config: ClassifierRunConfig) -> Result<Self> {
        let diffusion = GaussianDiffusion::new(config.diffusion.clone());
        Ok(ClassifierTask {
            config,
            diffusion,
            accuracy: AccuracyByT::default(),
        })
    }

    fn config(&self) -> &ClassifierRunConfig {
        &self.config
    }

    fn init(&self, device: &Device) -> NoisyClassifier {
        self.config.model.init(device)
    }

    fn load_data(&self) -> Result<ImageSet> {
        load_labelled(&self.config, Split::Train)
    }

    fn batch(&self, data: &ImageSet, step: u64, device: &Device) -> ClassifierBatch {
        let tc = &self.config.train;
        let loader = Loader::new(data, tc.batch_size, tc.hflip, tc.seed);
        let (x0, labels) = loader.batch(step, device);
        let (x_t, t) = self.noisy(x0, tc.seed.wrapping_mul(31).wrapping_add(step));
        let labels = labels.iter().map(|&l| l as usize).collect();
        ClassifierBatch { x_t, t, labels }
    }

    fn loss(&mut self, model: &NoisyClassifier, batch: ClassifierBatch, _step: u64) -> Tensor<1> {
        let ClassifierBatch { x_t, t, labels } = batch;
        let tf: Vec<f32> = t.iter().map(|&i| i as f32).collect();
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
        self.accuracy
            .add(&t, &correct, self.diffusion.num_timesteps());
        NoisyClassifier::cross_entropy(logits, &labels).0
    }

    fn log_row(&mut self, r: &LogRow) -> (String, String) {
        let acc = std::mem::take(&mut self.accuracy);
        (
            format!(
                "{},{:.5},{:.4},{:.4},{:.4},{:.4},{:.4},{:.3e},{:.1}",
                r.step,
                r.mean_loss,
                acc.overall(),
                acc.quarter(0),
                acc.quarter(1),
                acc.quarter(2),
                acc.quarter(3),
                r.update.lr,
                r.wall_seconds
            ),
            format!("loss {:.3} | acc {:.3}", r.mean_loss, acc.overall()),
        )
    }
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
