//! Direct stride-1 convolution with an AVX-512 register-blocked micro-kernel.
//!
//! The GEMM route copies the input nine times into a patch matrix, and the GEMM then copies
//! that matrix again into its packed panels. Here the micro-kernel reads the zero-padded input
//! planes in place: in the "wide" layout the GEMM route (conv.rs) also uses, the input that output position `q`
//! needs for tap (ky, kx) sits at `q + ky·Wp + kx`, so 16 consecutive outputs need 16
//! consecutive inputs — one vector load — for every (input channel, tap). Each load feeds
//! up to 16 fused multiply-adds, one per output channel of the block, with the weight
//! broadcast from a `[C_in][tap][C_out]` copy of the kernel; the 16×16 outputs of a block stay
//! in registers until every input channel and tap has been added.
//!
//! The input gradient of a stride-1 convolution is itself a stride-1 convolution (of the
//! padded output gradient with the flipped, transposed kernel), so it runs on the same kernel.

/// Weights as `[C_in][tap][C_out]` (output channels contiguous, for broadcast loads), from
/// `[C_out][C_in][taps]`.
pub fn pack_weights(w: &[f32], c_out: usize, c_in: usize, taps: usize) -> Vec<f32> {
    let mut packed = vec![0f32; w.len()];
    for co in 0..c_out {
        for ci in 0..c_in {
            for t in 0..taps {
                packed[(ci * taps + t) * c_out + co] = w[(co * c_in + ci) * taps + t];
            }
        }
    }
    packed
}

/// The kernel of the convolution that gives a stride-1 convolution's input gradient, in the
/// ordinary `[C_in][C_out][taps]` layout: `w'[ci][co][t] = w[co][ci][taps − 1 − t]`
/// (transposed, and flipped in both axes).
pub fn transpose_flip(w: &[f32], c_out: usize, c_in: usize, taps: usize) -> Vec<f32> {
    let mut out = vec![0f32; w.len()];
    for co in 0..c_out {
        for ci in 0..c_in {
            for t in 0..taps {
                out[(ci * c_out + co) * taps + t] = w[(co * c_in + ci) * taps + (taps - 1 - t)];
            }
        }
    }
    out
}

/// [`transpose_flip`] packed like [`pack_weights`], for a convolution from `C_out` to `C_in`
/// channels.
pub fn pack_weights_transposed_flipped(
    w: &[f32],
    c_out: usize,
    c_in: usize,
    taps: usize,
) -> Vec<f32> {
    pack_weights(&transpose_flip(w, c_out, c_in, taps), c_in, c_out, taps)
}

/// Whether the micro-kernel can run on this CPU.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::simd::has_avx512()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// One image: `y[co][q] = bias[co] + Σ_ci Σ_t wt[ci][t][co] · xpad[ci·plane + q + offs[t]]`
/// for `q < n`, where `xpad` holds `c_in` planes of `plane` values and enough slack after the
/// last that `n − 1 + max(offs)` stays inside it.
///
/// # Panics
/// If the slices are too short for these sizes, or if AVX-512 is not [`available`].
#[allow(clippy::too_many_arguments)]
pub fn conv_image(
    xpad: &[f32],
    plane: usize,
    c_in: usize,
    offs: &[usize],
    wt: &[f32],
    c_out: usize,
    bias: Option<&[f32]>,
    n: usize,
    y: &mut [f32],
) {
    let taps = offs.len();
    let max_off = offs.iter().copied().max().unwrap_or(0);
    assert!(c_in == 0 || n == 0 || (c_in - 1) * plane + n - 1 + max_off < xpad.len());
    assert_eq!(
        wt.len(),
        c_in * taps * c_out,
        "direct conv: packed weight size"
    );
    assert!(y.len() >= c_out * n, "direct conv: output size");
    if let Some(b) = bias {
        assert_eq!(b.len(), c_out, "direct conv: bias size");
    }
    assert!(available(), "direct conv: needs AVX-512");
    #[cfg(target_arch = "x86_64")]
    {
        let mut co0 = 0;
        while co0 < c_out {
            let rem = c_out - co0;
            let cb = [16, 8, 4, 2, 1].into_iter().find(|&c| c <= rem).unwrap();
            let args = Block {
                xpad,
                plane,
                c_in,
                offs,
                wt,
                c_out,
                bias,
                n,
                co0,
            };
            // SAFETY: `available()` checked AVX-512; the asserts above bound every access.
            unsafe {
                match cb {
                    16 => avx512::block::<16>(&args, y),
                    8 => avx512::block::<8>(&args, y),
                    4 => avx512::block::<4>(&args, y),
                    2 => avx512::block::<2>(&args, y),
                    _ => avx512::block::<1>(&args, y),
                }
            }
            co0 += cb;
        }
    }
}

