//! The U-Net's building blocks (Ho et al. 2020, appendix B; the reference `diffusion_tf`
//! model and diffusers' `UNet2DModel` in its DDPM configuration).
//!
//! Field names follow diffusers' parameter names (`norm1`, `conv1`, `time_emb_proj`, `to_q`, …)
//! so that a diffusers checkpoint maps onto these modules by path.

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Initializer, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::softmax;
use burn::tensor::{Device, Tensor, TensorData};

/// Sinusoidal timestep embedding of the reference code (Vaswani et al. 2017 as used by
/// Ho et al.): `emb[j] = sin(t·f_j)` for j < d/2 and `cos(t·f_{j−d/2})` after, with
/// `f_j = exp(−ln(10000)·j/(d/2 − 1))` (diffusers: `flip_sin_to_cos=False`, `freq_shift=1`).
pub fn timestep_embedding(t: &[f32], dim: usize, device: &Device) -> Tensor<2> {
    let half = dim / 2;
    let denom = (half as f64 - 1.0).max(1.0);
    let mut data = vec![0f32; t.len() * dim];
    for (b, &tb) in t.iter().enumerate() {
        for j in 0..half {
            let freq = (-(10000f64.ln()) * j as f64 / denom).exp() as f32;
            // Computed in f32 like the reference implementations, so features match them.
            let arg = tb * freq;
            data[b * dim + j] = arg.sin();
            data[b * dim + half + j] = arg.cos();
        }
    }
    Tensor::from_data(TensorData::new(data, [t.len(), dim]), device)
}

/// Glorot-uniform ("fan_avg") weights scaled by `scale` and zero biases: the reference code's
/// `default_init(scale)`. `scale = 0` gives the zero-initialised output layers.
fn fan_avg_uniform(scale: f64) -> Initializer {
    if scale == 0.0 {
        Initializer::Zeros
    } else {
        // variance_scaling(scale, 'fan_avg', 'uniform'): limit = √(3·scale / ((fan_in+fan_out)/2)).
        Initializer::XavierUniform { gain: scale.sqrt() }
    }
}

/// A 2-D convolution with the reference initialisation.
pub fn conv2d(
    c_in: usize,
    c_out: usize,
    kernel: usize,
    stride: usize,
    padding: PaddingConfig2d,
    init_scale: f64,
    device: &Device,
) -> Conv2d {
    let mut conv = Conv2dConfig::new([c_in, c_out], [kernel, kernel])
        .with_stride([stride, stride])
        .with_padding(padding)
        .with_initializer(fan_avg_uniform(init_scale))
        .init(device);
    conv.bias = Some(Param::from_tensor(Tensor::zeros([c_out], device)));
    conv
}

/// A dense layer with the reference initialisation (weights stored [in, out]).
pub fn linear(d_in: usize, d_out: usize, init_scale: f64, device: &Device) -> Linear {
    let mut lin = LinearConfig::new(d_in, d_out)
        .with_initializer(fan_avg_uniform(init_scale))
        .init(device);
    lin.bias = Some(Param::from_tensor(Tensor::zeros([d_out], device)));
    lin
}

/// Group normalisation (Wu & He 2018) with a per-channel affine map.
#[derive(Module, Debug)]
pub struct GroupNorm {
    /// γ, one per channel.
    pub weight: Param<Tensor<1>>,
    /// β, one per channel.
    pub bias: Param<Tensor<1>>,
    /// Number of groups.
    pub num_groups: usize,
    /// Added to the variance.
    pub eps: f64,
}

impl GroupNorm {
    /// γ = 1, β = 0.
    pub fn new(num_groups: usize, channels: usize, eps: f64, device: &Device) -> Self {
        assert!(
            channels.is_multiple_of(num_groups),
            "GroupNorm: {channels} channels do not split into {num_groups} groups"
        );
        GroupNorm {
            weight: Param::from_tensor(Tensor::ones([channels], device)),
            bias: Param::from_tensor(Tensor::zeros([channels], device)),
            num_groups,
            eps,
        }
    }

    /// Normalises each (sample, group) to zero mean and unit (biased) variance, then applies γ, β.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.forward_act(x, false)
    }

    /// `silu(self.forward(x))`, fused on the CPU.
    pub fn forward_silu(&self, x: Tensor<4>) -> Tensor<4> {
        self.forward_act(x, true)
    }

    fn forward_act(&self, x: Tensor<4>, silu: bool) -> Tensor<4> {
        crate::kernels::group_norm(
            x,
            self.weight.val(),
            self.bias.val(),
            self.num_groups,
            self.eps,
            silu,
        )
    }
}

/// Wide-ResNet block with the time embedding added after the first convolution
/// (diffusers' `ResnetBlock2D`, `time_embedding_norm="default"`).
#[derive(Module, Debug)]
pub struct ResBlock {
    /// GroupNorm before conv1.
    pub norm1: GroupNorm,
    /// 3×3, in → out.
    pub conv1: Conv2d,
    /// Projects SiLU(temb) to `out` channels.
    pub time_emb_proj: Linear,
    /// GroupNorm before conv2.
    pub norm2: GroupNorm,
    /// 3×3, out → out, zero-initialised so the block starts as the identity.
    pub conv2: Conv2d,
    /// 1×1 projection of the skip path when in ≠ out.
    pub conv_shortcut: Option<Conv2d>,
    /// Dropout probability before conv2.
    pub dropout: f64,
}

