//! Runtime selection of the kernels' code paths by instruction set, and a vectorisable `exp`.
//!
//! The crate is compiled for baseline x86-64 (SSE2) so that the binary runs anywhere; the hot
//! loops of the kernels are compiled twice more, with AVX2 + FMA and with AVX-512, and the best
//! build the CPU supports is picked at run time, the way burn-flex's GEMM does. The explicit
//! AVX-512 kernels (the direct convolution, Winograd's products, the register transposes, bf16)
//! run only at [`SimdLevel::Avx512`]; below it their callers take the GEMM crate or the scalar
//! loops. A given machine always takes the same path, so results stay bit-for-bit
//! reproducible on it; the loops compiled by [`multiversion!`] use no fused or reordered
//! arithmetic, so their three builds give the same bits.
//!
//! `DDPM_SIMD=baseline|avx2|avx512` caps the level below what the CPU has (a CPU without
//! AVX-512 runs what `DDPM_SIMD=avx2` runs here), so that every path can be tested and timed
//! on one machine; [`check_env`] rejects other values and levels the CPU lacks.

use std::sync::OnceLock;

/// An instruction-set level of the kernels' fast paths, lowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SimdLevel {
    /// Baseline x86-64 (SSE2), or any other architecture: portable Rust.
    Baseline,
    /// AVX2 and FMA (Intel Haswell and later, AMD Zen 1–3): the multiversioned loops at
    /// 256 bits; the AVX-512 kernels' work goes to the GEMM crate and scalar loops.
    Avx2,
    /// AVX-512 F + VL with AVX2 and FMA (Intel Skylake-SP and later, AMD Zen 4 and later).
    Avx512,
}

impl SimdLevel {
    /// The name `DDPM_SIMD` takes and the tuner's cache records.
    pub fn name(self) -> &'static str {
        match self {
            SimdLevel::Baseline => "baseline",
            SimdLevel::Avx2 => "avx2",
            SimdLevel::Avx512 => "avx512",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [SimdLevel::Baseline, SimdLevel::Avx2, SimdLevel::Avx512]
            .into_iter()
            .find(|l| l.name() == s.trim().to_ascii_lowercase())
    }
}

/// The best level this CPU supports.
pub fn detected() -> SimdLevel {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") && has!("avx512vl") && has!("avx2") && has!("fma") {
            return SimdLevel::Avx512;
        }
        if has!("avx2") && has!("fma") {
            return SimdLevel::Avx2;
        }
    }
    SimdLevel::Baseline
}

/// `DDPM_SIMD`'s level, if it is set: an error for a value that names no level or a level
/// above this CPU's.
fn requested() -> Result<Option<SimdLevel>, String> {
    let Ok(v) = std::env::var("DDPM_SIMD") else {
        return Ok(None);
    };
    let level = SimdLevel::parse(&v).ok_or_else(|| {
        format!("DDPM_SIMD={v:?}: use baseline, avx2 or avx512 (or unset it for the CPU's best)")
    })?;
    let cpu = detected();
    if level > cpu {
        return Err(format!(
            "DDPM_SIMD={}: this CPU supports {} at most",
            level.name(),
            cpu.name()
        ));
    }
    Ok(Some(level))
}

/// Checks `DDPM_SIMD` (for the CLI to report before any kernel runs).
///
/// # Errors
/// If it is set to something other than `baseline`, `avx2` or `avx512`, or to a level this
/// CPU lacks.
pub fn check_env() -> Result<SimdLevel, String> {
    requested().map(|_| level())
}

/// The level the kernels run at: the CPU's best, or `DDPM_SIMD`'s when it names a lower one
/// (an unusable value is ignored here; [`check_env`] reports it). Fixed for the process.
pub fn level() -> SimdLevel {
    static LEVEL: OnceLock<SimdLevel> = OnceLock::new();
    *LEVEL.get_or_init(|| requested().ok().flatten().unwrap_or_else(detected))
}

/// Whether the AVX-512 kernels run (the level is [`SimdLevel::Avx512`]).
pub fn has_avx512() -> bool {
    level() == SimdLevel::Avx512
}

