//! `--precision bf16` through burn's own ops, the path GPUs take (here on the CPU under
//! `--kernels burn`, which routes every operation to burn as a GPU device does): the
//! convolutions, the attention's linear layers and its products get bf16 operands and give f32
//! results, gradients reach the f32 master weights in f32, and a training run in bf16 follows
//! the f32 run within bf16's rounding while differing from it. Its own test binary: the kernel
//! policy is process-wide.

mod common;
use common::final_state;

use burn::module::Param;
use burn::nn::conv::Conv2dConfig;
use burn::nn::{LinearConfig, PaddingConfig2d};
use burn::tensor::{DType, Device, Distribution, Tensor, TensorData};
use ddpm::kernels::precision::round_bf16;
use ddpm::kernels::{KernelPolicy, Precision, set_policy, with_precision};
use ddpm::model::UNetConfig;
use ddpm::train::{RunConfig, TrainConfig, Trainer};

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    assert_eq!(t.dtype(), DType::F32, "a bf16 result leaked out");
    t.into_data().try_into_vec::<f32>().unwrap()
}

fn rounded<const D: usize>(t: &Tensor<D>) -> Tensor<D> {
    let dims = t.dims();
    let v: Vec<f32> = values(t.clone()).into_iter().map(round_bf16).collect();
    Tensor::from_data(TensorData::new(v, dims), &t.device())
}

/// max |a − b| / max |b|.
fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1e-30f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// The bf16 result equals the f32 op on bf16-rounded operands, up to the rounding of bf16
/// results (2⁻⁸ of the largest, twice: a linear layer rounds its product, then the sum with the
/// bias), and is not the f32 result itself.
fn check_bf16_op(what: &str, bf16: Vec<f32>, on_rounded: Vec<f32>, f32_result: Vec<f32>) {
    let scale = on_rounded.iter().fold(0f32, |m, v| m.max(v.abs()));
    for (i, (g, w)) in bf16.iter().zip(&on_rounded).enumerate() {
        assert!(
            (g - w).abs() <= scale * 2f32.powi(-7),
            "{what}[{i}]: {g} against {w} (bf16 of the f32 op on rounded operands)"
        );
    }
    assert!(
        bf16.iter().all(|v| round_bf16(*v) == *v),
        "{what}: results are not bf16 values, so no bf16 op ran"
    );
    let err = rel_err(&bf16, &f32_result);
    assert!(
        err > 1e-5 && err < 2e-2,
        "{what}: relative difference from f32 {err:e}"
    );
}

#[test]
fn conv_linear_and_products_take_bf16_operands_and_give_f32() {
    set_policy(KernelPolicy::Burn);
    let device = Device::flex();
    assert!(!ddpm::kernels::burn_bf16(&device), "f32 is the default");
    with_precision(Precision::Bf16, || {
        assert!(ddpm::kernels::burn_bf16(&device));
    });
    let normal = Distribution::Normal(0.0, 1.0);

    // A convolution with asymmetric padding (the U-Net's downsampling one).
    let x = Tensor::<4>::random([2, 5, 9, 7], normal, &device);
    let w = Tensor::<4>::random([6, 5, 3, 3], normal, &device);
    let b = Tensor::<1>::random([6], normal, &device);
    let conv = |x: Tensor<4>, w: Tensor<4>, b: Tensor<1>| {
        ddpm::kernels::conv2d_with(x, w, b, 2, [0, 0, 1, 1])
    };
    let y16 = with_precision(Precision::Bf16, || {
        values(conv(x.clone(), w.clone(), b.clone()))
    });
    let on_rounded = values(conv(rounded(&x), rounded(&w), rounded(&b)));
    let y32 = values(conv(x.clone(), w.clone(), b.clone()));
    check_bf16_op("conv2d", y16, on_rounded, y32);

    // A linear layer over [batch, positions, channels].
    let mut lin = LinearConfig::new(12, 7).init(&device);
    lin.bias = Some(Param::from_tensor(Tensor::random([7], normal, &device)));
    let s = Tensor::<3>::random([2, 10, 12], normal, &device);
    let l16 = with_precision(Precision::Bf16, || {
        values(ddpm::kernels::linear(&lin, s.clone()))
    });
    let on_rounded = values(burn::tensor::module::linear(
        rounded(&s),
        rounded(&lin.weight.val()),
        Some(rounded(&lin.bias.as_ref().unwrap().val())),
    ));
    let l32 = values(lin.forward(s.clone()));
    check_bf16_op("linear", l16, on_rounded, l32);

    // A batched product (attention's q kᵀ).
    let q = Tensor::<3>::random([2, 10, 12], normal, &device);
    let k = Tensor::<3>::random([2, 12, 9], normal, &device);
    let p16 = with_precision(Precision::Bf16, || {
        values(ddpm::kernels::matmul(q.clone(), k.clone()))
    });
    let on_rounded = values(rounded(&q).matmul(rounded(&k)));
    let p32 = values(q.matmul(k));
    check_bf16_op("matmul", p16, on_rounded, p32);
}

