//! Reduced precision: bf16 operands with f32 accumulation. On this crate's CPU kernels, the
//! stride-1 convolutions on AVX512_BF16's `vdpbf16ps` (two products per lane per instruction);
//! on burn's ops (GPUs, `--kernels burn`), every convolution and the attention's linear layers
//! and products, cast to bf16 and back ([`super::burn_bf16`]). For sampling and evaluation that
//! is the forward pass; for training (mixed precision, as PyTorch's autocast) the forward pass,
//! the input gradients and the weight gradients, while the optimiser, the master weights and
//! the EMA stay f32.
//!
//! The precision is scoped to the calling thread ([`with_precision`]): burn's ops are queued
//! in the order of the calls, so every operation of a model call is dispatched on the thread
//! that made it, and an operation recorded for backpropagation remembers the precision it ran
//! at (a CPU kernel records it, a cast is itself recorded). The FID network forces f32 inside
//! the scope, so a score is always measured with the same network.

use std::cell::Cell;
use std::fmt;
use std::str::FromStr;

/// Arithmetic of the convolutions run inside [`with_precision`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 operands and accumulation (the default).
    #[default]
    F32,
    /// Operands rounded to bfloat16 (8 significant bits, round to nearest even), products
    /// accumulated in f32. Stride-1 convolutions on CPUs with AVX512_BF16 (forward passes and
    /// both gradients); strided ones, attention and normalisation stay f32.
    Bf16,
}

impl Precision {
    /// `f32` or `bf16`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }

    /// `Ok` when this CPU can run it, else why not (naming the CPU feature looked for).
    pub fn check_cpu(self) -> Result<(), String> {
        match self {
            Precision::F32 => Ok(()),
            Precision::Bf16 if bf16_available() => Ok(()),
            Precision::Bf16 => Err(
                "--precision bf16 needs a CPU with AVX-512 and AVX512_BF16 (`avx512bf16` in \
                 /proc/cpuinfo: AMD Zen 4 and later, Intel Cooper Lake, Sapphire Rapids and \
                 later); this CPU lacks it, use --precision f32"
                    .into(),
            ),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            _ => Err(format!("unknown precision `{s}` (f32 or bf16)")),
        }
    }
}

thread_local! {
    static CURRENT: Cell<Precision> = const { Cell::new(Precision::F32) };
}

/// The precision in force on this thread.
pub fn current() -> Precision {
    CURRENT.with(|c| c.get())
}

/// Runs `f` with the network's products on this thread at precision `p`, restoring the
/// previous one afterwards (also when `f` panics). Callers check the device first with
/// [`super::check_precision`]; a bf16 convolution on this crate's CPU kernels panics with the
/// reason where the CPU lacks AVX512_BF16, rather than silently computing in f32.
pub fn with_precision<R>(p: Precision, f: impl FnOnce() -> R) -> R {
    struct Restore(Precision);
    impl Drop for Restore {
        fn drop(&mut self) {
            CURRENT.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(CURRENT.with(|c| c.replace(p)));
    f()
}

thread_local! {
    static EXACT_SUMS: Cell<bool> = const { Cell::new(false) };
}

/// Whether convolutions on this thread must be plain sums of products (no Winograd, whose
/// transforms add rounding error; [`with_exact_sums`]).
pub fn exact_sums() -> bool {
    EXACT_SUMS.with(|c| c.get())
}

/// Runs `f` with the convolutions on this thread computed as plain sums of products (direct
/// kernel or GEMM, never Winograd), as the FID network needs to reproduce its reference
/// features; restores the previous setting afterwards.
pub fn with_exact_sums<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            EXACT_SUMS.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(EXACT_SUMS.with(|c| c.replace(true)));
    f()
}

/// Whether this CPU has AVX-512 with the bf16 dot product.
pub fn bf16_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| {
            super::simd::has_avx512() && std::arch::is_x86_feature_detected!("avx512bf16")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `x` rounded to bfloat16 (the upper 16 bits of an f32), to nearest with ties to even, as
/// `vcvtne2ps2bf16` rounds; NaNs stay NaN (quiet).
pub fn to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    let round = 0x7FFF + ((b >> 16) & 1);
    (b.wrapping_add(round) >> 16) as u16
}

/// The f32 value of a bfloat16.
pub fn from_bf16(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// `x` rounded to the nearest bfloat16, as an f32.
pub fn round_bf16(x: f32) -> f32 {
    from_bf16(to_bf16(x))
}

/// Two values as one bf16 pair (`lo` in the low half: the even element of `vdpbf16ps`).
#[inline(always)]
pub fn pair(lo: f32, hi: f32) -> u32 {
    to_bf16(lo) as u32 | (to_bf16(hi) as u32) << 16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounding_against_known_bits() {
        // 1.0 is exact; 1 + 2⁻⁸ is halfway between 1 and 1 + 2⁻⁷: ties go to the even 1.0;
        // 1 + 3·2⁻⁸ is halfway between 1 + 2⁻⁷ (odd) and 1 + 2·2⁻⁷ (even): up.
        assert_eq!(to_bf16(1.0), 0x3F80);
        assert_eq!(to_bf16(1.0 + 2f32.powi(-8)), 0x3F80);
        assert_eq!(to_bf16(1.0 + 3.0 * 2f32.powi(-8)), 0x3F82);
        assert_eq!(to_bf16(1.0 + 2f32.powi(-8) + 2f32.powi(-20)), 0x3F81);
        assert_eq!(to_bf16(-2.0), 0xC000);
        assert_eq!(to_bf16(f32::INFINITY), 0x7F80);
        // The largest finite f32 rounds up to infinity, as in IEEE rounding.
        assert_eq!(to_bf16(f32::MAX), 0x7F80);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        assert_eq!(from_bf16(0x3F82), 1.015625);
        assert_eq!(pair(1.0, -2.0), 0xC000_3F80);
        // Relative rounding error ≤ 2⁻⁸ (the unit roundoff of 8 significant bits).
        for i in 0..1000 {
            let x = (i as f32 * 0.7371).sin() * 10f32.powi(i % 7 - 3);
            assert!((round_bf16(x) - x).abs() <= x.abs() * 2f32.powi(-8), "{x}");
        }
    }

    #[test]
    fn names_parse_and_scope_restores() {
        assert_eq!("bf16".parse::<Precision>(), Ok(Precision::Bf16));
        assert_eq!("f32".parse::<Precision>(), Ok(Precision::F32));
        assert!("fp16".parse::<Precision>().unwrap_err().contains("fp16"));
        assert_eq!(current(), Precision::F32);
        with_precision(Precision::F32, || assert_eq!(current(), Precision::F32));
        if bf16_available() {
            let inner = with_precision(Precision::Bf16, || {
                with_precision(Precision::F32, || assert_eq!(current(), Precision::F32));
                current()
            });
            assert_eq!(inner, Precision::Bf16);
            assert_eq!(current(), Precision::F32);
        } else {
            println!("no AVX512_BF16 here: bf16 scope not tested");
            assert!(
                Precision::Bf16
                    .check_cpu()
                    .unwrap_err()
                    .contains("avx512bf16")
            );
        }
    }
}
