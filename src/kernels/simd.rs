//! Runtime selection of AVX-512 code paths, and a vectorisable `exp`.
//!
//! The crate is compiled for baseline x86-64 (SSE2) so that the binary runs anywhere; the hot
//! loops of the kernels are compiled a second time with AVX-512 enabled and picked at run
//! time, the way burn-flex's GEMM does. A given machine always takes the same path, so results
//! stay bit-for-bit reproducible on it.

/// Whether this CPU has the AVX-512 subset the fast paths are compiled for.
#[cfg(target_arch = "x86_64")]
pub fn has_avx512() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
    })
}

/// Defines `fn name(args) -> ret { body }` twice, for baseline x86-64 and for AVX-512, and
/// calls the AVX-512 build when the CPU supports it. Helpers the body calls must be
/// `#[inline(always)]` to be compiled into the fast path.
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                fn fast($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                if $crate::kernels::simd::has_avx512() {
                    // SAFETY: the CPU supports every feature `fast` is compiled with.
                    return unsafe { fast($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use multiversion;

/// e^x in f32 (Cephes `expf`: x = n·ln 2 + r with |r| ≤ ln2/2, a degree-6 polynomial for e^r,
/// 2^n from the exponent bits); within 2 ulp of `f32::exp` on [−87, 88] and branch-free, so
/// loops that call it vectorise. Arguments beyond that range are clamped to it.
///
/// n is rounded by adding 1.5·2²³, which leaves n in the low mantissa bits: the same value as
/// `round_ties_even`, but with integer arithmetic on the bits instead of a float-to-int cast,
/// whose saturating semantics in Rust kept LLVM from vectorising the callers' loops.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const SHIFT: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2E + SHIFT;
    let n = t - SHIFT;
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let p = (((((1.987_569_1e-4 * r + 1.398_2e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 0.166_666_65)
        * r
        + 0.5)
        * (r * r)
        + r
        + 1.0;
    // t's bits are SHIFT's plus n, so 2^n's exponent field is n + 127.
    p * f32::from_bits(t.to_bits().wrapping_sub(SHIFT.to_bits() - 127) << 23)
}

/// 1 / (1 + e^−z).
#[inline(always)]
pub fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + exp(-z))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same polynomial with n from `round_ties_even` and a cast, as first written.
    fn exp_with_cast(x: f32) -> f32 {
        let x = x.clamp(-87.0, 88.0);
        let n = (x * std::f32::consts::LOG2_E).round_ties_even();
        let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
        let p = (((((1.987_569_1e-4 * r + 1.398_2e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2)
            * r
            + 0.166_666_65)
            * r
            + 0.5)
            * (r * r)
            + r
            + 1.0;
        p * f32::from_bits(((n as i32 + 127) as u32) << 23)
    }

    #[test]
    fn exp_rounds_n_as_round_ties_even_does() {
        // Every f32 in [−100, 100] at a stride of 31 steps of the bit pattern, plus the
        // half-integer multiples of ln 2 where ties are decided.
        let mut xs: Vec<f32> = Vec::new();
        for (lo, hi) in [(0f32, 100f32), (-100.0, -0.0)] {
            let (a, b) = (lo.abs().to_bits(), hi.abs().to_bits());
            let sign = if lo < 0.0 { -1.0 } else { 1.0 };
            xs.extend(
                (a.min(b)..a.max(b))
                    .step_by(31)
                    .map(|u| sign * f32::from_bits(u)),
            );
        }
        xs.extend((-260..260).map(|k| k as f32 * 0.5 / std::f32::consts::LOG2_E));
        for x in xs {
            assert_eq!(exp(x).to_bits(), exp_with_cast(x).to_bits(), "x = {x:e}");
        }
    }

    #[test]
    fn exp_is_within_two_ulp_of_std() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (a, b) = (exp(x) as f64, (x as f64).exp());
            worst = worst.max(((a - b) / b).abs());
            x += 0.001_3;
        }
        // f32 ulp is 2^-23 ≈ 1.19e-7 relative.
        assert!(worst < 2.5e-7, "max relative error {worst:e}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(f32::NAN).is_nan());
        assert!(sigmoid(-200.0) >= 0.0 && sigmoid(-200.0) < 1e-37);
        assert_eq!(sigmoid(200.0), 1.0);
    }
}