/// Weights as bf16 pairs of input channels, `[C_in/2][tap][C_out]`: element (cp, t, co) holds
/// `w[co][2cp][t]` in its low half and `w[co][2cp+1][t]` (0 past the last channel) in its
/// high half, the operand layout of `vdpbf16ps`.
pub fn pack_weights_bf16(w: &[f32], c_out: usize, c_in: usize, taps: usize) -> Vec<u32> {
    use super::precision::pair;
    let pairs = c_in.div_ceil(2);
    let mut packed = vec![0u32; pairs * taps * c_out];
    let at = |co: usize, ci: usize, t: usize| {
        if ci < c_in {
            w[(co * c_in + ci) * taps + t]
        } else {
            0.0
        }
    };
    for cp in 0..pairs {
        for t in 0..taps {
            for co in 0..c_out {
                packed[(cp * taps + t) * c_out + co] =
                    pair(at(co, 2 * cp, t), at(co, 2 * cp + 1, t));
            }
        }
    }
    packed
}

/// `c_in` planes of `plane` values (then any slack up to `len`) as bf16 pairs of planes:
/// `out[cp·plane + i]` holds plane 2cp's value i in its low half and plane 2cp+1's in its
/// high half (0 past the last plane), so one 16-lane load feeds `vdpbf16ps` two channels.
pub fn pair_planes(x: &[f32], plane: usize, c_in: usize, out: &mut Vec<u32>) {
    use super::precision::pair;
    let pairs = c_in.div_ceil(2);
    let slack = x.len() - c_in * plane;
    out.clear();
    out.resize(pairs * plane + slack, 0);
    for cp in 0..pairs {
        let lo = &x[2 * cp * plane..][..plane];
        let dst = &mut out[cp * plane..][..plane];
        if 2 * cp + 1 < c_in {
            let hi = &x[(2 * cp + 1) * plane..][..plane];
            for ((d, &a), &b) in dst.iter_mut().zip(lo).zip(hi) {
                *d = pair(a, b);
            }
        } else {
            for (d, &a) in dst.iter_mut().zip(lo) {
                *d = pair(a, 0.0);
            }
        }
    }
}

/// [`conv_image`] with bf16 operands and f32 accumulation: `xpair` and `wt` as
/// [`pair_planes`] and [`pack_weights_bf16`] lay them out (`pairs` channel pairs).
///
/// # Panics
/// If the slices are too short for these sizes, or if AVX512_BF16 is not available
/// ([`super::precision::bf16_available`]).
#[allow(clippy::too_many_arguments)]
pub fn conv_image_bf16(
    xpair: &[u32],
    plane: usize,
    pairs: usize,
    offs: &[usize],
    wt: &[u32],
    c_out: usize,
    bias: Option<&[f32]>,
    n: usize,
    y: &mut [f32],
) {
    let taps = offs.len();
    let max_off = offs.iter().copied().max().unwrap_or(0);
    assert!(pairs == 0 || n == 0 || (pairs - 1) * plane + n - 1 + max_off < xpair.len());
    assert_eq!(
        wt.len(),
        pairs * taps * c_out,
        "direct bf16 conv: packed weight size"
    );
    assert!(y.len() >= c_out * n, "direct bf16 conv: output size");
    if let Some(b) = bias {
        assert_eq!(b.len(), c_out, "direct bf16 conv: bias size");
    }
    assert!(
        super::precision::bf16_available(),
        "direct bf16 conv: needs AVX512_BF16"
    );
    #[cfg(target_arch = "x86_64")]
    {
        let mut co0 = 0;
        while co0 < c_out {
            let rem = c_out - co0;
            let cb = [16, 8, 4, 2, 1].into_iter().find(|&c| c <= rem).unwrap();
            let args = PairBlock {
                xpair,
                plane,
                pairs,
                offs,
                wt,
                c_out,
                bias,
                n,
                co0,
            };
            // SAFETY: `bf16_available()` checked AVX-512 and AVX512_BF16; the asserts above
            // bound every access.
            unsafe {
                match cb {
                    16 => avx512bf16::block::<16>(&args, y),
                    8 => avx512bf16::block::<8>(&args, y),
                    4 => avx512bf16::block::<4>(&args, y),
                    2 => avx512bf16::block::<2>(&args, y),
                    _ => avx512bf16::block::<1>(&args, y),
                }
            }
            co0 += cb;
        }
    }
}

