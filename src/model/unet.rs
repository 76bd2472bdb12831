//! The ε-prediction U-Net of Ho et al. 2020 (appendix B), layer for layer the same network as
//! diffusers' `UNet2DModel` in its DDPM configuration, so diffusers weights load by path.

use burn::module::Module;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::nn::{Embedding, EmbeddingConfig, Linear};
use burn::tensor::activation::silu;
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::blocks::{
    AttentionBlock, Downsample, GroupNorm, ResBlock, Upsample, conv2d, linear, timestep_embedding,
};
use crate::diffusion::Denoiser;

/// Architecture hyper-parameters; serialised next to every checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UNetConfig {
    /// Image side (square images).
    pub image_size: usize,
    /// Image channels in and out (1 grey, 3 RGB).
    pub in_channels: usize,
    /// Base channel count `ch`.
    pub base_channels: usize,
    /// Channel multiplier per resolution level (`ch_mult`); one downsampling between levels.
    pub channel_mult: Vec<usize>,
    /// Residual blocks per level on the way down (the way up has one more).
    pub num_res_blocks: usize,
    /// Resolutions (image sides) at which self-attention follows every residual block.
    pub attention_resolutions: Vec<usize>,
    /// Dropout inside residual blocks.
    pub dropout: f64,
    /// GroupNorm groups.
    pub norm_groups: usize,
    /// GroupNorm ε.
    pub norm_eps: f64,
    /// Output channels (default: `in_channels`; 2·in_channels for a learned variance).
    #[serde(default)]
    pub out_channels: Option<usize>,
    /// Rows of the learned class embedding added to the time embedding (diffusers'
    /// `num_class_embeds`); `None` for an unconditional model. ddpm trains K classes with K + 1
    /// rows, the last being the null label ∅ of classifier-free guidance.
    #[serde(default)]
    pub num_class_embeds: Option<usize>,
}

impl UNetConfig {
    /// The paper's CIFAR-10 model: ch 128, ch_mult (1,2,2,2), 2 res blocks, attention at 16×16,
    /// dropout 0.1 — 35,746,307 parameters.
    pub fn cifar10() -> Self {
        UNetConfig {
            image_size: 32,
            in_channels: 3,
            base_channels: 128,
            channel_mult: vec![1, 2, 2, 2],
            num_res_blocks: 2,
            attention_resolutions: vec![16],
            dropout: 0.1,
            norm_groups: 32,
            norm_eps: 1e-6,
            out_channels: None,
            num_class_embeds: None,
        }
    }

    /// A small model for 28×28 grey images (MNIST, Fashion-MNIST) that trains on a laptop CPU:
    /// ch 32, ch_mult (1,2,2), 2 res blocks, attention at 7×7 — 1,623,169 parameters.
    pub fn small28() -> Self {
        UNetConfig {
            image_size: 28,
            in_channels: 1,
            base_channels: 32,
            channel_mult: vec![1, 2, 2],
            num_res_blocks: 2,
            attention_resolutions: vec![7],
            dropout: 0.0,
            norm_groups: 8,
            norm_eps: 1e-6,
            out_channels: None,
            num_class_embeds: None,
        }
    }

    /// A very small model for tests (ch 16, ch_mult (1,2), 1 res block, attention at half size).
    pub fn tiny(image_size: usize, in_channels: usize) -> Self {
        UNetConfig {
            image_size,
            in_channels,
            base_channels: 16,
            channel_mult: vec![1, 2],
            num_res_blocks: 1,
            attention_resolutions: vec![image_size.div_ceil(2)],
            dropout: 0.0,
            norm_groups: 4,
            norm_eps: 1e-6,
            out_channels: None,
            num_class_embeds: None,
        }
    }

    /// A preset by name: `cifar10`, `small28` (alias `small`), `tiny`.
    pub fn preset(name: &str) -> Option<Self> {
        match name {
            "cifar10" => Some(Self::cifar10()),
            "small28" | "small" => Some(Self::small28()),
            "tiny" => Some(Self::tiny(28, 1)),
            _ => None,
        }
    }

    /// K of a class-conditional model (its K + 1 embedding rows less the null label ∅).
    pub fn num_classes(&self) -> Option<usize> {
        self.num_class_embeds.map(|n| n.saturating_sub(1).max(1))
    }

    /// Side of the feature maps at each level.
    pub fn level_sizes(&self) -> Vec<usize> {
        let mut sizes = vec![self.image_size];
        for _ in 1..self.channel_mult.len() {
            let last = *sizes.last().unwrap();
            sizes.push(last.div_ceil(2));
        }
        sizes
    }

