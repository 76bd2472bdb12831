//! Specialised CPU kernels for burn-flex, plugged in through burn's backend-extension mechanism
//! (`#[backend_extension]`), with hand-written backward passes for `Autodiff<Flex>`.
//!
//! The model code calls the functions at the bottom of this file ([`conv2d`]); they route to
//! these kernels when the tensors live on the CPU backend and to burn's generic ops on any
//! other device (cuda, wgpu) or under [`KernelPolicy::Burn`], so the model stays
//! backend-agnostic. On burn's ops, `--precision bf16` casts the operands of the convolutions,
//! the attention's linear layers and its two products to bf16 and the results back to f32
//! ([`burn_bf16`]), as PyTorch's autocast does for the same ops.
//! The caller picks the policy once with [`set_policy`] (the CLI's `--kernels`). Every kernel is tested against
//! the definition (values and gradients) in its own file and against burn's op in
//! `tests/kernels.rs`.

pub mod conv;
pub mod direct;
pub mod norm;
pub mod policy;
pub mod pool;
pub mod precision;
pub mod random;
pub mod simd;
pub mod tune;
pub mod winograd;

pub use policy::{KernelPolicy, policy, set_policy};
pub use precision::{Precision, with_precision};

use burn::backend::autodiff::{
    Autodiff,
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
};
use burn::backend::ops::ModuleOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, DispatchDevice, Flex, backend_extension};
use burn::nn::conv::Conv2d;
use burn::nn::{Linear, PaddingConfig2d};
use burn::tensor::{DType, FloatDType, Shape, Tensor};
use burn_flex::{FlexTensor, Layout};

use conv::{
    ConvGeom, bf16_applies, conv2d_backward, conv2d_backward_bf16, conv2d_forward,
    conv2d_forward_bf16,
};
use norm::{NormGeom, group_norm_backward, group_norm_forward};

