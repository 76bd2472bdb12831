//! The noisy-image classifier p_φ(y | x_t, t) of classifier guidance (Dhariwal & Nichol 2021):
//! the U-Net's encoder half (same blocks, same time conditioning) with a pooled linear head.

use burn::module::Module;
use burn::nn::Linear;
use burn::nn::conv::Conv2d;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::blocks::{GroupNorm, linear};
use super::unet::{DownBlock, Encoder, MidBlock, TimestepEmbedding, UNetConfig, encode};
use crate::sampling::ClassifierGrad;

/// Architecture of the classifier: an encoder like the U-Net's plus the number of classes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassifierConfig {
    /// Encoder hyper-parameters (the decoder fields are unused).
    pub backbone: UNetConfig,
    /// Number of classes K.
    pub num_classes: usize,
}

impl ClassifierConfig {
    /// Builds the classifier (head zero-initialised: uniform predictions at the start).
    /// The weights are drawn here, as [`UNetConfig::init`] draws them.
    pub fn init(&self, device: &Device) -> NoisyClassifier {
        let _rng = crate::device::rng_guard();
        let model = self.build(device);
        crate::params::materialize(&model);
        model
    }

    fn build(&self, device: &Device) -> NoisyClassifier {
        let Encoder {
            time_embedding,
            conv_in,
            down_blocks,
            mid_block,
        } = self.backbone.init_encoder(device);
        let c =
            self.backbone.base_channels * self.backbone.channel_mult.last().copied().unwrap_or(1);
        NoisyClassifier {
            time_embedding,
            conv_in,
            down_blocks,
            mid_block,
            out_norm: GroupNorm::new(self.backbone.norm_groups, c, self.backbone.norm_eps, device),
            head: linear(c, self.num_classes, 0.0, device),
            base_channels: self.backbone.base_channels,
        }
    }
}

/// p_φ(y | x_t, t): logits over the classes.
#[derive(Module, Debug)]
pub struct NoisyClassifier {
    /// Time-embedding MLP.
    pub time_embedding: TimestepEmbedding,
    /// 3×3 input convolution.
    pub conv_in: Conv2d,
    /// Encoder levels.
    pub down_blocks: Vec<DownBlock>,
    /// Bottleneck.
    pub mid_block: MidBlock,
    /// GroupNorm before pooling.
    pub out_norm: GroupNorm,
    /// Pooled features → logits.
    pub head: Linear,
    /// ch, the width of the sinusoidal embedding.
    pub base_channels: usize,
}

impl NoisyClassifier {
    /// Logits [B, K] for x_t at timestep indices `t`.
    pub fn forward(&self, x: Tensor<4>, t: &[f32], train: bool) -> Tensor<2> {
        let temb = self
            .time_embedding
            .embed(t, self.base_channels, &x.device());
        let h = encode(
            &self.conv_in,
            &self.down_blocks,
            &self.mid_block,
            x,
            &temb,
            train,
            None,
        );
        let [b, c, _, _] = h.dims();
        let pooled = self
            .out_norm
            .forward_silu(h)
            .mean_dim(3)
            .mean_dim(2)
            .reshape([b, c]);
        self.head.forward(pooled)
    }

    /// Mean cross-entropy of `logits` against `labels`, and the number of correct argmaxes.
    pub fn cross_entropy(logits: Tensor<2>, labels: &[usize]) -> (Tensor<1>, usize) {
        let [b, k] = logits.dims();
        let device = logits.device();
        let pred: Vec<i64> = logits
            .clone()
            .argmax(1)
            .into_data()
            .convert::<i64>()
            .try_into_vec()
            .expect("argmax");
        let correct = pred
            .iter()
            .zip(labels)
            .filter(|(p, y)| **p as usize == **y)
            .count();
        let onehot = one_hot(labels, k, &device);
        let loss = (log_softmax(logits, 1) * onehot)
            .sum()
            .div_scalar(-(b as f64));
        (loss.reshape([1]), correct)
    }
}

/// [B, K] one-hot rows.
pub fn one_hot(labels: &[usize], k: usize, device: &Device) -> Tensor<2> {
    let mut v = vec![0f32; labels.len() * k];
    for (i, &y) in labels.iter().enumerate() {
        v[i * k + y] = 1.0;
    }
    Tensor::from_data(TensorData::new(v, [labels.len(), k]), device)
}

/// A trained classifier as the gradient source of classifier guidance. Holds the model on an
/// autodiff device; inputs and outputs stay on the caller's device.
pub struct ClassifierGuide {
    model: NoisyClassifier,
}

impl ClassifierGuide {
    /// Wraps a classifier (moved to the autodiff variant of its device).
    pub fn new(model: NoisyClassifier, device: &Device) -> Self {
        ClassifierGuide {
            model: model.to_device(&device.clone().autodiff()).no_grad(),
        }
    }
}

impl ClassifierGrad for ClassifierGuide {
    fn grad_log_prob(&self, x_t: Tensor<4>, t: &[usize], y: &[usize]) -> Tensor<4> {
        let device = x_t.device();
        let ad = device.clone().autodiff();
        let x = Tensor::<4>::from_data(x_t.into_data(), &ad).require_grad();
        let tf: Vec<f32> = t.iter().map(|&i| i as f32).collect();
        let logits = self.model.forward(x.clone(), &tf, false);
        let k = logits.dims()[1];
        // Samples are independent, so the gradient of the summed log-probabilities is each
        // sample's own ∇ log p_φ(y_b | x_b).
        let selected = (log_softmax(logits, 1) * one_hot(y, k, &ad)).sum();
        let grads = selected.backward();
        let g = x.grad(&grads).expect("input gradient");
        Tensor::from_data(g.into_data(), &device)
    }
}