    /// Checks that the configuration describes a buildable network.
    pub fn validate(&self) -> Result<(), String> {
        if self.channel_mult.is_empty() {
            return Err("channel_mult must have at least one level".into());
        }
        if self.in_channels == 0 || self.base_channels == 0 || self.num_res_blocks == 0 {
            return Err("channels and res blocks must be positive".into());
        }
        if self.channel_mult[0] != 1 {
            return Err(
                "channel_mult must start with 1 (the first level keeps conv_in's width)".into(),
            );
        }
        let sizes = self.level_sizes();
        for (l, s) in sizes.iter().enumerate().skip(1) {
            if sizes[l - 1] != 2 * s {
                return Err(format!(
                    "image size {} cannot be halved {} times without remainder (level {l} is {}×{} from {}×{})",
                    self.image_size,
                    sizes.len() - 1,
                    s,
                    s,
                    sizes[l - 1],
                    sizes[l - 1]
                ));
            }
        }
        for &m in &self.channel_mult {
            if !(self.base_channels * m).is_multiple_of(self.norm_groups) {
                return Err(format!(
                    "{} channels are not divisible by {} GroupNorm groups",
                    self.base_channels * m,
                    self.norm_groups
                ));
            }
        }
        if self.num_class_embeds == Some(0) {
            return Err("num_class_embeds must be positive".into());
        }
        if self.out_channels == Some(0) {
            return Err("out_channels must be positive".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("dropout {} must be in [0, 1)", self.dropout));
        }
        Ok(())
    }

    /// The encoder half: time embedding, input convolution, down path and bottleneck (shared
    /// by the U-Net and the noisy-image classifier).
    pub fn init_encoder(&self, device: &Device) -> Encoder {
        let _rng = crate::device::rng_guard();
        if let Err(e) = self.validate() {
            panic!("invalid UNetConfig: {e}");
        }
        let ch = self.base_channels;
        let temb = 4 * ch;
        let (g, eps, drop) = (self.norm_groups, self.norm_eps, self.dropout);
        let sizes = self.level_sizes();
        let levels = self.channel_mult.len();
        let outs: Vec<usize> = self.channel_mult.iter().map(|m| m * ch).collect();

        let mut down_blocks = Vec::new();
        let mut c_prev = ch;
        for l in 0..levels {
            let c = outs[l];
            let attn = self.attention_resolutions.contains(&sizes[l]);
            let resnets = (0..self.num_res_blocks)
                .map(|j| {
                    ResBlock::new(
                        if j == 0 { c_prev } else { c },
                        c,
                        temb,
                        g,
                        eps,
                        drop,
                        device,
                    )
                })
                .collect();
            let attentions = if attn {
                (0..self.num_res_blocks)
                    .map(|_| AttentionBlock::new(c, g, eps, device))
                    .collect()
            } else {
                Vec::new()
            };
            down_blocks.push(DownBlock {
                resnets,
                attentions,
                downsamplers: if l + 1 < levels {
                    vec![Downsample::new(c, device)]
                } else {
                    Vec::new()
                },
            });
            c_prev = c;
        }
        let c_mid = outs[levels - 1];
        Encoder {
            time_embedding: TimestepEmbedding {
                linear_1: linear(ch, temb, 1.0, device),
                linear_2: linear(temb, temb, 1.0, device),
            },
            conv_in: conv2d(
                self.in_channels,
                ch,
                3,
                1,
                PaddingConfig2d::Explicit(1, 1, 1, 1),
                1.0,
                device,
            ),
            down_blocks,
            mid_block: MidBlock {
                resnets: vec![
                    ResBlock::new(c_mid, c_mid, temb, g, eps, drop, device),
                    ResBlock::new(c_mid, c_mid, temb, g, eps, drop, device),
                ],
                attentions: vec![AttentionBlock::new(c_mid, g, eps, device)],
            },
        }
    }

    /// Builds the network with the reference initialisation. The weights are drawn here, from
    /// the device's generator under [`crate::device::rng_guard`] (burn would draw them lazily,
    /// at first use, when another thread may be drawing too).
    pub fn init(&self, device: &Device) -> UNet {
        let _rng = crate::device::rng_guard();
        let unet = self.build(device);
        crate::params::materialize(&unet);
        unet
    }