/// Operations the CPU backend runs with this crate's kernels.
#[backend_extension(Flex, Autodiff)]
pub trait CpuKernels: Backend {
    /// Convolution, groups 1, dilation 1; `pad` = top, left, bottom, right.
    fn conv2d_gemm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        stride: usize,
        pad: [usize; 4],
    ) -> FloatTensor<Self>;

    /// Group normalisation with affine map, then SiLU when `silu`.
    fn group_norm_act(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        groups: usize,
        eps: f64,
        silu: bool,
    ) -> FloatTensor<Self>;

    /// 3×3 average pool, stride 1, padding 1 not counted (forward only).
    fn avg_pool3s1(x: FloatTensor<Self>) -> FloatTensor<Self>;

    /// 3×3 max pool, stride 2, unpadded (forward only).
    fn max_pool3s2(x: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// A contiguous f32 copy-free view of a flex tensor's values.
fn values(t: &FlexTensor) -> &[f32] {
    assert_eq!(t.dtype(), DType::F32, "ddpm kernels run in f32");
    t.storage::<f32>()
}

fn flex_tensor(data: Vec<f32>, shape: impl Into<Shape>) -> FlexTensor {
    FlexTensor::new(
        burn::tensor::Bytes::from_elems(data),
        Layout::contiguous(shape.into()),
        DType::F32,
    )
}

fn conv_geom(x: &FlexTensor, w: &FlexTensor, stride: usize, pad: [usize; 4]) -> ConvGeom {
    let xs = x.layout().shape();
    let ws = w.layout().shape();
    assert_eq!(xs.num_dims(), 4, "conv2d: input must be [B, C, H, W]");
    assert_eq!(
        ws.num_dims(),
        4,
        "conv2d: weight must be [C_out, C_in, k, k]"
    );
    assert_eq!(
        ws[1], xs[1],
        "conv2d: weight expects {} channels, got {}",
        ws[1], xs[1]
    );
    ConvGeom {
        batch: xs[0],
        c_in: xs[1],
        h: xs[2],
        w: xs[3],
        c_out: ws[0],
        kh: ws[2],
        kw: ws[3],
        stride,
        pad,
    }
}

impl CpuKernels for Flex {
    fn conv2d_gemm(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        stride: usize,
        pad: [usize; 4],
    ) -> FlexTensor {
        let (x, weight, bias) = (
            x.to_contiguous(),
            weight.to_contiguous(),
            bias.to_contiguous(),
        );
        let g = conv_geom(&x, &weight, stride, pad);
        let (x, w, b) = (values(&x), values(&weight), Some(values(&bias)));
        let y = if cpu_bf16() && bf16_applies(&g) {
            conv2d_forward_bf16(&g, x, w, b)
        } else {
            conv2d_forward(&g, x, w, b)
        };
        flex_tensor(y, g.out_shape())
    }

    fn group_norm_act(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        groups: usize,
        eps: f64,
        silu: bool,
    ) -> FlexTensor {
        let x = x.to_contiguous();
        let shape = x.layout().shape().clone();
        let g = norm_geom(&x, groups, eps, silu);
        let (gamma, beta) = (gamma.to_contiguous(), beta.to_contiguous());
        let (y, _) = group_norm_forward(&g, values(&x), values(&gamma), values(&beta));
        flex_tensor(y, shape)
    }

    fn avg_pool3s1(x: FlexTensor) -> FlexTensor {
        let x = x.to_contiguous();
        let [b, c, h, w] = dims4(&x);
        flex_tensor(pool::avg_pool3s1(values(&x), b * c, h, w), [b, c, h, w])
    }

    fn max_pool3s2(x: FlexTensor) -> FlexTensor {
        let x = x.to_contiguous();
        let [b, c, h, w] = dims4(&x);
        let y = pool::max_pool3s2(values(&x), b * c, h, w);
        flex_tensor(y, [b, c, (h - 3) / 2 + 1, (w - 3) / 2 + 1])
    }
}

fn dims4(x: &FlexTensor) -> [usize; 4] {
    let s = x.layout().shape();
    assert_eq!(s.num_dims(), 4, "pooling: input must be [B, C, H, W]");
    [s[0], s[1], s[2], s[3]]
}

fn norm_geom(x: &FlexTensor, groups: usize, eps: f64, silu: bool) -> NormGeom {
    let s = x.layout().shape();
    assert!(s.num_dims() >= 2, "group norm: input must be [B, C, ...]");
    NormGeom {
        batch: s[0],
        channels: s[1],
        pixels: s.num_elements() / (s[0] * s[1]).max(1),
        groups,
        eps,
        silu,
    }
}

#[derive(Debug)]
struct GroupNormBackward;

impl Backward<Flex, 3> for GroupNormBackward {
    type State = (FlexTensor, Vec<f32>, Vec<f32>, Vec<(f32, f32)>, NormGeom);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_gamma, node_beta] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node).to_contiguous();
        let (x, gamma, beta, stats, g) = ops.state;
        let shape = x.layout().shape().clone();
        let out = group_norm_backward(&g, values(&x), &gamma, &beta, &stats, values(&dy));
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, flex_tensor(out.x, shape));
        }
        if let Some(node) = node_gamma {
            grads.register::<Flex>(node.id, flex_tensor(out.gamma, [g.channels]));
        }
        if let Some(node) = node_beta {
            grads.register::<Flex>(node.id, flex_tensor(out.beta, [g.channels]));
        }
    }
}

#[derive(Debug)]
struct Conv2dBackward;

impl Backward<Flex, 3> for Conv2dBackward {
    /// Input, weight, geometry, and whether the forward pass ran in bf16.
    type State = (FlexTensor, FlexTensor, ConvGeom, bool);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_w, node_b] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node).to_contiguous();
        let (x, w, g, bf16) = ops.state;
        let want = [node_x.is_some(), node_w.is_some(), node_b.is_some()];
        let backward = if bf16 {
            conv2d_backward_bf16
        } else {
            conv2d_backward
        };
        let out = backward(&g, values(&x), values(&w), values(&dy), want);
        if let (Some(node), Some(dx)) = (node_x, out.x) {
            grads.register::<Flex>(node.id, flex_tensor(dx, [g.batch, g.c_in, g.h, g.w]));
        }
        if let (Some(node), Some(dw)) = (node_w, out.weight) {
            grads.register::<Flex>(node.id, flex_tensor(dw, [g.c_out, g.c_in, g.kh, g.kw]));
        }
        if let (Some(node), Some(db)) = (node_b, out.bias) {
            grads.register::<Flex>(node.id, flex_tensor(db, [g.c_out]));
        }
    }
}

