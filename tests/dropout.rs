//! Dropout on the CPU (its own test binary: the device's seed is process-wide, so a test
//! running beside it that draws random tensors would change the masks between two seedings).

use burn::tensor::{Device, Distribution, Tensor};

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap()
}

/// Dropout on the CPU: the mask follows the device's seed, keeps 1 − p of the elements scaled
/// by 1/(1 − p), and backpropagates through the same mask.
#[test]
fn dropout_follows_the_device_seed_and_backpropagates_its_mask() {
    let device = Device::flex().autodiff();
    let p = 0.25;
    let x = Tensor::<4>::random([4, 8, 16, 16], Distribution::Normal(0.0, 1.0), &device)
        .abs()
        .add_scalar(0.5)
        .detach()
        .require_grad();
    let draw = |seed| {
        let _rng = ddpm::device::rng_guard();
        device.seed(seed);
        ddpm::kernels::dropout(x.clone(), p)
    };
    let y = draw(7);
    assert_eq!(values(y.clone()), values(draw(7)), "same seed, same mask");
    assert_ne!(
        values(y.clone()),
        values(draw(8)),
        "another seed, another mask"
    );
    let grads = y.clone().sum().backward();
    let dx = values(x.grad(&grads).unwrap());
    let (xs, ys) = (values(x.clone()), values(y));
    let scale = 1.0 / (1.0 - p as f32);
    let mut kept = 0;
    for ((x, y), d) in xs.iter().zip(&ys).zip(&dx) {
        if *y == 0.0 {
            assert_eq!(*d, 0.0);
        } else {
            kept += 1;
            assert!(
                (y - x * scale).abs() <= 1e-6 * y.abs(),
                "{y} vs {x}·{scale}"
            );
            assert_eq!(*d, scale);
        }
    }
    let rate = kept as f64 / xs.len() as f64;
    // n = 8192: binomial σ = 0.0048.
    assert!((rate - 0.75).abs() < 0.025, "keep rate {rate}");
}
