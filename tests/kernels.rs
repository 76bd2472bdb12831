//! The CPU kernels of `ddpm::kernels` against burn's own ops on random inputs, odd sizes
//! included: forward values and every gradient, through the autodiff backend.

use burn::module::Param;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::tensor::{Device, Distribution, Tensor};

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap()
}

fn assert_close(what: &str, got: Vec<f32>, want: Vec<f32>, tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1.0);
    let err = got
        .iter()
        .zip(&want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        err <= tol * scale,
        "{what}: max |Δ| = {err:e} (scale {scale})"
    );
}

#[test]
fn conv2d_kernel_matches_burn_values_and_gradients() {
    let device = Device::flex().autodiff();
    // Otherwise the kernel path is not taken and this test compares burn with itself.
    assert!(ddpm::kernels::is_cpu(&device));
    // (batch, c_in, c_out, h, w, kernel, stride, padding)
    let cases = [
        (2, 3, 5, 7, 9, 3, 1, PaddingConfig2d::Explicit(1, 1, 1, 1)),
        (3, 8, 8, 28, 28, 3, 1, PaddingConfig2d::Explicit(1, 1, 1, 1)),
        (4, 6, 6, 7, 7, 3, 2, PaddingConfig2d::Explicit(0, 0, 1, 1)),
        (1, 5, 4, 14, 13, 3, 2, PaddingConfig2d::Explicit(0, 0, 1, 1)),
        (5, 7, 3, 5, 6, 1, 1, PaddingConfig2d::Valid),
        (1, 1, 2, 3, 3, 3, 1, PaddingConfig2d::Explicit(1, 1, 1, 1)),
        (3, 4, 6, 8, 8, 5, 1, PaddingConfig2d::Explicit(2, 2, 2, 2)),
    ];
    for (i, (b, ci, co, h, w, k, s, pad)) in cases.into_iter().enumerate() {
        let mut conv: Conv2d = Conv2dConfig::new([ci, co], [k, k])
            .with_stride([s, s])
            .with_padding(pad)
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
        assert_eq!(y.dims(), y_ref.dims(), "case {i}: shape");
        let r = Tensor::<4>::random(y.dims(), Distribution::Normal(0.0, 1.0), &device);
        assert_close(
            &format!("case {i} y"),
            values(y.clone()),
            values(y_ref.clone()),
            1e-5,
        );

        let g_ref = (y_ref * r.clone()).sum().backward();
        let g = (y * r).sum().backward();
        let grad = |t: &Tensor<4>, g| values(t.grad(g).expect("input gradient"));
        assert_close(
            &format!("case {i} dx"),
            grad(&x, &g),
            grad(&x, &g_ref),
            1e-5,
        );
        let wg = |g| values(conv.weight.val().grad(g).expect("weight gradient"));
        assert_close(&format!("case {i} dW"), wg(&g), wg(&g_ref), 1e-5);
        let bg = |g| {
            values(
                conv.bias
                    .as_ref()
                    .unwrap()
                    .val()
                    .grad(g)
                    .expect("bias gradient"),
            )
        };
        assert_close(&format!("case {i} db"), bg(&g), bg(&g_ref), 1e-5);
    }
}

#[test]
fn conv2d_kernel_without_autodiff_matches_burn() {
    let device = Device::flex();
    assert!(ddpm::kernels::is_cpu(&device));
    let conv: Conv2d = Conv2dConfig::new([6, 10], [3, 3])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init(&device);
    let x = Tensor::<4>::random([3, 6, 11, 10], Distribution::Normal(0.0, 1.0), &device);
    assert_close(
        "no-autodiff y",
        values(ddpm::kernels::conv2d(&conv, x.clone())),
        values(conv.forward(x)),
        1e-5,
    );
}