/// `dy` of one image, `c_out` rows of `n` positions, as bf16 pairs of positions with the
/// output channels contiguous: `out[qp·c_out + co]` holds `dy[co][2qp]` and `dy[co][2qp+1]`
/// (0 past `n`), the operand of [`weight_grad_image_bf16`].
pub fn pair_positions_transposed(dy: &[f32], c_out: usize, n: usize, out: &mut Vec<u32>) {
    use super::precision::pair;
    let n2 = n.div_ceil(2);
    out.clear();
    out.resize(n2 * c_out, 0);
    for co in 0..c_out {
        let row = &dy[co * n..][..n];
        for qp in 0..n2 {
            let hi = if 2 * qp + 1 < n { row[2 * qp + 1] } else { 0.0 };
            out[qp * c_out + co] = pair(row[2 * qp], hi);
        }
    }
}

/// The input planes of one image for [`weight_grad_image_bf16`]: for every channel, bf16
/// pairs of positions starting at even (`[0]`) and at odd (`[1]`) positions,
/// `len` pairs each, zero past the plane: `out[par][ci·len + j]` holds
/// `x[ci][2j + par]` and `x[ci][2j + par + 1]`.
pub fn pair_planes_both_parities(
    x: &[f32],
    plane: usize,
    c_in: usize,
    len: usize,
    out: &mut [Vec<u32>; 2],
) {
    use super::precision::pair;
    for (par, o) in out.iter_mut().enumerate() {
        o.clear();
        o.resize(c_in * len, 0);
        for ci in 0..c_in {
            let src = &x[ci * plane..][..plane];
            let at = |i: usize| if i < plane { src[i] } else { 0.0 };
            for (j, d) in o[ci * len..][..len].iter_mut().enumerate() {
                *d = pair(at(2 * j + par), at(2 * j + par + 1));
            }
        }
    }
}

