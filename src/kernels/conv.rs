//! 2-D convolution (groups 1, dilation 1) as im2col + one GEMM per image, with
//! its backward pass as two more GEMMs per image.
//!
//! Why not burn-flex's own convolution: its forward transposes the input to NHWC on one thread
//! and scatters the GEMM result back with strided writes; its input gradient goes through a
//! scalar transposed convolution and its weight gradient through a convolution whose "kernel"
//! is the whole batch of images (a GEMM with n = 9). Here all three products are plain GEMMs
//! over the same `col` matrix of patches:
//!
//! - forward: `y_b = W · col(x_b) + bias`, `W` read as `[C_out, C_in·k·k]` exactly as stored;
//! - input gradient: `dx_b = col2im(Wᵀ · dy_b)`;
//! - weight gradient: `dW = Σ_b dy_b · col(x_b)ᵀ`, summed over fixed chunks of the batch in a
//!   fixed order, so the result does not depend on how many threads ran it.

use super::policy::KernelPolicy;
use super::simd::multiversion;
pub use super::tune::Algo;
use gemm::{Parallelism, gemm};
use rayon::prelude::*;

/// The shape of one convolution: NCHW input, `[C_out, C_in, k, k]` weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    /// Images in the batch.
    pub batch: usize,
    /// Input channels.
    pub c_in: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output channels.
    pub c_out: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Stride (both axes).
    pub stride: usize,
    /// Zero padding: top, left, bottom, right.
    pub pad: [usize; 4],
}

/// Images per partial weight gradient. Fixed (not derived from the thread count) so that the
/// order of the floating-point sum, and with it every bit of the result, never depends on the
/// machine's parallelism.
const WEIGHT_GRAD_CHUNK: usize = 2;

impl ConvGeom {
    /// Output height.
    pub fn out_h(&self) -> usize {
        (self.h + self.pad[0] + self.pad[2] - self.kh) / self.stride + 1
    }

    /// Output width.
    pub fn out_w(&self) -> usize {
        (self.w + self.pad[1] + self.pad[3] - self.kw) / self.stride + 1
    }

    /// Rows of the patch matrix: C_in·k·k.
    pub(crate) fn col_rows(&self) -> usize {
        self.c_in * self.kh * self.kw
    }

    /// Output pixels per channel.
    fn out_pixels(&self) -> usize {
        self.out_h() * self.out_w()
    }

    pub(crate) fn in_len(&self) -> usize {
        self.c_in * self.h * self.w
    }

    /// A 1×1, stride-1, unpadded convolution: the patch matrix is the image itself.
    fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == [0; 4]
    }

    /// Stride-1 convolutions use the "wide" layout: the input is zero-padded once to
    /// Hp × Wp planes, each patch row is then one contiguous slice of them, and the GEMM
    /// computes out_h × Wp outputs of which the last Wp − out_w per row are discarded.
    pub(crate) fn is_wide(&self) -> bool {
        self.stride == 1 && !self.is_pointwise()
    }

    fn padded_w(&self) -> usize {
        self.w + self.pad[1] + self.pad[3]
    }

    fn padded_plane(&self) -> usize {
        (self.h + self.pad[0] + self.pad[2]) * self.padded_w()
    }

    /// Columns of the GEMMs: out_h·Wp in the wide layout, out_h·out_w otherwise.
    fn gemm_n(&self) -> usize {
        if self.is_wide() {
            self.out_h() * self.padded_w()
        } else {
            self.out_pixels()
        }
    }

    /// The padded planes plus kw slack values: the last patch rows run past the last plane
    /// into the discarded columns.
    fn padded_len(&self) -> usize {
        self.c_in * self.padded_plane() + self.kw
    }

    /// The output `[B, C_out, out_h, out_w]`.
    pub fn out_shape(&self) -> [usize; 4] {
        [self.batch, self.c_out, self.out_h(), self.out_w()]
    }

    /// Run images one per task when there are enough of them to keep every thread busy;
    /// otherwise let the GEMM itself spread over the threads.
    fn image_parallel(&self) -> bool {
        self.batch >= rayon::current_num_threads()
    }

    /// For each output column `ox` along a row, the input column is `ox·s + kx − pad_left`;
    /// returns the half-open range of `ox` for which it lies inside the image.
    fn valid_ox(&self, kx: usize) -> (usize, usize) {
        let (s, pl, ow) = (self.stride, self.pad[1] as isize, self.out_w());
        let first = (pl - kx as isize).max(0) as usize;
        let lo = first.div_ceil(s).min(ow);
        let end = self.w as isize + pl - kx as isize; // ox·s < end
        let hi = if end <= 0 {
            0
        } else {
            ((end as usize).div_ceil(s)).min(ow)
        };
        (lo, hi.max(lo))
    }
}

multiversion! {
/// Fills `col` (`[C_in·k·k, out_h·out_w]`, row `(ci, ky, kx)`) with the patches of one image.
fn im2col(g: &ConvGeom, x: &[f32], col: &mut [f32]) {
    let (kh, kw, s) = (g.kh, g.kw, g.stride);
    let (oh, ow, p) = (g.out_h(), g.out_w(), g.out_pixels());
    for ci in 0..g.c_in {
        let plane = &x[ci * g.h * g.w..][..g.h * g.w];
        for ky in 0..kh {
            for kx in 0..kw {
                let row = &mut col[((ci * kh + ky) * kw + kx) * p..][..p];
                let (lo, hi) = g.valid_ox(kx);
                for oy in 0..oh {
                    let dst = &mut row[oy * ow..][..ow];
                    let iy = (oy * s + ky) as isize - g.pad[0] as isize;
                    if iy < 0 || iy >= g.h as isize {
                        dst.fill(0.0);
                        continue;
                    }
                    let src = &plane[iy as usize * g.w..][..g.w];
                    dst[..lo].fill(0.0);
                    dst[hi..].fill(0.0);
                    let ix0 = lo * s + kx - g.pad[1];
                    if s == 1 {
                        dst[lo..hi].copy_from_slice(&src[ix0..ix0 + (hi - lo)]);
                    } else {
                        for (j, d) in dst[lo..hi].iter_mut().enumerate() {
                            *d = src[ix0 + j * s];
                        }
                    }
                }
            }
        }
    }
}

}