    fn build(&self, device: &Device) -> UNet {
        let Encoder {
            time_embedding,
            conv_in,
            down_blocks,
            mid_block,
        } = self.init_encoder(device);
        let ch = self.base_channels;
        let temb = 4 * ch;
        let (g, eps, drop) = (self.norm_groups, self.norm_eps, self.dropout);
        let sizes = self.level_sizes();
        let levels = self.channel_mult.len();
        let outs: Vec<usize> = self.channel_mult.iter().map(|m| m * ch).collect();

        // diffusers' channel bookkeeping for the way up: each up block has num_res_blocks + 1
        // resnets; the skip of the last one comes from the level below.
        let mut up_blocks = Vec::new();
        let mut c_out = outs[levels - 1];
        for i in 0..levels {
            let l = levels - 1 - i;
            let c_prev_out = c_out;
            c_out = outs[l];
            let c_in = outs[l.saturating_sub(1)];
            let attn = self.attention_resolutions.contains(&sizes[l]);
            let n = self.num_res_blocks + 1;
            let resnets = (0..n)
                .map(|j| {
                    let skip = if j == n - 1 { c_in } else { c_out };
                    let res_in = if j == 0 { c_prev_out } else { c_out };
                    ResBlock::new(res_in + skip, c_out, temb, g, eps, drop, device)
                })
                .collect();
            let attentions = if attn {
                (0..n)
                    .map(|_| AttentionBlock::new(c_out, g, eps, device))
                    .collect()
            } else {
                Vec::new()
            };
            up_blocks.push(UpBlock {
                resnets,
                attentions,
                upsamplers: if l > 0 {
                    vec![Upsample::new(c_out, device)]
                } else {
                    Vec::new()
                },
            });
        }

        let temb_dim = 4 * ch;
        UNet {
            time_embedding,
            class_embedding: self
                .num_class_embeds
                .map(|n| EmbeddingConfig::new(n, temb_dim).init(device)),
            conv_in,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: GroupNorm::new(g, ch, eps, device),
            conv_out: conv2d(
                ch,
                self.out_channels.unwrap_or(self.in_channels),
                3,
                1,
                PaddingConfig2d::Explicit(1, 1, 1, 1),
                0.0,
                device,
            ),
            base_channels: ch,
        }
    }
}

/// The parts of the U-Net before the way up.
pub struct Encoder {
    /// Time-embedding MLP.
    pub time_embedding: TimestepEmbedding,
    /// 3×3 input convolution.
    pub conv_in: Conv2d,
    /// Encoder levels.
    pub down_blocks: Vec<DownBlock>,
    /// Bottleneck.
    pub mid_block: MidBlock,
}

/// Two dense layers on the sinusoidal embedding: ch → 4ch → 4ch.
#[derive(Module, Debug)]
pub struct TimestepEmbedding {
    /// ch → 4ch.
    pub linear_1: Linear,
    /// 4ch → 4ch.
    pub linear_2: Linear,
}

impl TimestepEmbedding {
    /// SiLU(MLP(sinusoidal(t))): every residual block applies SiLU to the embedding first, so
    /// it is done once here.
    pub fn embed(&self, t: &[f32], base_channels: usize, device: &Device) -> Tensor<2> {
        self.embed_with(t, base_channels, None, device)
    }

    /// [`Self::embed`] with a class embedding added before the final SiLU.
    pub fn embed_with(
        &self,
        t: &[f32],
        base_channels: usize,
        class_emb: Option<Tensor<2>>,
        device: &Device,
    ) -> Tensor<2> {
        let emb = timestep_embedding(t, base_channels, device);
        let h = self.linear_2.forward(silu(self.linear_1.forward(emb)));
        silu(match class_emb {
            Some(c) => h + c,
            None => h,
        })
    }
}

/// The down path shared by the U-Net and the classifier: conv_in → down blocks → bottleneck.
/// With `skips`, every activation the U-Net's way up concatenates is recorded there.
pub fn encode(
    conv_in: &Conv2d,
    down_blocks: &[DownBlock],
    mid_block: &MidBlock,
    x: Tensor<4>,
    temb: &Tensor<2>,
    train: bool,
    mut skips: Option<&mut Vec<Tensor<4>>>,
) -> Tensor<4> {
    let mut h = crate::kernels::conv2d(conv_in, x);
    let mut keep = |h: &Tensor<4>| {
        if let Some(s) = skips.as_deref_mut() {
            s.push(h.clone());
        }
    };
    keep(&h);
    for block in down_blocks {
        for (j, res) in block.resnets.iter().enumerate() {
            h = res.forward(h, temb.clone(), train);
            if let Some(attn) = block.attentions.get(j) {
                h = attn.forward(h);
            }
            keep(&h);
        }
        for down in &block.downsamplers {
            h = down.forward(h);
            keep(&h);
        }
    }
    h = mid_block.resnets[0].forward(h, temb.clone(), train);
    h = mid_block.attentions[0].forward(h);
    mid_block.resnets[1].forward(h, temb.clone(), train)
}

