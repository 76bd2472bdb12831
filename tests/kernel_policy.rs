//! The kernel policy routes operations as documented (its own test binary: the policy is
//! process-wide, and the other kernel tests need the default one).

use burn::module::Param;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2dConfig;
use burn::tensor::{Device, Distribution, Tensor};
use ddpm::kernels::conv::{Algo, ConvGeom, algorithm, direct_applies};
use ddpm::kernels::{KernelPolicy, direct, policy, set_policy};

fn values(t: Tensor<4>) -> Vec<f32> {
    t.into_data().try_into_vec::<f32>().unwrap()
}

fn max_rel_err(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
    got.iter()
        .zip(want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
        / scale
}

/// Under `--kernels winograd`, a 3×3 convolution through burn's autodiff (odd sizes, so tiles
/// are cut at the edges) gives burn's values, input gradient and weight gradient.
fn winograd_matches_burn_through_autodiff() {
    let device = Device::flex().autodiff();
    for (b, ci, co, h, w) in [(3, 8, 8, 28, 28), (2, 17, 5, 9, 7)] {
        let mut conv = Conv2dConfig::new([ci, co], [3, 3])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .init(&device);
        conv.bias = Some(Param::from_tensor(Tensor::random(
            [co],
            Distribution::Normal(0.0, 1.0),
            &device,
        )));
        let x = Tensor::<4>::random([b, ci, h, w], Distribution::Normal(0.0, 1.0), &device)
            .require_grad();
        let y_ref = conv.forward(x.clone());
        let y = ddpm::kernels::conv2d(&conv, x.clone());
        let r = Tensor::<4>::random(y.dims(), Distribution::Normal(0.0, 1.0), &device);
        let e = max_rel_err(&values(y.clone()), &values(y_ref.clone()));
        assert!(e < 1e-5, "{ci}->{co} {h}x{w}: y {e:e}");
        let g_ref = (y_ref * r.clone()).sum().backward();
        let g = (y * r).sum().backward();
        let dx = |g| values(x.grad(g).expect("input gradient"));
        let e = max_rel_err(&dx(&g), &dx(&g_ref));
        assert!(e < 1e-5, "{ci}->{co} {h}x{w}: dx {e:e}");
        let dw = |g| values(conv.weight.val().grad(g).expect("weight gradient"));
        // The weight gradient sums b·h·w = 2,352 products per entry, through the transforms in
        // Winograd's order and directly in burn's: its rounding differs by up to ~1.1e-5 of the
        // largest entry (5 of 300 random draws exceeded 1e-5); a wrong tile or transform gives
        // errors of order 1.
        let e = max_rel_err(&dw(&g), &dw(&g_ref));
        assert!(e < 4e-5, "{ci}->{co} {h}x{w}: dW {e:e}");
    }
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
    assert_eq!(algorithm(&narrow), Algo::Gemm);
    // `winograd`: every stride-1 3×3 convolution, the size rule for the others.
    set_policy(KernelPolicy::Winograd);
    assert_eq!(algorithm(&narrow), Algo::Winograd);
    assert_eq!(algorithm(&wide), Algo::Winograd);
    assert_eq!(
        algorithm(&ConvGeom {
            stride: 2,
            ..narrow
        }),
        Algo::Gemm
    );
    let pointwise = ConvGeom {
        kh: 1,
        kw: 1,
        pad: [0; 4],
        ..narrow
    };
    assert_eq!(algorithm(&pointwise), Algo::Gemm);
    // The FID network's scope: plain sums, the size rule's choice.
    let ruled = if avx512 { Algo::Direct } else { Algo::Gemm };
    assert_eq!(
        ddpm::kernels::precision::with_exact_sums(|| algorithm(&narrow)),
        ruled
    );
    assert_eq!(algorithm(&narrow), Algo::Winograd);
    winograd_matches_burn_through_autodiff();

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