/// Adds one image's weight gradient of a stride-1 convolution to `dw` (`[C_out][C_in][tap]`):
/// `dw[co][ci][t] += Σ_{q<n} dy[co][q] · x[ci][q + offs[t]]`, with bf16 operands (pairs of
/// positions per `vdpbf16ps`) and f32 sums. `dyt` as [`pair_positions_transposed`] lays it
/// out, `xpairs` as [`pair_planes_both_parities`] with `len` ≥ ⌈n/2⌉ + max(offs)/2 + 1.
///
/// # Panics
/// If the slices are too short for these sizes, or AVX512_BF16 is not available.
#[allow(clippy::too_many_arguments)]
pub fn weight_grad_image_bf16(
    dyt: &[u32],
    xpairs: &[Vec<u32>; 2],
    len: usize,
    c_in: usize,
    offs: &[usize],
    c_out: usize,
    n: usize,
    dw: &mut [f32],
) {
    let n2 = n.div_ceil(2);
    let max_off = offs.iter().copied().max().unwrap_or(0);
    assert!(
        len > n2 + max_off / 2,
        "weight grad bf16: pair planes too short"
    );
    assert!(xpairs.iter().all(|x| x.len() >= c_in * len));
    assert!(dyt.len() >= n2 * c_out, "weight grad bf16: dy size");
    assert_eq!(
        dw.len(),
        c_out * c_in * offs.len(),
        "weight grad bf16: dW size"
    );
    assert!(
        super::precision::bf16_available(),
        "weight grad bf16: needs AVX512_BF16"
    );
    #[cfg(target_arch = "x86_64")]
    for ci in 0..c_in {
        for t0 in (0..offs.len()).step_by(avx512bf16::TAPS) {
            let taps = &offs[t0..offs.len().min(t0 + avx512bf16::TAPS)];
            for co0 in (0..c_out).step_by(16) {
                // SAFETY: `bf16_available()` checked the CPU; the asserts above bound every
                // access (`qp + off/2 < len`, `qp·c_out + co < n2·c_out`).
                unsafe {
                    avx512bf16::weight_grad_block(
                        dyt, xpairs, len, ci, c_in, taps, t0, c_out, co0, n2, dw,
                    )
                }
            }
        }
    }
}

/// The operands of one block of output channels, bf16 pairs.
struct PairBlock<'a> {
    xpair: &'a [u32],
    plane: usize,
    pairs: usize,
    offs: &'a [usize],
    wt: &'a [u32],
    c_out: usize,
    bias: Option<&'a [f32]>,
    n: usize,
    co0: usize,
}

#[cfg(target_arch = "x86_64")]
mod avx512bf16 {
    use super::PairBlock;
    use std::arch::x86_64::*;

    /// Taps held in registers at once by [`weight_grad_block`] (one accumulator each).
    pub(super) const TAPS: usize = 9;

    /// dW for input channel `ci`, taps `t0 .. t0 + taps.len()`, output channels
    /// `co0 .. co0 + 16` (lanes; masked past `c_out`), summed over all position pairs.
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn weight_grad_block(
        dyt: &[u32],
        xpairs: &[Vec<u32>; 2],
        len: usize,
        ci: usize,
        c_in: usize,
        taps: &[usize],
        t0: usize,
        c_out: usize,
        co0: usize,
        n2: usize,
        dw: &mut [f32],
    ) {
        let lanes = (c_out - co0).min(16);
        let mask = ((1u32 << lanes) - 1) as __mmask16;
        let mut acc = [_mm512_setzero_ps(); TAPS];
        // For tap offset `off`, the pair (x[q + off], x[q + off + 1]) with q = 2qp sits at
        // index qp + off/2 of the parity-(off mod 2) pair plane.
        let mut src = [std::ptr::null::<u32>(); TAPS];
        for (k, &off) in taps.iter().enumerate() {
            src[k] = unsafe { xpairs[off % 2].as_ptr().add(ci * len + off / 2) };
        }
        let dp = dyt.as_ptr();
        for qp in 0..n2 {
            // SAFETY: qp·c_out + co0 + lane < n2·c_out for unmasked lanes; qp + off/2 < len.
            let d: __m512bh = unsafe {
                std::mem::transmute(_mm512_maskz_loadu_epi32(
                    mask,
                    dp.add(qp * c_out + co0).cast(),
                ))
            };
            for k in 0..taps.len() {
                let xv: __m512bh =
                    unsafe { std::mem::transmute(_mm512_set1_epi32(*src[k].add(qp) as i32)) };
                acc[k] = _mm512_dpbf16_ps(acc[k], d, xv);
            }
        }
        let taps_all = dw.len() / (c_out * c_in);
        for (k, a) in acc.iter().enumerate().take(taps.len()) {
            let mut v = [0f32; 16];
            unsafe { _mm512_storeu_ps(v.as_mut_ptr(), *a) };
            for (lane, &val) in v.iter().enumerate().take(lanes) {
                dw[((co0 + lane) * c_in + ci) * taps_all + t0 + k] += val;
            }
        }
    }