impl<C: CheckpointStrategy> CpuKernels for Autodiff<Flex, C> {
    fn conv2d_gemm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        stride: usize,
        pad: [usize; 4],
    ) -> FloatTensor<Self> {
        match Conv2dBackward
            .prepare::<C>([x.node(), weight.node(), bias.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let xp = x.primitive().to_contiguous();
                let wp = weight.primitive().to_contiguous();
                let g = conv_geom(&xp, &wp, stride, pad);
                // The precision is decided here and remembered for the backward pass, which
                // may run outside the scope.
                let bf16 = cpu_bf16() && bf16_applies(&g);
                let y = with_precision(
                    if bf16 {
                        Precision::Bf16
                    } else {
                        Precision::F32
                    },
                    || {
                        Flex::conv2d_gemm(
                            xp.clone(),
                            wp.clone(),
                            bias.primitive().clone(),
                            stride,
                            pad,
                        )
                    },
                );
                prep.finish((xp, wp, g, bf16), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(Flex::conv2d_gemm(
                x.into_primitive(),
                weight.into_primitive(),
                bias.into_primitive(),
                stride,
                pad,
            )),
        }
    }

    fn group_norm_act(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        groups: usize,
        eps: f64,
        silu: bool,
    ) -> FloatTensor<Self> {
        match GroupNormBackward
            .prepare::<C>([x.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let xp = x.primitive().to_contiguous();
                let shape = xp.layout().shape().clone();
                let g = norm_geom(&xp, groups, eps, silu);
                let gamma = values(&gamma.primitive().to_contiguous()).to_vec();
                let beta = values(&beta.primitive().to_contiguous()).to_vec();
                let (y, stats) = group_norm_forward(&g, values(&xp), &gamma, &beta);
                prep.finish((xp, gamma, beta, stats, g), flex_tensor(y, shape))
            }
            OpsKind::UnTracked(prep) => prep.finish(Flex::group_norm_act(
                x.into_primitive(),
                gamma.into_primitive(),
                beta.into_primitive(),
                groups,
                eps,
                silu,
            )),
        }
    }

    // Inference-only kernels: under autodiff, burn's differentiable pooling is used instead.
    fn avg_pool3s1(x: FloatTensor<Self>) -> FloatTensor<Self> {
        <Self as ModuleOps<Self>>::avg_pool2d(x, [3, 3], [1, 1], [1, 1], false, false)
    }

    fn max_pool3s2(x: FloatTensor<Self>) -> FloatTensor<Self> {
        <Self as ModuleOps<Self>>::max_pool2d(x, [3, 3], [2, 2], [0, 0], [1, 1], false)
    }
}

/// Whether tensors on this device run on burn-flex (with or without autodiff).
pub fn is_cpu(device: &burn::tensor::Device) -> bool {
    matches!(
        device.clone().inner().as_dispatch(),
        DispatchDevice::Flex(_)
    )
}

/// Whether the kernels are switched off ([`KernelPolicy::Burn`]), to compare against burn's ops.
fn disabled() -> bool {
    policy() == KernelPolicy::Burn
}

/// Whether this crate's CPU kernels run for tensors on `device`.
fn kernels_run(device: &burn::tensor::Device) -> bool {
    is_cpu(device) && !disabled()
}

/// Whether `--precision bf16` is carried out with burn's own ops on `device` (GPUs, and the CPU
/// under `--kernels burn`): operands cast to bf16, results cast back to f32, master weights and
/// every other op in f32 (mixed precision as in Micikevicius et al. 2018, the ops PyTorch's
/// autocast runs in bf16). On the CPU's kernels, bf16 is their own `vdpbf16ps` path instead.
pub fn burn_bf16(device: &burn::tensor::Device) -> bool {
    precision::current() == Precision::Bf16 && !kernels_run(device)
}

/// `Ok` when `precision` can run on `device`, else why not: bf16 on this crate's CPU kernels
/// needs AVX512_BF16; through burn's ops (GPUs, `--kernels burn`) the device must support
/// bf16 tensors (`Device::supports_dtype`: CUDA GPUs since Ampere, not WGSL).
pub fn check_precision(precision: Precision, device: &burn::tensor::Device) -> Result<(), String> {
    if precision == Precision::F32 {
        Ok(())
    } else if kernels_run(device) {
        precision.check_cpu()
    } else if device.supports_dtype(FloatDType::BF16) {
        Ok(())
    } else {
        Err(format!(
            "--precision bf16: burn reports no bf16 support on {device:?} \
             (Device::supports_dtype); use --precision f32"
        ))
    }
}

/// Whether the CPU kernels are to compute in bf16 ([`Precision::Bf16`] in force).
///
/// # Panics
/// If bf16 is in force and this CPU lacks AVX512_BF16 (callers check with
/// [`check_precision`] first; this keeps a missed check from computing in f32 silently).
fn cpu_bf16() -> bool {
    let bf16 = precision::current() == Precision::Bf16;
    if bf16 && let Err(e) = Precision::Bf16.check_cpu() {
        panic!("{e}");
    }
    bf16
}

fn to_bf16_if<const D: usize>(t: Tensor<D>, bf16: bool) -> Tensor<D> {
    if bf16 { t.cast(FloatDType::BF16) } else { t }
}

fn to_f32_if<const D: usize>(t: Tensor<D>, bf16: bool) -> Tensor<D> {
    if bf16 { t.cast(FloatDType::F32) } else { t }
}

/// `conv.forward(x)`, through [`conv::conv2d_forward`] on the CPU.
pub fn conv2d(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    let plain = conv.groups == 1 && conv.dilation == [1, 1] && conv.stride[0] == conv.stride[1];
    let pad = match &conv.padding {
        PaddingConfig2d::Valid => Some([0; 4]),
        PaddingConfig2d::Explicit(t, l, b, r) => Some([*t, *l, *b, *r]),
        _ => None,
    };
    match (pad, &conv.bias) {
        (Some(pad), Some(bias)) if plain => {
            conv2d_with(x, conv.weight.val(), bias.val(), conv.stride[0], pad)
        }
        _ => {
            let bf16 = burn_bf16(&x.device());
            assert!(
                !bf16,
                "--precision bf16 on burn's ops covers biased, ungrouped, undilated convolutions \
                 with equal strides and explicit padding; this one is not"
            );
            conv.forward(x)
        }
    }
}

/// `y = conv(x, weight) + bias` with equal strides, groups 1, dilation 1 and explicit
/// padding (top, left, bottom, right): this crate's kernel on the CPU, burn's op elsewhere
/// (with bf16 operands under [`burn_bf16`]).
pub fn conv2d_with(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Tensor<1>,
    stride: usize,
    pad: [usize; 4],
) -> Tensor<4> {
    if kernels_run(&x.device()) {
        let y = <Dispatch as CpuKernels>::conv2d_gemm(
            x.into_dispatch(),
            weight.into_dispatch(),
            bias.into_dispatch(),
            stride,
            pad,
        );
        return Tensor::from_dispatch(y);
    }
    let bf16 = burn_bf16(&x.device());
    let [t, l, b, r] = pad;
    let (x, padding) = if t == b && l == r {
        (x, [t, l])
    } else {
        // burn's convolution pads symmetrically; pad the input explicitly instead.
        let [n, c, h, w] = x.dims();
        let padded = Tensor::zeros([n, c, h + t + b, w + l + r], &x.device());
        (
            padded.slice_assign([0..n, 0..c, t..t + h, l..l + w], x),
            [0, 0],
        )
    };
    let opts = burn::tensor::ops::ConvOptions::new([stride; 2], padding, [1, 1], 1);
    let y = burn::tensor::module::conv2d(
        to_bf16_if(x, bf16),
        to_bf16_if(weight, bf16),
        Some(to_bf16_if(bias, bf16)),
        opts,
    );
    to_f32_if(y, bf16)
}

/// `lin.forward(x)`, with bf16 operands under [`burn_bf16`].
pub fn linear<const D: usize>(lin: &Linear, x: Tensor<D>) -> Tensor<D> {
    let bf16 = burn_bf16(&x.device());
    let y = burn::tensor::module::linear(
        to_bf16_if(x, bf16),
        to_bf16_if(lin.weight.val(), bf16),
        lin.bias.as_ref().map(|b| to_bf16_if(b.val(), bf16)),
    );
    to_f32_if(y, bf16)
}

/// `a.matmul(b)`, with bf16 operands under [`burn_bf16`].
pub fn matmul<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> Tensor<D> {
    let bf16 = burn_bf16(&a.device());
    to_f32_if(to_bf16_if(a, bf16).matmul(to_bf16_if(b, bf16)), bf16)
}

/// `act(GroupNorm(x))` over `[B, C, …]` activations: γ, β per channel, SiLU when `silu`.
/// Runs [`norm::group_norm_forward`] on the CPU and burn's ops elsewhere.
pub fn group_norm<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    groups: usize,
    eps: f64,
    silu: bool,
) -> Tensor<D> {
    if kernels_run(&x.device()) {
        let y = <Dispatch as CpuKernels>::group_norm_act(
            x.into_dispatch(),
            gamma.into_dispatch(),
            beta.into_dispatch(),
            groups,
            eps,
            silu,
        );
        return Tensor::from_dispatch(y);
    }
    let dims = x.dims();
    let (b, c) = (dims[0], dims[1]);
    let xg = x.reshape([b, groups, dims.iter().product::<usize>() / (b * groups)]);
    let mean = xg.clone().mean_dim(2);
    let centred = xg - mean;
    let var = centred.clone().square().mean_dim(2);
    let mut affine_shape = [1; D];
    affine_shape[1] = c;
    let y = (centred / (var + eps).sqrt()).reshape(dims) * gamma.reshape(affine_shape)
        + beta.reshape(affine_shape);
    if silu {
        burn::tensor::activation::silu(y)
    } else {
        y
    }
}

