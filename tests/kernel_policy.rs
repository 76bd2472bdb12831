//! The kernel policy routes operations as documented (its own test binary: the policy is
//! process-wide, and the other kernel tests need the default one).

use burn::module::Param;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2dConfig;
use burn::tensor::{Device, Distribution, Tensor};
use ddpm::kernels::conv::{ConvGeom, direct_applies};
use ddpm::kernels::{KernelPolicy, direct, policy, set_policy};

fn values(t: Tensor<4>) -> Vec<f32> {
    t.into_data().try_into_vec::<f32>().unwrap()
}

#[test]
fn policies_pick_the_documented_implementation() {
    assert_eq!(policy(), KernelPolicy::Auto);
    let geom = |c_in, c_out| ConvGeom {
        batch: 2,
        c_in,
        h: 8,
        w: 8,
        c_out,
        kh: 3,
        kw: 3,
        stride: 1,
        pad: [1, 1, 1, 1],
    };
    // A narrow layer (small28's 32 channels) and a wide one (cifar10's 256).
    let (narrow, wide) = (geom(32, 32), geom(256, 256));
    let avx512 = direct::available();
    if !avx512 {
        println!("no AVX-512 here: the direct kernel never applies");
    }
    // `auto` without the tuner (library default; the CLI turns it on) follows the size rule.
    assert!(!ddpm::kernels::tune::enabled());
    assert_eq!(direct_applies(&narrow), avx512);
    assert!(!direct_applies(&wide));
    set_policy(KernelPolicy::Rule);
    assert_eq!(direct_applies(&narrow), avx512);
    assert!(!direct_applies(&wide));
    set_policy(KernelPolicy::Direct);
    assert_eq!(direct_applies(&narrow), avx512);
    assert_eq!(direct_applies(&wide), avx512);
    // Stride 2 never runs on the direct kernel.
    assert!(!direct_applies(&ConvGeom {
        stride: 2,
        ..narrow
    }));
    set_policy(KernelPolicy::Gemm);
    assert!(!direct_applies(&narrow) && !direct_applies(&wide));

    // `burn`: kernels::conv2d is burn's own convolution, bit for bit.
    let device = Device::flex();
    let mut conv = Conv2dConfig::new([3, 5], [3, 3])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init(&device);
    conv.bias = Some(Param::from_tensor(Tensor::random(
        [5],
        Distribution::Normal(0.0, 1.0),
        &device,
    )));
    let x = Tensor::<4>::random([2, 3, 9, 7], Distribution::Normal(0.0, 1.0), &device);
    let reference = values(conv.forward(x.clone()));
    set_policy(KernelPolicy::Burn);
    assert_eq!(policy(), KernelPolicy::Burn);
    let routed = values(ddpm::kernels::conv2d(&conv, x.clone()));
    assert!(
        routed
            .iter()
            .zip(&reference)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "--kernels burn did not run burn's convolution"
    );
    // Back to the kernels: the same values within float rounding.
    set_policy(KernelPolicy::Auto);
    let kernel = values(ddpm::kernels::conv2d(&conv, x));
    let err = kernel
        .iter()
        .zip(&reference)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(err < 1e-4, "max |Δ| = {err}");
}
