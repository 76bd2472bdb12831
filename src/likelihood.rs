//! Log-likelihood pieces of the variational bound (theory.md §4), scalar and in f64.
//!
//! Variances are passed as log-variances, as the reference code does, so that a clipped
//! log β̃ can be used directly.

/// KL(N(μ1, v1) ‖ N(μ2, v2)) per dimension, in nats (theory.md §4):
/// `½(log v2 − log v1 + (v1 + (μ1−μ2)²)/v2 − 1)`.
pub fn normal_kl(mean1: f64, logvar1: f64, mean2: f64, logvar2: f64) -> f64 {
    0.5 * (-1.0 + logvar2 - logvar1
        + (logvar1 - logvar2).exp()
        + (mean1 - mean2).powi(2) * (-logvar2).exp())
}

/// Standard normal CDF Φ(x), accurate to ~1e-15 (via erfc).
pub fn standard_normal_cdf(x: f64) -> f64 {
    0.5 * erfc(-x / std::f64::consts::SQRT_2)
}

/// Complementary error function (W. J. Cody's rational approximations, |rel err| < 1e-15).
pub fn erfc(x: f64) -> f64 {
    // Numerical Recipes' erfc via Chebyshev fit (erfccheb), fractional error < 1.2e-16.
    fn erfccheb(z: f64) -> f64 {
        const COF: [f64; 28] = [
            -1.3026537197817094,
            6.4196979235649026e-1,
            1.9476473204185836e-2,
            -9.561514786808631e-3,
            -9.46595344482036e-4,
            3.66839497852761e-4,
            4.2523324806907e-5,
            -2.0278578112534e-5,
            -1.624290004647e-6,
            1.303655835580e-6,
            1.5626441722e-8,
            -8.5238095915e-8,
            6.529054439e-9,
            5.059343495e-9,
            -9.91364156e-10,
            -2.27365122e-10,
            9.6467911e-11,
            2.394038e-12,
            -6.886027e-12,
            8.94487e-13,
            3.13092e-13,
            -1.12708e-13,
            3.81e-16,
            7.106e-15,
            -1.523e-15,
            -9.4e-17,
            1.21e-16,
            -2.8e-17,
        ];
        let t = 2.0 / (2.0 + z);
        let ty = 4.0 * t - 2.0;
        let (mut d, mut dd) = (0.0f64, 0.0f64);
        for &c in COF[1..].iter().rev() {
            let tmp = d;
            d = ty * d - dd + c;
            dd = tmp;
        }
        t * (-z * z + 0.5 * (COF[0] + ty * d) - dd).exp()
    }
    if x >= 0.0 {
        erfccheb(x)
    } else {
        2.0 - erfccheb(-x)
    }
}

/// log p(x) of one pixel under the discretised Gaussian decoder (theory.md §4, `L_0`):
/// the mass of N(mean, exp(log_scale)²) on the bin [x − 1/255, x + 1/255], where `x` is a data
/// value in [−1, 1] on the 256-level grid; the edge bins extend to −∞ (x = −1) and +∞ (x = 1).
pub fn discretized_gaussian_log_likelihood(x: f64, mean: f64, log_scale: f64) -> f64 {
    let inv_std = (-log_scale).exp();
    let upper = if x > 0.999 {
        1.0
    } else {
        standard_normal_cdf(inv_std * (x - mean + 1.0 / 255.0))
    };
    let lower = if x < -0.999 {
        0.0
    } else {
        standard_normal_cdf(inv_std * (x - mean - 1.0 / 255.0))
    };
    (upper - lower).max(1e-300).ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_kl_closed_form() {
        // KL of identical Gaussians is 0.
        assert!(normal_kl(0.3, -1.2, 0.3, -1.2).abs() < 1e-15);
        // KL(N(1, 1) ‖ N(0, 1)) = ½.
        assert!((normal_kl(1.0, 0.0, 0.0, 0.0) - 0.5).abs() < 1e-15);
        // KL(N(0, 4) ‖ N(0, 1)) = ½(0 − ln 4 + 4 − 1).
        let expect = 0.5 * (-(4.0f64).ln() + 3.0);
        assert!((normal_kl(0.0, (4.0f64).ln(), 0.0, 0.0) - expect).abs() < 1e-15);
    }

    #[test]
    fn erfc_reference_values() {
        // Values from Abramowitz & Stegun / mpmath.
        for (x, v) in [
            (0.0, 1.0),
            (0.5, 0.4795001221869535),
            (1.0, 0.15729920705028513),
            (2.0, 0.004677734981047266),
            (-1.0, 1.8427007929497148),
            (5.0, 1.5374597944280349e-12),
        ] {
            assert!(((erfc(x) - v) / v).abs() < 1e-13, "erfc({x}) = {}", erfc(x));
        }
        assert!((standard_normal_cdf(1.959963984540054) - 0.975).abs() < 1e-14);
    }

    #[test]
    fn discretized_bins_sum_to_one() {
        for (mean, log_scale) in [(0.0, -3.0), (0.37, -5.5), (-0.9, -1.0), (1.3, -2.0)] {
            let total: f64 = (0..256)
                .map(|k| {
                    let x = k as f64 / 127.5 - 1.0;
                    discretized_gaussian_log_likelihood(x, mean, log_scale).exp()
                })
                .sum();
            assert!((total - 1.0).abs() < 1e-12, "mean {mean}: Σ = {total}");
        }
    }
}