/// 3×3 average pool, stride 1, padding 1 excluded from the count (TF's `SAME` average pool).
pub fn avg_pool3s1(x: Tensor<4>) -> Tensor<4> {
    if is_cpu(&x.device()) && !disabled() {
        return Tensor::from_dispatch(<Dispatch as CpuKernels>::avg_pool3s1(x.into_dispatch()));
    }
    burn::tensor::module::avg_pool2d(
        x,
        burn::tensor::ops::AvgPoolOptions::new([3, 3])
            .with_stride([1, 1])
            .with_padding([1, 1])
            .with_count_include_pad(false),
    )
}

/// 3×3 max pool, stride 2, no padding.
pub fn max_pool3s2(x: Tensor<4>) -> Tensor<4> {
    if is_cpu(&x.device()) && !disabled() {
        return Tensor::from_dispatch(<Dispatch as CpuKernels>::max_pool3s2(x.into_dispatch()));
    }
    burn::tensor::module::max_pool2d(
        x,
        burn::tensor::ops::MaxPoolOptions::new([3, 3]).with_stride([2, 2]),
    )
}

/// Inverted dropout (Srivastava et al. 2014): `x · mask / (1 − p)`. On the CPU the mask comes
/// from [`random::dropout_mask`], keyed by 48 bits drawn from the device's RNG (so it follows
/// the per-step seeding of training); elsewhere from burn's Bernoulli.
pub fn dropout<const D: usize>(x: Tensor<D>, p: f64) -> Tensor<D> {
    let device = x.device();
    if is_cpu(&device) && !disabled() {
        let draws: Vec<f32> = Tensor::<1>::random(
            [2],
            burn::tensor::Distribution::Uniform(0.0, (1u32 << 24) as f64),
            &device,
        )
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("f32 draws");
        let seed = draws[0] as u64 | (draws[1] as u64) << 24;
        let dims = x.dims();
        let mask = random::dropout_mask(dims.iter().product(), p, seed);
        let mask = Tensor::<D>::from_data(burn::tensor::TensorData::new(mask, dims), &device);
        return x * mask;
    }
    let mask = x
        .random_like(burn::tensor::Distribution::Bernoulli(1.0 - p))
        .div_scalar(1.0 - p);
    x * mask
}
