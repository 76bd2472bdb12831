//! Helpers shared by the unit tests.

use burn::tensor::{Device, Tensor};

/// The CPU device tests run on.
pub fn device() -> Device {
    Device::flex()
}

/// A tensor's values as a flat f32 vector.
pub fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 data")
}

/// Deterministic pseudo-random values in [offset − range, offset + range) from a 64-bit LCG
/// (Knuth's MMIX constants); `first_increment` picks the stream's start as the kernels' tests have it.
pub fn lcg_values(n: usize, seed: u64, first_increment: u64, range: f32) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(first_increment);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 * range - range
        })
        .collect()
}