/// One resolution level on the way down.
#[derive(Module, Debug)]
pub struct DownBlock {
    /// Residual blocks.
    pub resnets: Vec<ResBlock>,
    /// Attention after each residual block (empty at levels without attention).
    pub attentions: Vec<AttentionBlock>,
    /// The downsampler (empty at the last level).
    pub downsamplers: Vec<Downsample>,
}

/// The bottleneck: res → attention → res.
#[derive(Module, Debug)]
pub struct MidBlock {
    /// Two residual blocks.
    pub resnets: Vec<ResBlock>,
    /// One attention block between them.
    pub attentions: Vec<AttentionBlock>,
}

/// One resolution level on the way up.
#[derive(Module, Debug)]
pub struct UpBlock {
    /// Residual blocks, each fed the concatenation with a skip connection.
    pub resnets: Vec<ResBlock>,
    /// Attention after each residual block (empty at levels without attention).
    pub attentions: Vec<AttentionBlock>,
    /// The upsampler (empty at the top level).
    pub upsamplers: Vec<Upsample>,
}

/// The U-Net ε_θ(x_t, t).
#[derive(Module, Debug)]
pub struct UNet {
    /// Time-embedding MLP.
    pub time_embedding: TimestepEmbedding,
    /// Class embedding added to the time embedding (class-conditional models).
    pub class_embedding: Option<Embedding>,
    /// 3×3 input convolution.
    pub conv_in: Conv2d,
    /// Encoder levels.
    pub down_blocks: Vec<DownBlock>,
    /// Bottleneck.
    pub mid_block: MidBlock,
    /// Decoder levels.
    pub up_blocks: Vec<UpBlock>,
    /// Final GroupNorm.
    pub conv_norm_out: GroupNorm,
    /// 3×3 output convolution, zero-initialised.
    pub conv_out: Conv2d,
    /// ch, the width of the sinusoidal embedding.
    pub base_channels: usize,
}

impl UNet {
    /// ε_θ(x, t) with `t` the timestep index fed to the sinusoidal embedding; `train` enables
    /// dropout.
    pub fn forward(&self, x: Tensor<4>, t: &[f32], train: bool) -> Tensor<4> {
        self.forward_with(x, t, None, train)
    }

    /// The output for class labels `y` (class-conditional models; ignored by unconditional
    /// ones): the class embedding is added to the time embedding before its final SiLU, as
    /// diffusers' `UNet2DModel` adds `class_embedding(y)` to `time_embedding(t)`.
    pub fn forward_with(
        &self,
        x: Tensor<4>,
        t: &[f32],
        y: Option<&[usize]>,
        train: bool,
    ) -> Tensor<4> {
        let device = x.device();
        let class_emb = match (&self.class_embedding, y) {
            (Some(table), Some(y)) => {
                let rows = table.weight.dims()[0];
                // Out-of-range labels mean ∅ (the last row), so an oracle-style "label ≥ K" works.
                let idx: Vec<i64> = y.iter().map(|&c| c.min(rows - 1) as i64).collect();
                let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [y.len()]), &device);
                Some(table.weight.val().select(0, idx))
            }
            _ => None,
        };
        let temb = self
            .time_embedding
            .embed_with(t, self.base_channels, class_emb, &device);
        let mut skips = Vec::new();
        let mut h = encode(
            &self.conv_in,
            &self.down_blocks,
            &self.mid_block,
            x,
            &temb,
            train,
            Some(&mut skips),
        );

        for block in &self.up_blocks {
            for (j, res) in block.resnets.iter().enumerate() {
                let skip = skips.pop().expect("one skip per up-path residual block");
                h = res.forward(Tensor::cat(vec![h, skip], 1), temb.clone(), train);
                if let Some(attn) = block.attentions.get(j) {
                    h = attn.forward(h);
                }
            }
            for up in &block.upsamplers {
                h = up.forward(h);
            }
        }

        crate::kernels::conv2d(&self.conv_out, self.conv_norm_out.forward_silu(h))
    }
}

impl Denoiser for UNet {
    fn forward(&self, x_t: Tensor<4>, t: &[usize], y: Option<&[usize]>) -> Tensor<4> {
        let tf: Vec<f32> = t.iter().map(|&i| i as f32).collect();
        self.forward_with(x_t, &tf, y, false)
    }
}
