//! Helpers shared by the integration tests.

use ddpm::likelihood::standard_normal_cdf;

/// Bin masses of N(m, s²) on the 256-level grid of [−1, 1], edge bins open.
pub fn discretised_gaussian(m: f64, s: f64) -> Vec<f64> {
    (0..256)
        .map(|k| {
            let x = k as f64 / 127.5 - 1.0;
            let hi = if k == 255 {
                1.0
            } else {
                standard_normal_cdf((x + 1.0 / 255.0 - m) / s)
            };
            let lo = if k == 0 {
                0.0
            } else {
                standard_normal_cdf((x - 1.0 / 255.0 - m) / s)
            };
            hi - lo
        })
        .collect()
}