    /// Output channels `co0 .. co0 + CB`, all positions, 16 at a time; each instruction adds
    /// the products of two input channels.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn block<const CB: usize>(a: &PairBlock, y: &mut [f32]) {
        let taps = a.offs.len();
        let xp = a.xpair.as_ptr();
        let yp = y.as_mut_ptr();
        let mut q0 = 0;
        while q0 < a.n {
            let len = (a.n - q0).min(16);
            let mask = ((1u32 << len) - 1) as __mmask16;
            let mut acc = [_mm512_setzero_ps(); CB];
            if let Some(b) = a.bias {
                for (j, v) in acc.iter_mut().enumerate() {
                    *v = _mm512_set1_ps(b[a.co0 + j]);
                }
            }
            for cp in 0..a.pairs {
                // SAFETY (all pointer arithmetic below): the caller asserted that every
                // position `cp·plane + q + off` with q < n is inside `xpair`; masked-off lanes
                // are not read. Weight indices stay below pairs·taps·c_out.
                let xb = unsafe { xp.add(cp * a.plane + q0) };
                let wb = &a.wt[cp * taps * a.c_out + a.co0..];
                for (t, &off) in a.offs.iter().enumerate() {
                    let xv: __m512bh = unsafe {
                        std::mem::transmute(_mm512_maskz_loadu_epi32(mask, xb.add(off).cast()))
                    };
                    let w = &wb[t * a.c_out..][..CB];
                    for j in 0..CB {
                        // SAFETY: a bit-for-bit reinterpretation of 16 lanes of two bf16.
                        let wv: __m512bh =
                            unsafe { std::mem::transmute(_mm512_set1_epi32(w[j] as i32)) };
                        acc[j] = _mm512_dpbf16_ps(acc[j], xv, wv);
                    }
                }
            }
            for (j, v) in acc.iter().enumerate() {
                unsafe { _mm512_mask_storeu_ps(yp.add((a.co0 + j) * a.n + q0), mask, *v) };
            }
            q0 += 16;
        }
    }
}

/// The operands of one block of output channels.
struct Block<'a> {
    xpad: &'a [f32],
    plane: usize,
    c_in: usize,
    offs: &'a [usize],
    wt: &'a [f32],
    c_out: usize,
    bias: Option<&'a [f32]>,
    n: usize,
    co0: usize,
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::Block;
    use std::arch::x86_64::*;

    /// Output channels `co0 .. co0 + CB`, all positions, 16 at a time.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn block<const CB: usize>(a: &Block, y: &mut [f32]) {
        let taps = a.offs.len();
        let xp = a.xpad.as_ptr();
        let yp = y.as_mut_ptr();
        let mut q0 = 0;
        while q0 < a.n {
            let len = (a.n - q0).min(16);
            let mask = ((1u32 << len) - 1) as __mmask16;
            let mut acc = [_mm512_setzero_ps(); CB];
            if let Some(b) = a.bias {
                for (j, v) in acc.iter_mut().enumerate() {
                    *v = _mm512_set1_ps(b[a.co0 + j]);
                }
            }
            for ci in 0..a.c_in {
                // SAFETY (all pointer arithmetic below): the caller asserted that every
                // position `ci·plane + q + off` with q < n is inside `xpad`; masked-off lanes
                // are not read. Weight indices stay below c_in·taps·c_out.
                let xb = unsafe { xp.add(ci * a.plane + q0) };
                let wb = &a.wt[ci * taps * a.c_out + a.co0..];
                for (t, &off) in a.offs.iter().enumerate() {
                    let xv = unsafe { _mm512_maskz_loadu_ps(mask, xb.add(off)) };
                    let w = &wb[t * a.c_out..][..CB];
                    for j in 0..CB {
                        acc[j] = _mm512_fmadd_ps(xv, _mm512_set1_ps(w[j]), acc[j]);
                    }
                }
            }
            for (j, v) in acc.iter().enumerate() {
                unsafe { _mm512_mask_storeu_ps(yp.add((a.co0 + j) * a.n + q0), mask, *v) };
            }
            q0 += 16;
        }
    }
}
