//! Seeded standard-normal noise on the host, shared by training, sampling and the bound.
//!
//! Drawing on the host (not with a backend's RNG) makes the same seed give the same numbers on
//! every device, so samples are reproducible bit for bit on the CPU and comparable across devices.

use burn::tensor::{Device, Tensor, TensorData};
use rand::{Rng, SeedableRng, rngs::StdRng};
use rand_distr::StandardNormal;

/// Standard-normal noise from a seeded host RNG (independent of any backend's RNG).
pub struct NoiseSource {
    rng: StdRng,
}

impl NoiseSource {
    /// A source seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        NoiseSource {
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// `n` standard-normal f32 values.
    pub fn normal_vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.rng.sample(StandardNormal)).collect()
    }

    /// A standard-normal tensor.
    pub fn normal(&mut self, shape: [usize; 4], device: &Device) -> Tensor<4> {
        let v = self.normal_vec(shape.iter().product());
        Tensor::from_data(TensorData::new(v, shape), device)
    }
}

/// Deterministic pseudo-random values in [−range, range) from a 64-bit LCG
/// (Knuth's MMIX constants); `first_increment` picks the stream's start as the kernels' tests have it.
/// Cheap and backend-free: for test data and the kernel tuner's timing inputs, not for sampling.
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