#[test]
fn gradients_reach_f32_weights_through_the_casts() {
    set_policy(KernelPolicy::Burn);
    let device = Device::flex().autodiff();
    let mut conv = Conv2dConfig::new([4, 6], [3, 3])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init(&device);
    conv.bias = Some(Param::from_tensor(Tensor::random(
        [6],
        Distribution::Normal(0.0, 1.0),
        &device,
    )));
    let x =
        Tensor::<4>::random([2, 4, 8, 8], Distribution::Normal(0.0, 1.0), &device).require_grad();
    let grads = |precision| {
        with_precision(precision, || {
            let y = ddpm::kernels::conv2d(&conv, x.clone());
            // A loss whose gradient depends on y, so the backward products see real values.
            let g = y.square().sum().backward();
            let gx = values(x.grad(&g).unwrap());
            let gw = values(conv.weight.grad(&g).unwrap());
            let gb = values(conv.bias.as_ref().unwrap().grad(&g).unwrap());
            (gx, gw, gb)
        })
    };
    let (x32, w32, b32) = grads(Precision::F32);
    let (x16, w16, b16) = grads(Precision::Bf16);
    for (what, g16, g32) in [
        ("input gradient", &x16, &x32),
        ("weight gradient", &w16, &w32),
        ("bias gradient", &b16, &b32),
    ] {
        let err = rel_err(g16, g32);
        println!("{what}: bf16 against f32, max relative difference {err:.2e}");
        assert!(err > 1e-6 && err < 3e-2, "{what}: {err:e}");
    }
}

/// The attention block alone (GroupNorm, four linear layers, two products, softmax; no
/// convolution): bf16 changes its output, within bf16's rounding, so its own products are cast.
#[test]
fn attention_runs_its_linear_layers_and_products_in_bf16() {
    set_policy(KernelPolicy::Burn);
    let device = Device::flex();
    let mut block = ddpm::model::blocks::AttentionBlock::new(16, 4, 1e-6, &device);
    // The output projection starts at zero (diffusers' init); give it weights so the
    // attention path reaches the output.
    block.to_out.weight = Param::from_tensor(Tensor::random(
        [16, 16],
        Distribution::Normal(0.0, 0.25),
        &device,
    ));
    let x = Tensor::<4>::random([2, 16, 5, 5], Distribution::Normal(0.0, 1.0), &device);
    let y32 = values(block.forward(x.clone()));
    let y16 = with_precision(Precision::Bf16, || values(block.forward(x.clone())));
    let err = rel_err(&y16, &y32);
    println!("attention: bf16 against f32, max relative difference {err:.2e}");
    assert!(err > 1e-5 && err < 3e-2, "{err:e}");
}

fn tiny_run(precision: Precision, steps: u64) -> RunConfig {
    let mut model = UNetConfig::tiny(28, 1);
    model.base_channels = 8;
    let mut train = TrainConfig {
        data: "mnist5k".into(),
        batch_size: 4,
        max_steps: Some(steps),
        seed: 5,
        sample_every: 0,
        checkpoint_every: 3,
        preview_count: 0,
        log_every: 1,
        ..Default::default()
    };
    train.precision = precision;
    RunConfig {
        model,
        diffusion: Default::default(),
        train,
    }
}

fn losses(run: &std::path::Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("log.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|r| r.split(',').nth(1).unwrap().parse().unwrap())
        .collect()
}

/// The tiny U-Net (with attention) trained for 6 steps in bf16 on burn's ops, with the optimiser
/// on the device as on a GPU: its losses follow the f32 run's within bf16's rounding, and its
/// weights differ from them (the casts ran); stopped at 3 and resumed, it repeats itself bit for
/// bit.
#[test]
fn training_in_bf16_on_burn_ops_follows_f32_and_resumes() {
    set_policy(KernelPolicy::Burn);
    let device = Device::flex();
    let dir = tempfile::tempdir().unwrap();
    let train = |name: &str, precision, steps, resume: bool| {
        let path = dir.path().join(name);
        let mut t = if resume {
            Trainer::resume(&path, &device, |tc| tc.max_steps = Some(steps)).unwrap()
        } else {
            Trainer::create(&path, tiny_run(precision, steps), &device).unwrap()
        };
        t.optim_on_device = true;
        t.train().unwrap();
        path
    };
    let f32_run = train("f32", Precision::F32, 6, false);
    let bf16_run = train("bf16", Precision::Bf16, 6, false);
    let (l32, l16) = (losses(&f32_run), losses(&bf16_run));
    assert_eq!(l16.len(), 6);
    for (a, b) in l16.iter().zip(&l32) {
        assert!(
            a.is_finite() && (a - b).abs() <= 2e-2 * b,
            "{l16:?} against {l32:?}"
        );
    }
    let (s32, s16) = (final_state(&f32_run).params, final_state(&bf16_run).params);
    assert_ne!(s32, s16, "bf16 training computed exactly what f32 did");
    train("part", Precision::Bf16, 3, false);
    let resumed = train("part", Precision::Bf16, 6, true);
    let bits = |v: &Vec<Vec<f32>>| v.iter().flatten().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert!(bits(&final_state(&resumed).params) == bits(&s16));
    assert_eq!(losses(&resumed), l16);
}
