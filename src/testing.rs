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

pub use crate::noise::lcg_values;