multiversion! {
/// The adjoint of [`im2col`]: adds every patch entry back onto the pixel it came from.
/// `dx` must be zeroed by the caller.
fn col2im(g: &ConvGeom, col: &[f32], dx: &mut [f32]) {
    let (kh, kw, s) = (g.kh, g.kw, g.stride);
    let (oh, ow, p) = (g.out_h(), g.out_w(), g.out_pixels());
    for ci in 0..g.c_in {
        let plane = &mut dx[ci * g.h * g.w..][..g.h * g.w];
        for ky in 0..kh {
            for kx in 0..kw {
                let row = &col[((ci * kh + ky) * kw + kx) * p..][..p];
                let (lo, hi) = g.valid_ox(kx);
                if lo >= hi {
                    continue;
                }
                for oy in 0..oh {
                    let iy = (oy * s + ky) as isize - g.pad[0] as isize;
                    if iy < 0 || iy >= g.h as isize {
                        continue;
                    }
                    let src = &row[oy * ow..][lo..hi];
                    let dst = &mut plane[iy as usize * g.w..][..g.w];
                    let ix0 = lo * s + kx - g.pad[1];
                    if s == 1 {
                        for (d, v) in dst[ix0..ix0 + (hi - lo)].iter_mut().zip(src) {
                            *d += v;
                        }
                    } else {
                        for (j, v) in src.iter().enumerate() {
                            dst[ix0 + j * s] += v;
                        }
                    }
                }
            }
        }
    }
}

}

multiversion! {
/// Copies one image into zero-padded Hp × Wp planes (`pad` has [`ConvGeom::padded_len`]).
fn pad_image(g: &ConvGeom, x: &[f32], pad: &mut [f32]) {
    let (wp, plane) = (g.padded_w(), g.padded_plane());
    pad.fill(0.0);
    for ci in 0..g.c_in {
        for iy in 0..g.h {
            let dst = &mut pad[ci * plane + (iy + g.pad[0]) * wp + g.pad[1]..][..g.w];
            dst.copy_from_slice(&x[(ci * g.h + iy) * g.w..][..g.w]);
        }
    }
}
}

/// The patch matrix of the wide layout: row (ci, ky, kx) is the padded plane ci read from
/// offset ky·Wp + kx.
fn wide_im2col(g: &ConvGeom, pad: &[f32], col: &mut [f32]) {
    let (kh, kw, wp, plane, n) = (g.kh, g.kw, g.padded_w(), g.padded_plane(), g.gemm_n());
    for ci in 0..g.c_in {
        for ky in 0..kh {
            for kx in 0..kw {
                let row = (ci * kh + ky) * kw + kx;
                col[row * n..][..n].copy_from_slice(&pad[ci * plane + ky * wp + kx..][..n]);
            }
        }
    }
}

multiversion! {
/// The adjoint of [`wide_im2col`] into padded planes (zeroed by the caller).
fn wide_col2im(g: &ConvGeom, col: &[f32], pad: &mut [f32]) {
    let (kh, kw, wp, plane, n) = (g.kh, g.kw, g.padded_w(), g.padded_plane(), g.gemm_n());
    for ci in 0..g.c_in {
        for ky in 0..kh {
            for kx in 0..kw {
                let row = (ci * kh + ky) * kw + kx;
                let dst = &mut pad[ci * plane + ky * wp + kx..][..n];
                for (d, v) in dst.iter_mut().zip(&col[row * n..][..n]) {
                    *d += v;
                }
            }
        }
    }
}
}

/// Keeps the valid out_w of every Wp-wide row: `[rows, out_h·Wp]` → `[rows, out_h, out_w]`.
fn crop_wide(g: &ConvGeom, rows: usize, wide: &[f32], out: &mut [f32]) {
    let (oh, ow, wp) = (g.out_h(), g.out_w(), g.padded_w());
    for r in 0..rows {
        for oy in 0..oh {
            out[(r * oh + oy) * ow..][..ow].copy_from_slice(&wide[(r * oh + oy) * wp..][..ow]);
        }
    }
}

/// One image's `dy` `[C_out, out_h, out_w]` in the wide layout `[C_out, out_h·Wp]`, zero in
/// the discarded columns (the GEMM route's and the bf16 weight gradient's columns).
fn widen_dy(g: &ConvGeom, dy: &[f32], wide: &mut Vec<f32>) {
    let (oh, ow, wp) = (g.out_h(), g.out_w(), g.padded_w());
    wide.clear();
    wide.resize(g.c_out * g.gemm_n(), 0.0);
    for r in 0..g.c_out * oh {
        wide[r * wp..][..ow].copy_from_slice(&dy[r * ow..][..ow]);
    }
}

/// Per-thread scratch buffers.
#[derive(Default)]
struct Work {
    pad: Vec<f32>,
    col: Vec<f32>,
    wide: Vec<f32>,
    dcol: Vec<f32>,
}

/// The patch matrix `[C_in·k·k × gemm_n]` of one image: the image itself for 1×1
/// convolutions, otherwise built in `pad`/`col`.
fn patches<'a>(g: &ConvGeom, x: &'a [f32], pad: &mut Vec<f32>, col: &'a mut Vec<f32>) -> &'a [f32] {
    if g.is_pointwise() {
        return x;
    }
    col.resize(g.col_rows() * g.gemm_n(), 0.0);
    if g.is_wide() {
        pad.resize(g.padded_len(), 0.0);
        pad_image(g, x, pad);
        wide_im2col(g, pad, col);
    } else {
        im2col(g, x, col);
    }
    col
}