/// Inside a bf16 scope, convolutions run on the bf16 kernel (close to f32, not equal), with
/// and without autodiff; recorded for backpropagation, the input and weight gradients are the
/// bf16 ones (close, not equal) and the bias gradient stays exactly f32.
#[test]
fn bf16_scope_forward_and_mixed_precision_gradients() {
    use ddpm::kernels::{Precision, with_precision};
    if Precision::Bf16.check_cpu().is_err() {
        println!("no AVX512_BF16 here: the bf16 scope is not tested");
        return;
    }
    let device = Device::flex();
    let conv: Conv2d = Conv2dConfig::new([6, 10], [3, 3])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init(&device);
    let x = Tensor::<4>::random([3, 6, 11, 10], Distribution::Normal(0.0, 1.0), &device);
    let f32_y = values(ddpm::kernels::conv2d(&conv, x.clone()));
    let bf16_y = values(with_precision(Precision::Bf16, || {
        ddpm::kernels::conv2d(&conv, x.clone())
    }));
    assert_ne!(f32_y, bf16_y, "bf16 scope had no effect");
    assert_close("bf16 y", bf16_y, f32_y, 1e-2);

    let device = Device::flex().autodiff();
    let conv: Conv2d = Conv2dConfig::new([6, 10], [3, 3])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init(&device);
    let x =
        Tensor::<4>::random([3, 6, 11, 10], Distribution::Normal(0.0, 1.0), &device).require_grad();
    let r = Tensor::<4>::random([3, 10, 11, 10], Distribution::Normal(0.0, 1.0), &device);
    let run = || {
        let y = ddpm::kernels::conv2d(&conv, x.clone());
        let g = (y.clone() * r.clone()).sum().backward();
        let w = values(conv.weight.val().grad(&g).unwrap());
        let b = values(conv.bias.as_ref().unwrap().val().grad(&g).unwrap());
        (values(y), values(x.grad(&g).unwrap()), w, b)
    };
    let (y32, dx32, dw32, db32) = run();
    let (y16, dx16, dw16, db16) = with_precision(Precision::Bf16, run);
    assert_ne!(y32, y16);
    assert_close("bf16 training y", y16, y32, 1e-2);
    assert_ne!(dx32, dx16, "input gradient not in bf16");
    assert_close("bf16 dx", dx16, dx32, 1e-2);
    assert_ne!(dw32, dw16, "weight gradient not in bf16");
    assert_close("bf16 dW", dw16, dw32, 1e-2);
    // db = Σ dy with dy = r: nothing rounded.
    assert_eq!(db32, db16, "bias gradient must stay f32");
}

/// GroupNorm (+ SiLU) written with burn's ops, as the model had it before the fused kernel.
fn group_norm_reference(
    x: Tensor<4>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    groups: usize,
    eps: f64,
    silu: bool,
) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    let xg = x.reshape([b, groups, (c / groups) * h * w]);
    let mean = xg.clone().mean_dim(2);
    let centred = xg - mean;
    let var = centred.clone().square().mean_dim(2);
    let y = (centred / (var + eps).sqrt()).reshape([b, c, h, w]) * gamma.reshape([1, c, 1, 1])
        + beta.reshape([1, c, 1, 1]);
    if silu {
        burn::tensor::activation::silu(y)
    } else {
        y
    }
}

#[test]
fn group_norm_kernel_matches_burn_values_and_gradients() {
    let device = Device::flex().autodiff();
    assert!(ddpm::kernels::is_cpu(&device));
    // (batch, channels, h, w, groups, silu)
    let cases = [
        (2, 32, 28, 28, 32, true),
        (3, 6, 5, 7, 3, false),
        (1, 8, 3, 3, 2, true),
        (4, 64, 7, 7, 32, true),
        (2, 4, 1, 1, 1, false),
    ];
    let normal = Distribution::Normal(0.0, 1.0);
    for (i, (b, c, h, w, groups, silu)) in cases.into_iter().enumerate() {
        let x = Tensor::<4>::random([b, c, h, w], normal, &device)
            .mul_scalar(3.0)
            .add_scalar(0.5)
            .require_grad();
        let gamma = Tensor::<1>::random([c], normal, &device).require_grad();
        let beta = Tensor::<1>::random([c], normal, &device).require_grad();
        let r = Tensor::<4>::random([b, c, h, w], normal, &device);

        let y_ref =
            group_norm_reference(x.clone(), gamma.clone(), beta.clone(), groups, 1e-6, silu);
        let y =
            ddpm::kernels::group_norm(x.clone(), gamma.clone(), beta.clone(), groups, 1e-6, silu);
        assert_close(
            &format!("case {i} y"),
            values(y.clone()),
            values(y_ref.clone()),
            2e-5,
        );

        let g_ref = (y_ref * r.clone()).sum().backward();
        let g = (y * r).sum().backward();
        assert_close(
            &format!("case {i} dx"),
            values(x.grad(&g).unwrap()),
            values(x.grad(&g_ref).unwrap()),
            5e-5,
        );
        assert_close(
            &format!("case {i} dγ"),
            values(gamma.grad(&g).unwrap()),
            values(gamma.grad(&g_ref).unwrap()),
            5e-5,
        );
        assert_close(
            &format!("case {i} dβ"),
            values(beta.grad(&g).unwrap()),
            values(beta.grad(&g_ref).unwrap()),
            5e-5,
        );
    }
}