/// Defines `fn name(args) -> ret { body }` three times, for baseline x86-64, for AVX2 + FMA and
/// for AVX-512, and calls the build of the current [`level`]. Helpers the body calls must be
/// `#[inline(always)]` to be compiled into the fast paths.
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
                #[target_feature(enable = "avx2,fma")]
                fn wide($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                match $crate::kernels::simd::level() {
                    // SAFETY: `level` never exceeds what the CPU supports.
                    $crate::kernels::simd::SimdLevel::Avx512 => return unsafe { fast($($arg),*) },
                    // SAFETY: as above.
                    $crate::kernels::simd::SimdLevel::Avx2 => return unsafe { wide($($arg),*) },
                    $crate::kernels::simd::SimdLevel::Baseline => {}
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

/// Copies a `rows × cols` block (each ≤ 16) from row-major `src` (row stride `src_stride`)
/// into `dst` transposed (row stride `dst_stride`): `dst[j·dst_stride + i] = src[i·src_stride + j]`.
/// With AVX-512 the block is moved through sixteen registers and transposed with shuffles
/// (unpack, in-lane shuffle, two 128-bit-lane shuffles), which is what turns NCHW into NHWC
/// at memory speed; elsewhere it is the scalar loop.
///
/// # Panics
/// If a row or column is outside `src` or `dst`.
#[inline]
pub fn transpose_block(
    src: &[f32],
    src_stride: usize,
    rows: usize,
    cols: usize,
    dst: &mut [f32],
    dst_stride: usize,
) {
    assert!(rows <= 16 && cols <= 16, "transpose_block: block over 16");
    if rows == 0 || cols == 0 {
        return;
    }
    assert!(
        (rows - 1) * src_stride + cols <= src.len(),
        "transpose_block: source too short"
    );
    assert!(
        (cols - 1) * dst_stride + rows <= dst.len(),
        "transpose_block: destination too short"
    );
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: AVX-512F is present, and the asserts keep every masked access in bounds.
        unsafe { transpose_block_avx512(src, src_stride, rows, cols, dst, dst_stride) };
        return;
    }
    transpose_block_scalar(src, src_stride, rows, cols, dst, dst_stride);
}

fn transpose_block_scalar(
    src: &[f32],
    src_stride: usize,
    rows: usize,
    cols: usize,
    dst: &mut [f32],
    dst_stride: usize,
) {
    for i in 0..rows {
        for j in 0..cols {
            dst[j * dst_stride + i] = src[i * src_stride + j];
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn transpose_block_avx512(
    src: &[f32],
    src_stride: usize,
    rows: usize,
    cols: usize,
    dst: &mut [f32],
    dst_stride: usize,
) {
    use std::arch::x86_64::*;
    let load_mask: __mmask16 = ((1u32 << cols) - 1) as __mmask16;
    let store_mask: __mmask16 = ((1u32 << rows) - 1) as __mmask16;
    let zero = _mm512_setzero_ps();
    // SAFETY (loads and stores below): row i < rows reads `cols` floats at i·src_stride,
    // column j < cols writes `rows` floats at j·dst_stride, both checked by the caller.
    let r: [__m512; 16] = std::array::from_fn(|i| {
        if i < rows {
            unsafe { _mm512_maskz_loadu_ps(load_mask, src.as_ptr().add(i * src_stride)) }
        } else {
            zero
        }
    });
    // Pairs of rows interleaved, then pairs of pairs, then 128-bit lanes twice.
    let mut t = [zero; 16];
    for k in 0..8 {
        t[2 * k] = _mm512_unpacklo_ps(r[2 * k], r[2 * k + 1]);
        t[2 * k + 1] = _mm512_unpackhi_ps(r[2 * k], r[2 * k + 1]);
    }
    let mut u = [zero; 16];
    for k in 0..4 {
        let b = 4 * k;
        u[b] = _mm512_shuffle_ps::<0x44>(t[b], t[b + 2]);
        u[b + 1] = _mm512_shuffle_ps::<0xEE>(t[b], t[b + 2]);
        u[b + 2] = _mm512_shuffle_ps::<0x44>(t[b + 1], t[b + 3]);
        u[b + 3] = _mm512_shuffle_ps::<0xEE>(t[b + 1], t[b + 3]);
    }
    for h in 0..2 {
        let b = 8 * h;
        for k in 0..4 {
            t[b + k] = _mm512_shuffle_f32x4::<0x88>(u[b + k], u[b + k + 4]);
            t[b + k + 4] = _mm512_shuffle_f32x4::<0xDD>(u[b + k], u[b + k + 4]);
        }
    }
    for k in 0..8 {
        u[k] = _mm512_shuffle_f32x4::<0x88>(t[k], t[k + 8]);
        u[k + 8] = _mm512_shuffle_f32x4::<0xDD>(t[k], t[k + 8]);
    }
    for (j, v) in u.iter().enumerate().take(cols) {
        unsafe { _mm512_mask_storeu_ps(dst.as_mut_ptr().add(j * dst_stride), store_mask, *v) };
    }
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
    fn transpose_block_moves_every_element_and_nothing_else() {
        let src: Vec<f32> = (0..40 * 20).map(|v| v as f32).collect();
        for (rows, cols) in [(16, 16), (16, 12), (7, 16), (1, 1), (3, 5), (16, 1), (0, 4)] {
            let (ss, ds) = (20, 24);
            let mut dst = vec![-1f32; 17 * ds];
            transpose_block(&src[3..], ss, rows, cols, &mut dst, ds);
            let mut scalar = vec![-1f32; 17 * ds];
            transpose_block_scalar(&src[3..], ss, rows, cols, &mut scalar, ds);
            assert_eq!(
                dst, scalar,
                "{rows}×{cols}: fast path against the scalar loop"
            );
            for j in 0..17 {
                for i in 0..ds {
                    let want = if i < rows && j < cols {
                        src[3 + i * ss + j]
                    } else {
                        -1.0
                    };
                    assert_eq!(dst[j * ds + i], want, "{rows}×{cols} at ({j}, {i})");
                }
            }
        }
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

    /// Every kernel test in this binary (`kernels::`) passes again at each level below the
    /// CPU's: the test binary runs itself with `DDPM_SIMD` set, so the paths a CPU without
    /// AVX-512 or without AVX2 takes are tested on this one. (The child, seeing `DDPM_SIMD`,
    /// skips this test.)
    #[test]
    fn kernel_tests_pass_at_the_lower_levels() {
        if std::env::var_os("DDPM_SIMD").is_some() {
            println!("DDPM_SIMD is set: this process is one of the lower levels' runs");
            return;
        }
        let exe = std::env::current_exe().expect("the test binary");
        let lower = [SimdLevel::Baseline, SimdLevel::Avx2]
            .into_iter()
            .filter(|&l| l < detected());
        for l in lower {
            let out = std::process::Command::new(&exe)
                .args(["kernels::", "--test-threads", "2"])
                .env("DDPM_SIMD", l.name())
                .output()
                .expect("run the test binary");
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "kernel tests at DDPM_SIMD={}:\n{stdout}\n{}",
                l.name(),
                String::from_utf8_lossy(&out.stderr)
            );
            // The child ran the kernel tests, not an empty selection.
            assert!(stdout.contains("kernels::winograd::tests::"), "{stdout}");
        }
    }

    #[test]
    fn levels_are_ordered_and_named() {
        assert!(SimdLevel::Baseline < SimdLevel::Avx2 && SimdLevel::Avx2 < SimdLevel::Avx512);
        for l in [SimdLevel::Baseline, SimdLevel::Avx2, SimdLevel::Avx512] {
            assert_eq!(SimdLevel::parse(l.name()), Some(l));
        }
        assert_eq!(SimdLevel::parse("AVX2"), Some(SimdLevel::Avx2));
        assert_eq!(SimdLevel::parse("avx3"), None);
        assert!(level() <= detected());
    }
}