/// `dst[m×n] (= dst +) lhs[m×k] · rhs[k×n]`, all given by (row stride, column stride).
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_strides: (usize, usize),
    accumulate: bool,
    lhs: &[f32],
    lhs_strides: (usize, usize),
    rhs: &[f32],
    rhs_strides: (usize, usize),
    parallel: bool,
) {
    // Bounds: the last element each operand's strides can reach must lie inside its slice.
    let last = |rows: usize, cols: usize, (rs, cs): (usize, usize)| {
        (rows.max(1) - 1) * rs + (cols.max(1) - 1) * cs
    };
    assert!(m == 0 || n == 0 || last(m, n, dst_strides) < dst.len());
    assert!(m == 0 || k == 0 || last(m, k, lhs_strides) < lhs.len());
    assert!(k == 0 || n == 0 || last(k, n, rhs_strides) < rhs.len());
    let par = if parallel {
        Parallelism::Rayon(0)
    } else {
        Parallelism::None
    };
    // SAFETY: the asserts above keep every strided access inside the three slices, and `dst`
    // is borrowed mutably so it cannot alias `lhs` or `rhs`.
    unsafe {
        gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            dst_strides.1 as isize,
            dst_strides.0 as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_strides.1 as isize,
            lhs_strides.0 as isize,
            rhs.as_ptr(),
            rhs_strides.1 as isize,
            rhs_strides.0 as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

/// Largest C_in·kh·kw for the direct kernel: its weight block (C_in·kh·kw × 16 floats) must stay
/// in the 48 KiB L1 cache. Measured (BENCHMARKS.md): with 32–64 channels (small28) the direct
/// kernel is 4–9% faster than the GEMM route; with the 128–256 channels of `cifar10` it was
/// slower, so convolutions with more than [`DIRECT_MAX_CHANNELS`] outputs stay on the GEMM.
const DIRECT_MAX_DEPTH: usize = 576;
/// Largest C_out for the direct kernel.
const DIRECT_MAX_CHANNELS: usize = 64;

fn direct_fits(g: &ConvGeom) -> bool {
    g.col_rows() <= DIRECT_MAX_DEPTH && g.c_out <= DIRECT_MAX_CHANNELS
}

/// The size rule: the direct kernel (stride 1, AVX-512) when small enough
/// ([`DIRECT_MAX_DEPTH`], [`DIRECT_MAX_CHANNELS`]), else im2col + GEMM.
fn rule(g: &ConvGeom) -> Algo {
    if Algo::Direct.runs(g) && direct_fits(g) {
        Algo::Direct
    } else {
        Algo::Gemm
    }
}

/// The algorithm that runs the convolution `g` under the [`KernelPolicy`] in force:
/// - under [`KernelPolicy::Auto`], the fastest on this machine of those that can run `g`,
///   once the tuner is on ([`super::tune`]), else [`rule`]'s choice;
/// - under [`KernelPolicy::Rule`], [`rule`]'s choice;
/// - under [`KernelPolicy::Direct`], the direct kernel wherever it runs (stride 1, AVX-512);
/// - under [`KernelPolicy::Winograd`], Winograd F(4×4, 3×3) for every stride-1 3×3
///   convolution and [`rule`]'s choice for the others;
/// - under [`KernelPolicy::Gemm`] (and [`KernelPolicy::Burn`], whose convolutions never get
///   here), im2col + GEMM.
///
/// Inside [`with_exact_sums`](super::precision::with_exact_sums) a Winograd choice becomes
/// [`rule`]'s.
pub fn algorithm(g: &ConvGeom) -> Algo {
    let algo = policy_algorithm(g);
    if algo == Algo::Winograd && super::precision::exact_sums() {
        rule(g)
    } else {
        algo
    }
}

fn policy_algorithm(g: &ConvGeom) -> Algo {
    match super::policy::policy() {
        KernelPolicy::Auto => {
            if Algo::Direct.runs(g) || Algo::Winograd.runs(g) {
                super::tune::choose(g, rule)
            } else {
                Algo::Gemm
            }
        }
        KernelPolicy::Rule => rule(g),
        KernelPolicy::Direct if Algo::Direct.runs(g) => Algo::Direct,
        KernelPolicy::Winograd if Algo::Winograd.runs(g) => Algo::Winograd,
        KernelPolicy::Winograd => rule(g),
        KernelPolicy::Direct | KernelPolicy::Gemm | KernelPolicy::Burn => Algo::Gemm,
    }
}

/// Whether [`direct`](super::direct) runs this convolution ([`algorithm`]).
pub fn direct_applies(g: &ConvGeom) -> bool {
    algorithm(g) == Algo::Direct
}

/// The algorithm of the input gradient of `g`: the stride-1 convolution `gt` of `dy` with the
/// flipped kernel (over the whole batch) is chosen as [`algorithm`] chooses, except that
/// [`KernelPolicy::Direct`] keeps the direct kernel to shapes that fit the size rule;
/// [`Algo::Gemm`] (col2im of Wᵀ·dy) when there is no such convolution.
fn input_grad_algo(g: &ConvGeom) -> Algo {
    let Some(gt) = input_grad_geom(g) else {
        return Algo::Gemm;
    };
    let gt = ConvGeom {
        batch: g.batch,
        ..gt
    };
    match super::policy::policy() {
        KernelPolicy::Direct if !direct_fits(&gt) => Algo::Gemm,
        KernelPolicy::Gemm | KernelPolicy::Burn => Algo::Gemm,
        _ => algorithm(&gt),
    }
}

/// Tap offsets in the wide layout: `ky·Wp + kx`.
fn wide_offsets(g: &ConvGeom) -> Vec<usize> {
    let wp = g.padded_w();
    (0..g.kh)
        .flat_map(|ky| (0..g.kw).map(move |kx| ky * wp + kx))
        .collect()
}

/// The convolution that gives the input gradient of a stride-1 convolution: `dy` padded by
/// k − 1 − pad on each side, convolved with the flipped, transposed kernel, is `dx`. `None`
/// when a padding exceeds k − 1 (then the gradient goes through col2im).
fn input_grad_geom(g: &ConvGeom) -> Option<ConvGeom> {
    let [t, l, b, r] = g.pad;
    (g.stride == 1 && t < g.kh && b < g.kh && l < g.kw && r < g.kw).then(|| ConvGeom {
        batch: 1,
        c_in: g.c_out,
        h: g.out_h(),
        w: g.out_w(),
        c_out: g.c_in,
        kh: g.kh,
        kw: g.kw,
        stride: 1,
        pad: [g.kh - 1 - t, g.kw - 1 - l, g.kh - 1 - b, g.kw - 1 - r],
    })
}

/// One image through the direct kernel: pad into `pad`, convolve into `wide`, crop into `y`.
fn direct_image(
    g: &ConvGeom,
    x: &[f32],
    wt: &[f32],
    offs: &[usize],
    bias: Option<&[f32]>,
    work: &mut Work,
    y: &mut [f32],
) {
    let n = g.gemm_n();
    work.pad.resize(g.padded_len(), 0.0);
    pad_image(g, x, &mut work.pad);
    work.wide.resize(g.c_out * n, 0.0);
    super::direct::conv_image(
        &work.pad,
        g.padded_plane(),
        g.c_in,
        offs,
        wt,
        g.c_out,
        bias,
        n,
        &mut work.wide,
    );
    crop_wide(g, g.c_out, &work.wide, y);
}

/// `y = conv(x, weight) + bias`, NCHW; returns `[B, C_out, out_h, out_w]` flattened.
pub fn conv2d_forward(g: &ConvGeom, x: &[f32], weight: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    conv2d_forward_with(g, x, weight, bias, algorithm(g))
}

/// [`conv2d_forward`] with the algorithm chosen by the caller (one that [`Algo::runs`] `g`).
pub fn conv2d_forward_with(
    g: &ConvGeom,
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    algo: Algo,
) -> Vec<f32> {
    assert!(algo.runs(g), "conv2d: {} does not run {g:?}", algo.name());
    assert_eq!(x.len(), g.batch * g.in_len(), "conv2d: input size");
    assert_eq!(weight.len(), g.c_out * g.col_rows(), "conv2d: weight size");
    if algo == Algo::Winograd {
        let u = super::winograd::transform_weights(weight, g.c_out, g.c_in);
        return super::winograd::forward(g, x, &u, bias);
    }
    let direct = algo == Algo::Direct;
    let (p, kk) = (g.out_pixels(), g.col_rows());
    let mut y = vec![0f32; g.batch * g.c_out * p];
    if y.is_empty() {
        return y;
    }
    let n = g.gemm_n();
    let (wt, offs) = if direct {
        (
            super::direct::pack_weights(weight, g.c_out, g.c_in, g.kh * g.kw),
            wide_offsets(g),
        )
    } else {
        (Vec::new(), Vec::new())
    };
    let image = |b: usize, y_img: &mut [f32], work: &mut Work, par: bool| {
        let x_img = &x[b * g.in_len()..][..g.in_len()];
        if direct {
            direct_image(g, x_img, &wt, &offs, bias, work, y_img);
            return;
        }
        let Work { pad, col, wide, .. } = work;
        let rhs = patches(g, x_img, pad, col);
        let dst: &mut [f32] = if g.is_wide() {
            wide.resize(g.c_out * n, 0.0);
            wide
        } else {
            y_img
        };
        if let Some(bias) = bias {
            for (co, row) in dst.chunks_mut(n).enumerate() {
                row.fill(bias[co]);
            }
        }
        matmul(
            g.c_out,
            n,
            kk,
            dst,
            (n, 1),
            bias.is_some(),
            weight,
            (kk, 1),
            rhs,
            (n, 1),
            par,
        );
        if g.is_wide() {
            crop_wide(g, g.c_out, &work.wide, y_img);
        }
    };
    if g.image_parallel() {
        y.par_chunks_mut(g.c_out * p)
            .enumerate()
            .for_each_init(Work::default, |work, (b, y_img)| {
                image(b, y_img, work, false)
            });
    } else {
        let mut work = Work::default();
        for (b, y_img) in y.chunks_mut(g.c_out * p).enumerate() {
            image(b, y_img, &mut work, true);
        }
    }
    y
}

/// Whether [`conv2d_forward_bf16`] can run `g`: stride-1 convolutions (the wide layout, or
/// 1×1 without padding) on a CPU with AVX512_BF16.
pub fn bf16_applies(g: &ConvGeom) -> bool {
    (g.is_wide() || g.is_pointwise()) && super::precision::bf16_available()
}

/// [`conv2d_forward`] with bf16 operands and f32 accumulation ([`super::precision`]): the
/// input and the weights are rounded to bfloat16, every product is exact in f32 and the sums
/// are f32, so the result is the f32 convolution of the rounded operands up to summation
/// order. Only where [`bf16_applies`].
pub fn conv2d_forward_bf16(
    g: &ConvGeom,
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
) -> Vec<f32> {
    assert!(bf16_applies(g), "conv2d: bf16 kernel does not apply");
    assert_eq!(x.len(), g.batch * g.in_len(), "conv2d: input size");
    assert_eq!(weight.len(), g.c_out * g.col_rows(), "conv2d: weight size");
    let p = g.out_pixels();
    let mut y = vec![0f32; g.batch * g.c_out * p];
    if y.is_empty() {
        return y;
    }
    let taps = g.kh * g.kw;
    let wt = super::direct::pack_weights_bf16(weight, g.c_out, g.c_in, taps);
    let pairs = g.c_in.div_ceil(2);
    // A 1×1 convolution reads its input planes as they are: one tap at offset 0.
    let (offs, plane) = if g.is_pointwise() {
        (vec![0], p)
    } else {
        (wide_offsets(g), g.padded_plane())
    };
    let n = g.gemm_n();
    let image = |b: usize, y_img: &mut [f32], work: &mut (Work, Vec<u32>)| {
        let x_img = &x[b * g.in_len()..][..g.in_len()];
        let (work, xpair) = work;
        if g.is_pointwise() {
            super::direct::pair_planes(x_img, plane, g.c_in, xpair);
            super::direct::conv_image_bf16(
                xpair, plane, pairs, &offs, &wt, g.c_out, bias, n, y_img,
            );
            return;
        }
        work.pad.resize(g.padded_len(), 0.0);
        pad_image(g, x_img, &mut work.pad);
        super::direct::pair_planes(&work.pad, plane, g.c_in, xpair);
        work.wide.resize(g.c_out * n, 0.0);
        super::direct::conv_image_bf16(
            xpair,
            plane,
            pairs,
            &offs,
            &wt,
            g.c_out,
            bias,
            n,
            &mut work.wide,
        );
        crop_wide(g, g.c_out, &work.wide, y_img);
    };
    if g.batch > 1 {
        y.par_chunks_mut(g.c_out * p)
            .enumerate()
            .for_each_init(Default::default, |work, (b, y_img)| image(b, y_img, work));
    } else {
        let mut work = Default::default();
        image(0, &mut y, &mut work);
    }
    y
}

/// [`conv2d_backward`] of a convolution that ran as [`conv2d_forward_bf16`] (mixed-precision
/// training): the input gradient is the bf16 convolution of `dy` with the flipped kernel, the
/// weight gradient [`weight_grad_bf16`] (bf16 operands, f32 sums), the bias gradient f32 as in
/// [`conv2d_backward`].
pub fn conv2d_backward_bf16(
    g: &ConvGeom,
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    want: [bool; 3],
) -> ConvGrads {
    let gt = input_grad_geom(g)
        .map(|gt| ConvGeom {
            batch: g.batch,
            ..gt
        })
        .filter(bf16_applies);
    let dx_bf16 = want[0] && gt.is_some();
    let dw_bf16 = want[1] && bf16_applies(g);
    let mut out = conv2d_backward(
        g,
        x,
        weight,
        dy,
        [want[0] && !dx_bf16, want[1] && !dw_bf16, want[2]],
    );
    if let (true, Some(gt)) = (dx_bf16, gt) {
        let wt = super::direct::transpose_flip(weight, g.c_out, g.c_in, g.kh * g.kw);
        out.x = Some(conv2d_forward_bf16(&gt, dy, &wt, None));
    }
    if dw_bf16 {
        out.weight = Some(weight_grad_bf16(g, x, dy));
    }
    out
}

/// The weight gradient of a stride-1 convolution with bf16 operands and f32 sums, on
/// [`super::direct::weight_grad_image_bf16`]: images in chunks of [`WEIGHT_GRAD_CHUNK`],
/// chunk sums added in image order (the same bits whatever the thread count).
fn weight_grad_bf16(g: &ConvGeom, x: &[f32], dy: &[f32]) -> Vec<f32> {
    use super::direct::{pair_planes_both_parities, pair_positions_transposed};
    let (p, taps) = (g.out_pixels(), g.kh * g.kw);
    let (offs, plane, n) = if g.is_pointwise() {
        (vec![0], p, p)
    } else {
        (wide_offsets(g), g.padded_plane(), g.gemm_n())
    };
    let len = n.div_ceil(2) + offs.iter().max().unwrap() / 2 + 1;
    let chunk = |first: usize| {
        let mut dw = vec![0f32; g.c_out * g.c_in * taps];
        let mut work = Work::default();
        let (mut dyt, mut xpairs) = (Vec::new(), [Vec::new(), Vec::new()]);
        for b in first..(first + WEIGHT_GRAD_CHUNK).min(g.batch) {
            let x_img = &x[b * g.in_len()..][..g.in_len()];
            let dy_img = &dy[b * g.c_out * p..][..g.c_out * p];
            if g.is_pointwise() {
                pair_positions_transposed(dy_img, g.c_out, n, &mut dyt);
                pair_planes_both_parities(x_img, plane, g.c_in, len, &mut xpairs);
            } else {
                widen_dy(g, dy_img, &mut work.wide);
                pair_positions_transposed(&work.wide, g.c_out, n, &mut dyt);
                work.pad.resize(g.padded_len(), 0.0);
                pad_image(g, x_img, &mut work.pad);
                pair_planes_both_parities(&work.pad, plane, g.c_in, len, &mut xpairs);
            }
            super::direct::weight_grad_image_bf16(
                &dyt, &xpairs, len, g.c_in, &offs, g.c_out, n, &mut dw,
            );
        }
        dw
    };
    let starts: Vec<usize> = (0..g.batch).step_by(WEIGHT_GRAD_CHUNK).collect();
    let partials: Vec<Vec<f32>> = starts.par_iter().map(|&f| chunk(f)).collect();
    let mut parts = partials.into_iter();
    let mut total = parts
        .next()
        .unwrap_or_else(|| vec![0f32; g.c_out * g.c_in * taps]);
    for part in parts {
        for (t, v) in total.iter_mut().zip(&part) {
            *t += v;
        }
    }
    total
}

/// Gradients of [`conv2d_forward`] with respect to the input, the weight and the bias, each
/// computed only when asked for.
pub struct ConvGrads {
    /// `[B, C_in, H, W]`.
    pub x: Option<Vec<f32>>,
    /// `[C_out, C_in, k, k]`.
    pub weight: Option<Vec<f32>>,
    /// `[C_out]`.
    pub bias: Option<Vec<f32>>,
}

/// Backward pass of [`conv2d_forward`] given `dy = ∂L/∂y`.
pub fn conv2d_backward(
    g: &ConvGeom,
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    want: [bool; 3],
) -> ConvGrads {
    let dx_algo = if want[0] {
        input_grad_algo(g)
    } else {
        Algo::Gemm
    };
    let dw_algo = if want[1] {
        weight_grad_algo(g)
    } else {
        Algo::Gemm
    };
    conv2d_backward_with(g, x, weight, dy, want, dx_algo, dw_algo)
}

/// The algorithm of the weight gradient of `g`: Winograd or im2col + GEMM, measured per shape
/// by the tuner under [`KernelPolicy::Auto`]; under [`KernelPolicy::Winograd`] Winograd
/// wherever it runs; otherwise, and inside
/// [`with_exact_sums`](super::precision::with_exact_sums), the GEMM.
fn weight_grad_algo(g: &ConvGeom) -> Algo {
    if !Algo::Winograd.runs(g) || super::precision::exact_sums() {
        return Algo::Gemm;
    }
    match super::policy::policy() {
        KernelPolicy::Auto => super::tune::choose_weight_grad(g, Algo::Gemm),
        KernelPolicy::Winograd => Algo::Winograd,
        _ => Algo::Gemm,
    }
}

/// [`conv2d_backward`] with the algorithms chosen by the caller. The input gradient
/// (`dx_algo`): a stride-1 convolution of `dy` with the flipped, transposed kernel on the
/// direct kernel or Winograd (where that convolution exists and the algorithm runs it), else
/// (and for [`Algo::Gemm`]) col2im(Wᵀ·dy). The weight gradient (`dw_algo`): Winograd where it
/// runs, else Σ dy·colᵀ by GEMM.
pub fn conv2d_backward_with(
    g: &ConvGeom,
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    want: [bool; 3],
    dx_algo: Algo,
    dw_algo: Algo,
) -> ConvGrads {
    let winograd_dw = want[1] && dw_algo == Algo::Winograd && Algo::Winograd.runs(g);
    // The chunks of images below compute the GEMM route's weight gradient.
    let chunk_dw = want[1] && !winograd_dw;
    let full_grad_geom = input_grad_geom(g).map(|gt| ConvGeom {
        batch: g.batch,
        ..gt
    });
    let runs = |a: Algo| dx_algo == a && full_grad_geom.is_some_and(|gt| a.runs(&gt));
    // The direct kernel runs image by image inside the chunks below, Winograd over the batch.
    let grad_geom = full_grad_geom
        .filter(|_| runs(Algo::Direct))
        .map(|gt| ConvGeom { batch: 1, ..gt });
    let winograd_dx = want[0] && runs(Algo::Winograd);
    let (wt_t, offs_t) = match &grad_geom {
        Some(gt) if want[0] => (
            super::direct::pack_weights_transposed_flipped(weight, g.c_out, g.c_in, g.kh * g.kw),
            wide_offsets(gt),
        ),
        _ => (Vec::new(), Vec::new()),
    };
    let (p, kk) = (g.out_pixels(), g.col_rows());
    assert_eq!(x.len(), g.batch * g.in_len(), "conv2d backward: input size");
    assert_eq!(weight.len(), g.c_out * kk, "conv2d backward: weight size");
    assert_eq!(
        dy.len(),
        g.batch * g.c_out * p,
        "conv2d backward: grad size"
    );
    let [want_x, want_w, want_b] = want;

    let bias = want_b.then(|| {
        (0..g.c_out)
            .into_par_iter()
            .map(|co| {
                let mut s = 0f32;
                for b in 0..g.batch {
                    s += dy[(b * g.c_out + co) * p..][..p].iter().sum::<f32>();
                }
                s
            })
            .collect::<Vec<f32>>()
    });
    if !(want_x || want_w) || g.batch == 0 {
        return ConvGrads {
            x: want_x.then(|| vec![0.0; x.len()]),
            weight: want_w.then(|| vec![0.0; weight.len()]),
            bias,
        };
    }

    // One chunk of images: fills its slice of dx and returns its partial weight gradient.
    let chunk = |first: usize, dx_chunk: Option<&mut [f32]>, par: bool| -> Option<Vec<f32>> {
        let count = if let Some(d) = &dx_chunk {
            d.len() / g.in_len()
        } else {
            WEIGHT_GRAD_CHUNK.min(g.batch - first)
        };
        let mut dw = chunk_dw.then(|| vec![0f32; g.c_out * kk]);
        let n = g.gemm_n();
        let mut work = Work::default();
        let mut dx_chunk = dx_chunk;
        for i in 0..count {
            let b = first + i;
            let x_img = &x[b * g.in_len()..][..g.in_len()];
            let dy_img = &dy[b * g.c_out * p..][..g.c_out * p];
            let Work {
                pad,
                col,
                wide,
                dcol,
            } = &mut work;
            // dy on the GEMM's columns: zero in the wide layout's discarded columns.
            let dy_g: &[f32] = if g.is_wide() {
                widen_dy(g, dy_img, wide);
                wide
            } else {
                dy_img
            };
            if let Some(dw) = dw.as_mut() {
                let cols = patches(g, x_img, pad, col);
                // dW += dy_b [C_out × n] · col_bᵀ [n × C_in·k·k]
                matmul(
                    g.c_out,
                    kk,
                    n,
                    dw,
                    (kk, 1),
                    true,
                    dy_g,
                    (n, 1),
                    cols,
                    (1, n),
                    par,
                );
            }
            if let (Some(dx_chunk), Some(gt)) = (dx_chunk.as_deref_mut(), &grad_geom) {
                let dx_img = &mut dx_chunk[i * g.in_len()..][..g.in_len()];
                direct_image(gt, dy_img, &wt_t, &offs_t, None, &mut work, dx_img);
            } else if let Some(dx_chunk) = dx_chunk.as_deref_mut() {
                let dx_img = &mut dx_chunk[i * g.in_len()..][..g.in_len()];
                // dcol = Wᵀ [C_in·k·k × C_out] · dy_b [C_out × n]
                let dst: &mut [f32] = if g.is_pointwise() {
                    dx_img
                } else {
                    dcol.resize(kk * n, 0.0);
                    dcol
                };
                matmul(
                    kk,
                    n,
                    g.c_out,
                    dst,
                    (n, 1),
                    false,
                    weight,
                    (1, kk),
                    dy_g,
                    (n, 1),
                    par,
                );
                if g.is_wide() {
                    pad.resize(g.padded_len(), 0.0);
                    pad.fill(0.0);
                    wide_col2im(g, dcol, pad);
                    let (wp, plane) = (g.padded_w(), g.padded_plane());
                    for ci in 0..g.c_in {
                        for iy in 0..g.h {
                            dx_img[(ci * g.h + iy) * g.w..][..g.w].copy_from_slice(
                                &pad[ci * plane + (iy + g.pad[0]) * wp + g.pad[1]..][..g.w],
                            );
                        }
                    }
                } else if !g.is_pointwise() {
                    dx_img.fill(0.0);
                    col2im(g, dcol, dx_img);
                }
            }
        }
        dw
    };

    let starts: Vec<usize> = (0..g.batch).step_by(WEIGHT_GRAD_CHUNK).collect();
    let mut dx = if winograd_dx {
        let gt = full_grad_geom.expect("checked by `runs`");
        let wt = super::direct::transpose_flip(weight, g.c_out, g.c_in, g.kh * g.kw);
        let u = super::winograd::transform_weights(&wt, g.c_in, g.c_out);
        Some(super::winograd::forward(&gt, dy, &u, None))
    } else {
        want_x.then(|| vec![0f32; x.len()])
    };
    let chunk_dx = if winograd_dx { None } else { dx.as_mut() };
    let partials: Vec<Option<Vec<f32>>> = if !chunk_dw && chunk_dx.is_none() {
        Vec::new()
    } else if g.image_parallel() {
        match chunk_dx {
            Some(dx) => dx
                .par_chunks_mut(WEIGHT_GRAD_CHUNK * g.in_len())
                .zip(starts.par_iter())
                .map(|(d, &first)| chunk(first, Some(d), false))
                .collect(),
            None => starts
                .par_iter()
                .map(|&first| chunk(first, None, false))
                .collect(),
        }
    } else {
        match chunk_dx {
            Some(dx) => dx
                .chunks_mut(WEIGHT_GRAD_CHUNK * g.in_len())
                .zip(starts.iter())
                .map(|(d, &first)| chunk(first, Some(d), true))
                .collect(),
            None => starts
                .iter()
                .map(|&first| chunk(first, None, true))
                .collect(),
        }
    };
    let weight_grad = if winograd_dw {
        Some(super::winograd::weight_grad(g, x, dy))
    } else {
        chunk_dw.then(|| sum_partials(partials))
    };
    ConvGrads {
        x: dx,
        weight: weight_grad,
        bias,
    }
}

/// The partial weight gradients of the chunks, summed in chunk order.
fn sum_partials(partials: Vec<Option<Vec<f32>>>) -> Vec<f32> {
    let mut parts = partials.into_iter().flatten();
    let mut total = parts.next().expect("at least one chunk");
    for part in parts {
        for (t, v) in total.iter_mut().zip(&part) {
            *t += v;
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition, one multiply-add at a time.
    fn naive_forward(g: &ConvGeom, x: &[f32], w: &[f32], bias: &[f32]) -> Vec<f64> {
        let (oh, ow) = (g.out_h(), g.out_w());
        let mut y = vec![0f64; g.batch * g.c_out * oh * ow];
        for b in 0..g.batch {
            for co in 0..g.c_out {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut s = bias[co] as f64;
                        for ci in 0..g.c_in {
                            for ky in 0..g.kh {
                                for kx in 0..g.kw {
                                    let iy = (oy * g.stride + ky) as isize - g.pad[0] as isize;
                                    let ix = (ox * g.stride + kx) as isize - g.pad[1] as isize;
                                    if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize
                                    {
                                        continue;
                                    }
                                    s += x[((b * g.c_in + ci) * g.h + iy as usize) * g.w
                                        + ix as usize]
                                        as f64
                                        * w[((co * g.c_in + ci) * g.kh + ky) * g.kw + kx] as f64;
                                }
                            }
                        }
                        y[((b * g.c_out + co) * oh + oy) * ow + ox] = s;
                    }
                }
            }
        }
        y
    }

    fn lcg(n: usize, seed: u64) -> Vec<f32> {
        crate::testing::lcg_values(n, seed, 1442695040888963407, 1.0)
    }

    /// Every algorithm that runs `g` here (the direct kernel needs AVX-512; without it a line
    /// says it was not tested).
    fn algorithms(g: &ConvGeom) -> Vec<Algo> {
        if g.is_wide() && !super::super::direct::available() {
            println!("{g:?}: no AVX-512 here, direct kernel not tested");
        }
        [Algo::Gemm, Algo::Direct, Algo::Winograd]
            .into_iter()
            .filter(|a| a.runs(g))
            .collect()
    }

    fn geoms() -> Vec<ConvGeom> {
        let g = |batch, c_in, h, w, c_out, k, stride, pad| ConvGeom {
            batch,
            c_in,
            h,
            w,
            c_out,
            kh: k,
            kw: k,
            stride,
            pad,
        };
        vec![
            g(3, 5, 7, 6, 4, 3, 1, [1, 1, 1, 1]),
            g(1, 2, 5, 9, 3, 3, 1, [1, 1, 1, 1]),
            g(5, 3, 7, 7, 2, 3, 2, [0, 0, 1, 1]),
            g(2, 4, 8, 5, 3, 3, 2, [0, 0, 1, 1]),
            g(4, 6, 3, 4, 5, 1, 1, [0; 4]),
            g(2, 3, 6, 6, 2, 5, 1, [2, 1, 2, 3]),
            g(1, 1, 2, 2, 1, 3, 1, [1, 1, 1, 1]),
            g(2, 3, 6, 5, 4, 3, 1, [0; 4]),
            // 16 + 8 + 4 + 2 + 1 output channels: every register block size of the direct kernel.
            g(2, 5, 9, 11, 31, 3, 1, [1, 1, 1, 1]),
            g(3, 2, 4, 4, 3, 2, 1, [0, 1, 1, 0]),
            // Inception's factorised 1×7 / 7×1 / 1×3 / 3×1 kernels.
            ConvGeom {
                kh: 1,
                kw: 7,
                ..g(2, 3, 9, 9, 4, 1, 1, [0, 3, 0, 3])
            },
            ConvGeom {
                kh: 7,
                kw: 1,
                ..g(2, 3, 9, 8, 4, 1, 1, [3, 0, 3, 0])
            },
            ConvGeom {
                kh: 3,
                kw: 1,
                ..g(1, 2, 5, 6, 3, 1, 2, [0; 4])
            },
        ]
    }

    #[test]
    fn forward_matches_the_definition() {
        for (i, g) in geoms().into_iter().enumerate() {
            let x = lcg(g.batch * g.in_len(), i as u64);
            let w = lcg(g.c_out * g.col_rows(), 100 + i as u64);
            let bias = lcg(g.c_out, 200 + i as u64);
            let r = naive_forward(&g, &x, &w, &bias);
            for algo in algorithms(&g) {
                let y = conv2d_forward_with(&g, &x, &w, Some(&bias), algo);
                assert_eq!(y.len(), r.len());
                // Winograd's transforms amplify rounding (docs/math.md §21).
                let tol = match algo {
                    Algo::Winograd => 4e-5 * (g.col_rows() as f64).sqrt(),
                    _ => 1e-5,
                };
                for (a, b) in y.iter().zip(&r) {
                    assert!((*a as f64 - b).abs() < tol, "{g:?} {algo:?}: {a} vs {b}");
                }
            }
        }
    }

    /// Winograd F(4×4, 3×3) against the definition on every 3×3 stride-1 shape above, plus
    /// wider ones whose channel counts leave partial vector blocks (17, 33, 70) and several tasks;
    /// its gradients against the GEMM route's.
    #[test]
    fn winograd_matches_the_definition_and_the_gemm_gradients() {
        use super::super::winograd;
        let mut shapes: Vec<ConvGeom> = geoms().into_iter().filter(winograd::applies).collect();
        let g = |batch, c_in, h, w, c_out, pad| ConvGeom {
            batch,
            c_in,
            h,
            w,
            c_out,
            kh: 3,
            kw: 3,
            stride: 1,
            pad,
        };
        shapes.push(g(5, 17, 9, 13, 33, [1, 1, 1, 1]));
        shapes.push(g(3, 16, 8, 8, 16, [2, 0, 1, 2]));
        shapes.push(g(70, 2, 3, 3, 3, [1, 1, 1, 1]));
        // 64 + 6 output channels (the product kernel's widest block and a masked one), tile
        // counts that are not multiples of its tile blocks, one image split across threads.
        shapes.push(g(2, 5, 6, 10, 70, [1, 1, 1, 1]));
        shapes.push(g(1, 8, 28, 28, 70, [1, 1, 1, 1]));
        // 64 + 6 and 40 = 32 + 8 input channels with 13 and 7 output channels: every block of
        // the weight gradient's kernel, with masked input vectors, partial output blocks and
        // (80 tiles) two chunks of tiles.
        shapes.push(g(20, 70, 6, 7, 13, [1, 1, 1, 1]));
        shapes.push(g(3, 40, 5, 9, 7, [1, 1, 1, 1]));
        assert!(shapes.len() >= 7, "{}", shapes.len());
        for (i, g) in shapes.iter().enumerate() {
            let x = lcg(g.batch * g.in_len(), 700 + i as u64);
            let w = lcg(g.c_out * g.col_rows(), 800 + i as u64);
            let bias = lcg(g.c_out, 900 + i as u64);
            let r = naive_forward(g, &x, &w, &bias);
            let u = winograd::transform_weights(&w, g.c_out, g.c_in);
            let y = winograd::forward(g, &x, &u, Some(&bias));
            assert_eq!(y.len(), r.len());
            // The rounding error grows with the number of summed terms (C_in·9).
            let tol = 1e-5 * (g.col_rows() as f64).sqrt() * 4.0;
            for (j, (a, b)) in y.iter().zip(&r).enumerate() {
                assert!((*a as f64 - b).abs() < tol, "{g:?} [{j}]: {a} vs {b}");
            }
            // Gradients through the Winograd domain against the GEMM route's (itself checked
            // against finite differences below), relative to the largest entry.
            let dy = lcg(y.len(), 1000 + i as u64);
            let want = [true, true, false];
            let gemm = conv2d_backward_with(g, &x, &w, &dy, want, Algo::Gemm, Algo::Gemm);
            let wino = conv2d_backward_with(g, &x, &w, &dy, want, Algo::Winograd, Algo::Winograd);
            for (name, a, b) in [
                ("dx", wino.x.unwrap(), gemm.x.unwrap()),
                ("dW", wino.weight.unwrap(), gemm.weight.unwrap()),
            ] {
                let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
                let err = a
                    .iter()
                    .zip(&b)
                    .fold(0f32, |m, (p, q)| m.max((p - q).abs()));
                assert!(err < 2e-5 * scale, "{g:?} {name}: {err:e} (scale {scale})");
            }
        }
    }

    /// bf16 operands, f32 sums: every product of two bf16 is exact in f32, so the kernel
    /// equals the definition on the rounded operands up to f32 summation error (≤ 1e-5 here),
    /// while the unrounded definition is ~2⁻⁸ (relative, per operand) away.
    #[test]
    fn bf16_forward_matches_the_definition_on_rounded_operands() {
        use super::super::precision::{bf16_available, round_bf16};
        if !bf16_available() {
            println!("no AVX512_BF16 here: bf16 convolution not tested");
            return;
        }
        let mut tested = 0;
        let mut worst_unrounded = 0f64;
        for (i, g) in geoms().into_iter().enumerate() {
            if !bf16_applies(&g) {
                continue;
            }
            let x = lcg(g.batch * g.in_len(), 700 + i as u64);
            let w = lcg(g.c_out * g.col_rows(), 800 + i as u64);
            let bias = lcg(g.c_out, 900 + i as u64);
            let (xr, wr): (Vec<f32>, Vec<f32>) = (
                x.iter().map(|&v| round_bf16(v)).collect(),
                w.iter().map(|&v| round_bf16(v)).collect(),
            );
            let exact = naive_forward(&g, &xr, &wr, &bias);
            let unrounded = naive_forward(&g, &x, &w, &bias);
            let y = conv2d_forward_bf16(&g, &x, &w, Some(&bias));
            assert_eq!(y.len(), exact.len());
            for ((a, b), u) in y.iter().zip(&exact).zip(&unrounded) {
                assert!((*a as f64 - b).abs() < 1e-5, "{g:?}: {a} vs {b}");
                worst_unrounded = worst_unrounded.max((*a as f64 - u).abs());
            }
            tested += 1;
        }
        println!(
            "bf16 convolution: {tested} shapes; max |y − f32 definition| {worst_unrounded:.2e}"
        );
        assert!(tested >= 8);
        // The rounding is really there (a kernel that ignored it would be exact in f32).
        assert!(worst_unrounded > 1e-4);
    }

    /// Mixed precision: the input gradient is the exact adjoint on the bf16-rounded dy and
    /// weights, the weight gradient on the rounded dy and x (up to f32 sums); the bias
    /// gradient equals the f32 one bit for bit.
    #[test]
    fn bf16_backward_is_the_adjoint_on_rounded_operands() {
        use super::super::precision::{bf16_available, round_bf16};
        if !bf16_available() {
            println!("no AVX512_BF16 here: bf16 gradients not tested");
            return;
        }
        let mut tested = 0;
        for (i, g) in geoms().into_iter().enumerate() {
            if !bf16_applies(&g) || input_grad_geom(&g).is_none() {
                continue;
            }
            let x = lcg(g.batch * g.in_len(), 1000 + i as u64);
            let w = lcg(g.c_out * g.col_rows(), 1100 + i as u64);
            let dy = lcg(g.batch * g.c_out * g.out_pixels(), 1200 + i as u64);
            let round = |v: &[f32]| v.iter().map(|&a| round_bf16(a)).collect::<Vec<_>>();
            let want = [true, true, true];
            let got = conv2d_backward_bf16(&g, &x, &w, &dy, want);
            let f32_grads = conv2d_backward_with(&g, &x, &w, &dy, want, Algo::Gemm, Algo::Gemm);
            let rounded = conv2d_backward_with(
                &g,
                &x,
                &round(&w),
                &round(&dy),
                want,
                Algo::Gemm,
                Algo::Gemm,
            );
            let (dx, dx_r) = (got.x.unwrap(), rounded.x.unwrap());
            for (a, b) in dx.iter().zip(&dx_r) {
                assert!((a - b).abs() < 1e-5, "{g:?}: dx {a} vs {b}");
            }
            let dw_r = conv2d_backward_with(
                &g,
                &round(&x),
                &w,
                &round(&dy),
                want,
                Algo::Gemm,
                Algo::Gemm,
            );
            let (dw, dw_r, dw32) = (
                got.weight.unwrap(),
                dw_r.weight.unwrap(),
                f32_grads.weight.unwrap(),
            );
            let mut off_f32 = 0f32;
            for ((a, b), c) in dw.iter().zip(&dw_r).zip(&dw32) {
                assert!((a - b).abs() < 1e-4, "{g:?}: dW {a} vs {b}");
                off_f32 = off_f32.max((a - c).abs());
            }
            assert!(off_f32 > 1e-5, "{g:?}: dW not in bf16");
            // The same bits on one thread.
            let one = rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .build()
                .unwrap()
                .install(|| conv2d_backward_bf16(&g, &x, &w, &dy, want));
            assert_eq!(
                one.weight.as_deref(),
                Some(&dw[..]),
                "{g:?}: dW thread count"
            );
            assert_eq!(one.x.as_deref(), Some(&dx[..]), "{g:?}: dx thread count");
            assert_eq!(got.bias, f32_grads.bias, "{g:?}: db");
            tested += 1;
        }
        assert!(tested >= 6, "{tested}");
    }

    /// ⟨dy, conv(x)⟩ is linear in x and in W, so its gradients are exact adjoints: compare
    /// them with central differences of the naive forward in f64.
    #[test]
    fn backward_matches_finite_differences_of_the_definition() {
        for (i, g) in geoms().into_iter().enumerate() {
            let x = lcg(g.batch * g.in_len(), 300 + i as u64);
            let w = lcg(g.c_out * g.col_rows(), 400 + i as u64);
            let bias = lcg(g.c_out, 500 + i as u64);
            let dy = lcg(g.batch * g.c_out * g.out_pixels(), 600 + i as u64);
            for algo in algorithms(&g) {
                let grads = conv2d_backward_with(&g, &x, &w, &dy, [true, true, true], algo, algo);
                let loss = |x: &[f32], w: &[f32], bias: &[f32]| -> f64 {
                    naive_forward(&g, x, w, bias)
                        .iter()
                        .zip(&dy)
                        .map(|(y, d)| y * *d as f64)
                        .sum()
                };
                let h = 0.5f32; // the loss is linear: any step is exact up to rounding
                let check = |name: &str, got: &[f32], which: usize| {
                    let n = got.len();
                    for j in (0..n).step_by((n / 23).max(1)) {
                        let (mut xp, mut wp, mut bp) = (x.clone(), w.clone(), bias.clone());
                        let (mut xm, mut wm, mut bm) = (x.clone(), w.clone(), bias.clone());
                        match which {
                            0 => {
                                xp[j] += h;
                                xm[j] -= h;
                            }
                            1 => {
                                wp[j] += h;
                                wm[j] -= h;
                            }
                            _ => {
                                bp[j] += h;
                                bm[j] -= h;
                            }
                        }
                        let fd = (loss(&xp, &wp, &bp) - loss(&xm, &wm, &bm)) / (2.0 * h as f64);
                        assert!(
                            (got[j] as f64 - fd).abs() < 1e-4 * (1.0 + fd.abs()),
                            "{g:?} d{name}[{j}]: {} vs {fd}",
                            got[j]
                        );
                    }
                };
                check("x", grads.x.as_ref().unwrap(), 0);
                check("w", grads.weight.as_ref().unwrap(), 1);
                check("b", grads.bias.as_ref().unwrap(), 2);
            }
        }
    }

    #[test]
    fn output_size_matches_burn_convention() {
        let g = ConvGeom {
            batch: 1,
            c_in: 1,
            h: 7,
            w: 8,
            c_out: 1,
            kh: 3,
            kw: 3,
            stride: 2,
            pad: [0, 0, 1, 1],
        };
        // (7 + 1 − 3)/2 + 1 = 3 rows, (8 + 1 − 3)/2 + 1 = 4 columns.
        assert_eq!((g.out_h(), g.out_w()), (3, 4));
    }
}