impl ResBlock {
    /// A block mapping `c_in` to `c_out` channels.
    pub fn new(
        c_in: usize,
        c_out: usize,
        temb_dim: usize,
        groups: usize,
        eps: f64,
        dropout: f64,
        device: &Device,
    ) -> Self {
        let same = PaddingConfig2d::Explicit(1, 1, 1, 1);
        ResBlock {
            norm1: GroupNorm::new(groups, c_in, eps, device),
            conv1: conv2d(c_in, c_out, 3, 1, same.clone(), 1.0, device),
            time_emb_proj: linear(temb_dim, c_out, 1.0, device),
            norm2: GroupNorm::new(groups, c_out, eps, device),
            conv2: conv2d(c_out, c_out, 3, 1, same, 0.0, device),
            conv_shortcut: (c_in != c_out)
                .then(|| conv2d(c_in, c_out, 1, 1, PaddingConfig2d::Valid, 1.0, device)),
            dropout,
        }
    }

    /// `x + conv2(drop(silu(norm2(conv1(silu(norm1(x))) + proj(silu(temb))))))`.
    /// `temb_act` is SiLU(temb), shared by every block.
    pub fn forward(&self, x: Tensor<4>, temb_act: Tensor<2>, train: bool) -> Tensor<4> {
        let h = crate::kernels::conv2d(&self.conv1, self.norm1.forward_silu(x.clone()));
        let [b, c, _, _] = h.dims();
        let h = h + self.time_emb_proj.forward(temb_act).reshape([b, c, 1, 1]);
        let mut h = self.norm2.forward_silu(h);
        if train && self.dropout > 0.0 {
            // Masks follow the device's RNG, seeded per training step.
            h = crate::kernels::dropout(h, self.dropout);
        }
        let h = crate::kernels::conv2d(&self.conv2, h);
        let skip = match &self.conv_shortcut {
            Some(conv) => crate::kernels::conv2d(conv, x),
            None => x,
        };
        skip + h
    }
}

/// Single-head spatial self-attention with a residual connection (diffusers' `Attention`
/// with `_from_deprecated_attn_block=True`, heads = 1).
#[derive(Module, Debug)]
pub struct AttentionBlock {
    /// GroupNorm over the input.
    pub group_norm: GroupNorm,
    /// Query projection.
    pub to_q: Linear,
    /// Key projection.
    pub to_k: Linear,
    /// Value projection.
    pub to_v: Linear,
    /// Output projection (diffusers' `to_out.0`), zero-initialised.
    pub to_out: Linear,
}

impl AttentionBlock {
    /// Attention over `channels`-wide pixels.
    pub fn new(channels: usize, groups: usize, eps: f64, device: &Device) -> Self {
        AttentionBlock {
            group_norm: GroupNorm::new(groups, channels, eps, device),
            to_q: linear(channels, channels, 1.0, device),
            to_k: linear(channels, channels, 1.0, device),
            to_v: linear(channels, channels, 1.0, device),
            to_out: linear(channels, channels, 0.0, device),
        }
    }

    /// `x + to_out(softmax(q kᵀ/√C) v)` over the H·W positions.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        let seq = self
            .group_norm
            .forward(x.clone())
            .reshape([b, c, h * w])
            .swap_dims(1, 2);
        let q = crate::kernels::linear(&self.to_q, seq.clone());
        let k = crate::kernels::linear(&self.to_k, seq.clone());
        let v = crate::kernels::linear(&self.to_v, seq);
        let scores =
            crate::kernels::matmul(q, k.swap_dims(1, 2)).mul_scalar(1.0 / (c as f64).sqrt());
        let attn = crate::kernels::matmul(softmax(scores, 2), v);
        let out = crate::kernels::linear(&self.to_out, attn)
            .swap_dims(1, 2)
            .reshape([b, c, h, w]);
        x + out
    }
}

/// Strided 3×3 convolution that halves the resolution, padding only bottom/right by one as
/// the reference code does (diffusers `downsample_padding=0`).
#[derive(Module, Debug)]
pub struct Downsample {
    /// The strided convolution.
    pub conv: Conv2d,
}

impl Downsample {
    /// Keeps `channels`.
    pub fn new(channels: usize, device: &Device) -> Self {
        Downsample {
            conv: conv2d(
                channels,
                channels,
                3,
                2,
                PaddingConfig2d::Explicit(0, 0, 1, 1),
                1.0,
                device,
            ),
        }
    }

    /// [B,C,H,W] → [B,C,⌈H/2⌉,⌈W/2⌉].
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        crate::kernels::conv2d(&self.conv, x)
    }
}

/// Nearest-neighbour 2× upsampling followed by a 3×3 convolution.
#[derive(Module, Debug)]
pub struct Upsample {
    /// The convolution after upsampling.
    pub conv: Conv2d,
}

impl Upsample {
    /// Keeps `channels`.
    pub fn new(channels: usize, device: &Device) -> Self {
        Upsample {
            conv: conv2d(
                channels,
                channels,
                3,
                1,
                PaddingConfig2d::Explicit(1, 1, 1, 1),
                1.0,
                device,
            ),
        }
    }

    /// [B,C,H,W] → [B,C,2H,2W].
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        crate::kernels::conv2d(&self.conv, upsample_nearest2x(x))
    }
}

/// Nearest-neighbour 2× upsampling by broadcasting (exact, differentiable).
pub fn upsample_nearest2x(x: Tensor<4>) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    x.reshape([b, c, h, 1, w, 1])
        .expand([b, c, h, 2, w, 2])
        .reshape([b, c, 2 * h, 2 * w])
}
