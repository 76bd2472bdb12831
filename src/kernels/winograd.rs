//! Winograd's minimal filtering F(4×4, 3×3) for stride-1 3×3 convolutions (Lavin & Gray 2016,
//! "Fast Algorithms for Convolutional Neural Networks", §4).
//!
//! Each 4×4 tile of the output is `Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A`, where `d` is the 6×6 input
//! tile and `g` the 3×3 kernel. Summed over input channels, the element-wise product becomes 36
//! matrix products, one per position ξ of the 6×6 transformed tile:
//! `M_ξ [C_out × tiles] = U_ξ [C_out × C_in] · V_ξ [C_in × tiles]`. The direct convolution
//! spends 16·9 = 144 multiply-adds per tile and channel pair, this one 36: the 3×3 layers'
//! arithmetic drops fourfold, at the price of the transforms (linear in the channels, not in
//! their product) and a larger rounding error than the direct sum's (interpolation points
//! 0, ±1, ±2, ∞; docs/math.md §21).
//!
//! Layout: the input is copied once into zero-padded NHWC planes (the transforms then read
//! every channel of a tile position contiguously and vectorise over channels); the transformed
//! tiles are stored `[tile][ξ][channel]` and the products `[tile][ξ][C_out]`, so one tile's
//! data is contiguous in both. Images are grouped so that each task holds about
//! [`target_tiles`] tiles, and each task runs its 36 products on one thread (over all of them
//! when there are too few tasks). No sum is split between tasks or threads, so the result does
//! not depend on the grouping or on the number of threads.

// Index loops over the tile's rows and columns mirror the matrix formulas they compute.
#![allow(clippy::needless_range_loop)]

use super::conv::{ConvGeom, matmul};
use super::simd::{multiversion, transpose_block};
use rayon::prelude::*;

/// Side of the transformed tile: 4 outputs + 3 − 1.
const ALPHA: usize = 6;
/// Positions of the transformed tile.
const XI: usize = ALPHA * ALPHA;
/// Output tile side.
const TILE: usize = 4;
/// Channels per vector block of the transforms (one AVX-512 register of f32).
const LANES: usize = 16;
/// Tiles per task for `g`. Each task reads all of U (C_out·C_in·36 values) once per product
/// and does work in proportion to tiles·(C_in + C_out) in the transforms, so wider layers need
/// more tiles per task to amortise U; narrow ones fewer, so that a task's V and M stay in L2.
/// With the GEMM crate, which repacks U for every product, 64 to 512 by C_in + C_out; with
/// [`products`]' own kernel, which reads U in place, a quarter of that, 16 to 128 (both
/// measured on small28's and cifar10's layers, BENCHMARKS.md).
fn target_tiles(g: &ConvGeom) -> usize {
    let t = (g.c_in + g.c_out).clamp(64, 512);
    if products_kernel() { t / 4 } else { t }
}

/// Images per task: [`target_tiles`] worth, but with the products kernel at most a share of
/// the batch that gives each thread two tasks, so that layers with few tiles per image (8×8
/// and below) still run their transforms on every thread. Each output of the products is one
/// sum in a fixed order wherever its tile lands, so the grouping does not change any bit.
fn tasks_of(g: &ConvGeom, grid: Grid) -> usize {
    let per_task = target_tiles(g).div_ceil(grid.tiles()).max(1);
    if products_kernel() {
        per_task
            .min(g.batch.div_ceil(2 * rayon::current_num_threads()))
            .max(1)
    } else {
        per_task
    }
}

/// Whether F(4×4, 3×3) computes `g`: 3×3 kernel, stride 1 (any padding).
pub fn applies(g: &ConvGeom) -> bool {
    g.kh == 3 && g.kw == 3 && g.stride == 1 && g.out_h() > 0 && g.out_w() > 0
}

/// `U_ξ = (G g Gᵀ)_ξ` for every kernel, as `[C_out][ξ][C_in]` (Lavin & Gray's filter
/// transform with the points 0, ±1, ±2, ∞); output channels in parallel.
pub fn transform_weights(w: &[f32], c_out: usize, c_in: usize) -> Vec<f32> {
    assert_eq!(w.len(), c_out * c_in * 9, "winograd: weight size");
    let mut u = vec![0f32; XI * c_out * c_in];
    if u.is_empty() {
        return u;
    }
    u.par_chunks_mut(XI * c_in)
        .zip(w.par_chunks(9 * c_in))
        .for_each(|(u_co, w_co)| filter_transform(w_co, c_in, u_co));
    u
}

/// `G g` for one column of a 3×3 kernel.
#[inline(always)]
fn g3(g: [f32; 3]) -> [f32; ALPHA] {
    [
        0.25 * g[0],
        (-1.0 / 6.0) * (g[0] + g[1] + g[2]),
        (-1.0 / 6.0) * (g[0] - g[1] + g[2]),
        (1.0 / 24.0) * g[0] + (1.0 / 12.0) * g[1] + (1.0 / 6.0) * g[2],
        (1.0 / 24.0) * g[0] - (1.0 / 12.0) * g[1] + (1.0 / 6.0) * g[2],
        g[2],
    ]
}

multiversion! {
/// The kernels of one output channel (`[C_in][3][3]`) into `u[ξ][C_in]`, 16 input channels at
/// a time.
fn filter_transform(w: &[f32], c_in: usize, u: &mut [f32]) {
    // Taps major, so that 16 channels of one tap are contiguous.
    let mut wt = vec![0f32; 9 * c_in];
    for (ci, k) in w.chunks_exact(9).enumerate() {
        for (tap, v) in k.iter().enumerate() {
            wt[tap * c_in + ci] = *v;
        }
    }
    for c0 in (0..c_in).step_by(LANES) {
        let n = LANES.min(c_in - c0);
        let g: [[Lanes; 3]; 3] =
            std::array::from_fn(|a| std::array::from_fn(|b| load(&wt, (a * 3 + b) * c_in + c0, n)));
        // G g column by column, then (G g) Gᵀ row by row.
        let mut t = [[[0f32; LANES]; 3]; ALPHA];
        for b in 0..3 {
            for l in 0..LANES {
                let col = g3([g[0][b][l], g[1][b][l], g[2][b][l]]);
                for i in 0..ALPHA {
                    t[i][b][l] = col[i];
                }
            }
        }
        for (i, ti) in t.iter().enumerate() {
            let mut o = [[0f32; LANES]; ALPHA];
            for l in 0..LANES {
                let row = g3([ti[0][l], ti[1][l], ti[2][l]]);
                for j in 0..ALPHA {
                    o[j][l] = row[j];
                }
            }
            for (j, oj) in o.iter().enumerate() {
                store(u, (i * ALPHA + j) * c_in + c0, n, oj);
            }
        }
    }
}
}

/// `Bᵀ d` for one column of a 6×6 input tile.
#[inline(always)]
fn bt(d: [f32; ALPHA]) -> [f32; ALPHA] {
    [
        4.0 * d[0] - 5.0 * d[2] + d[4],
        -4.0 * d[1] - 4.0 * d[2] + d[3] + d[4],
        4.0 * d[1] - 4.0 * d[2] - d[3] + d[4],
        -2.0 * d[1] - d[2] + 2.0 * d[3] + d[4],
        2.0 * d[1] - d[2] - 2.0 * d[3] + d[4],
        4.0 * d[1] - 5.0 * d[3] + d[5],
    ]
}

/// `Aᵀ m` for one column of a 6×6 product tile.
#[inline(always)]
fn at(m: [f32; ALPHA]) -> [f32; TILE] {
    [
        m[0] + m[1] + m[2] + m[3] + m[4],
        m[1] - m[2] + 2.0 * m[3] - 2.0 * m[4],
        m[1] + m[2] + 4.0 * m[3] + 4.0 * m[4],
        m[1] - m[2] + 8.0 * m[3] - 8.0 * m[4] + m[5],
    ]
}

type Lanes = [f32; LANES];

/// Reads `n ≤ 16` values from `s[at..]` into a vector (zeros after them).
#[inline(always)]
fn load(s: &[f32], at: usize, n: usize) -> Lanes {
    let mut v = [0f32; LANES];
    if n == LANES {
        v.copy_from_slice(&s[at..at + LANES]);
    } else {
        v[..n].copy_from_slice(&s[at..at + n]);
    }
    v
}

#[inline(always)]
fn store(d: &mut [f32], at: usize, n: usize, v: &Lanes) {
    if n == LANES {
        d[at..at + LANES].copy_from_slice(v);
    } else {
        d[at..at + n].copy_from_slice(&v[..n]);
    }
}

/// The tile grid of one image and the padded NHWC planes it reads.
#[derive(Clone, Copy)]
struct Grid {
    th: usize,
    tw: usize,
    hp: usize,
    wp: usize,
}

impl Grid {
    fn of(g: &ConvGeom) -> Grid {
        let (th, tw) = (g.out_h().div_ceil(TILE), g.out_w().div_ceil(TILE));
        // 4·tiles + 2 ≥ out + 2 = H + pad_top + pad_bottom: every tile's 6×6 read is inside.
        Grid {
            th,
            tw,
            hp: TILE * th + 2,
            wp: TILE * tw + 2,
        }
    }

    fn tiles(&self) -> usize {
        self.th * self.tw
    }
}

/// Copies `imgs` NCHW images into the interior of NHWC planes `[img][hp][wp][C]`. The border
/// is not written here ([`zero_border`]). Each image row moves as 16-channel × 16-pixel blocks transposed in registers
/// ([`transpose_block`]): contiguous reads and writes instead of a write every C floats.
fn pad_nhwc(g: &ConvGeom, grid: Grid, x: &[f32], xp: &mut [f32]) {
    let c = g.c_in;
    let plane = g.h * g.w;
    let imgs = x.len() / g.in_len();
    for i in 0..imgs {
        let img = &x[i * g.in_len()..][..g.in_len()];
        for iy in 0..g.h {
            let row = ((i * grid.hp + iy + g.pad[0]) * grid.wp + g.pad[1]) * c;
            let dst = &mut xp[row..][..g.w * c];
            for c0 in (0..c).step_by(LANES) {
                for ix0 in (0..g.w).step_by(LANES) {
                    transpose_block(
                        &img[(c0 * g.h + iy) * g.w + ix0..],
                        plane,
                        LANES.min(c - c0),
                        LANES.min(g.w - ix0),
                        &mut dst[ix0 * c + c0..],
                        c,
                    );
                }
            }
        }
    }
}

multiversion! {
/// `V = Bᵀ d B` for every tile of `imgs` images, into `v[tile][ξ][C]`.
fn input_transform(g: &ConvGeom, grid: Grid, imgs: usize, xp: &[f32], v: &mut [f32]) {
    let c = g.c_in;
    let mut tile = 0;
    for i in 0..imgs {
        for ty in 0..grid.th {
            for tx in 0..grid.tw {
                let out = &mut v[tile * XI * c..][..XI * c];
                let base = ((i * grid.hp + TILE * ty) * grid.wp + TILE * tx) * c;
                for c0 in (0..c).step_by(LANES) {
                    let n = LANES.min(c - c0);
                    let mut d = [[[0f32; LANES]; ALPHA]; ALPHA];
                    for (r, row) in d.iter_mut().enumerate() {
                        for (s, e) in row.iter_mut().enumerate() {
                            *e = load(xp, base + (r * grid.wp + s) * c + c0, n);
                        }
                    }
                    // Bᵀ d, column by column, then (Bᵀ d) B row by row.
                    let mut t = [[[0f32; LANES]; ALPHA]; ALPHA];
                    for s in 0..ALPHA {
                        for l in 0..LANES {
                            let col = bt([d[0][s][l], d[1][s][l], d[2][s][l], d[3][s][l], d[4][s][l], d[5][s][l]]);
                            for r in 0..ALPHA {
                                t[r][s][l] = col[r];
                            }
                        }
                    }
                    for r in 0..ALPHA {
                        let mut o = [[0f32; LANES]; ALPHA];
                        for l in 0..LANES {
                            let row = bt([t[r][0][l], t[r][1][l], t[r][2][l], t[r][3][l], t[r][4][l], t[r][5][l]]);
                            for s in 0..ALPHA {
                                o[s][l] = row[s];
                            }
                        }
                        for (s, os) in o.iter().enumerate() {
                            store(out, (r * ALPHA + s) * c + c0, n, os);
                        }
                    }
                }
                tile += 1;
            }
        }
    }
}
}

multiversion! {
/// `Y = Aᵀ M A + bias` for every tile of the products `m[tile][ξ][C_out]`, into NCHW `y`.
fn output_transform(g: &ConvGeom, grid: Grid, imgs: usize, m: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
    let (co, oh, ow) = (g.c_out, g.out_h(), g.out_w());
    let mut tile = 0;
    let mut out = [[0f32; TILE * TILE]; LANES];
    for i in 0..imgs {
        for ty in 0..grid.th {
            for tx in 0..grid.tw {
                let src = &m[tile * XI * co..][..XI * co];
                let rows = TILE.min(oh - TILE * ty);
                let cols = TILE.min(ow - TILE * tx);
                for c0 in (0..co).step_by(LANES) {
                    let n = LANES.min(co - c0);
                    let mut p = [[[0f32; LANES]; ALPHA]; ALPHA];
                    for (r, row) in p.iter_mut().enumerate() {
                        for (s, e) in row.iter_mut().enumerate() {
                            *e = load(src, (r * ALPHA + s) * co + c0, n);
                        }
                    }
                    let b = match bias {
                        Some(b) => load(b, c0, n),
                        None => [0f32; LANES],
                    };
                    // Aᵀ p, column by column, then (Aᵀ p) A row by row.
                    let mut t = [[[0f32; LANES]; ALPHA]; TILE];
                    for s in 0..ALPHA {
                        for l in 0..LANES {
                            let col = at([p[0][s][l], p[1][s][l], p[2][s][l], p[3][s][l], p[4][s][l], p[5][s][l]]);
                            for r in 0..TILE {
                                t[r][s][l] = col[r];
                            }
                        }
                    }
                    // Outputs by position (lanes = channels), then turned into one 4×4 tile per
                    // channel by a register transpose (a strided write here compiles to scatters).
                    let mut pos = [[0f32; LANES]; TILE * TILE];
                    for r in 0..TILE {
                        for l in 0..LANES {
                            let row = at([t[r][0][l], t[r][1][l], t[r][2][l], t[r][3][l], t[r][4][l], t[r][5][l]]);
                            for s in 0..TILE {
                                pos[r * TILE + s][l] = row[s] + b[l];
                            }
                        }
                    }
                    transpose_block(pos.as_flattened(), LANES, TILE * TILE, n, out.as_flattened_mut(), TILE * TILE);
                    for (l, o) in out.iter().enumerate().take(n) {
                        let plane = &mut y[(i * co + c0 + l) * oh * ow..][..oh * ow];
                        for r in 0..rows {
                            let at = (TILE * ty + r) * ow + TILE * tx;
                            if cols == TILE {
                                // A fixed-size copy: four stores, not a call to memmove.
                                plane[at..at + TILE].copy_from_slice(&o[r * TILE..][..TILE]);
                            } else {
                                plane[at..at + cols].copy_from_slice(&o[r * TILE..][..cols]);
                            }
                        }
                    }
                }
                tile += 1;
            }
        }
    }
}
}

/// Scratch of one task: padded input, transformed input, products.
#[derive(Default)]
struct Work {
    xp: Vec<f32>,
    v: Vec<f32>,
    m: Vec<f32>,
}

thread_local! {
    /// Each thread's scratch, kept between convolutions: fresh buffers of this size cost a
    /// page fault per 4 KiB and a full zero fill, as much time as the transforms themselves.
    static WORK: std::cell::RefCell<Work> = std::cell::RefCell::default();
}

thread_local! {
    /// The weight gradient's transformed inputs, output gradients and products, `(V, dM, dU)`.
    static GRAD_WORK: std::cell::RefCell<(Vec<f32>, Vec<f32>, Vec<f32>)> =
        std::cell::RefCell::default();
    /// The forward pass's packed weights ([`pack_for_products`]).
    static PACKED: std::cell::RefCell<Vec<f32>> = std::cell::RefCell::default();
}

/// Runs `f` with this thread's scratch in `key`. The scratch is taken out while `f` runs, so
/// a task that rayon starts on this thread while `f` waits inside a parallel loop gets fresh
/// buffers instead of a second borrow.
fn with_scratch<T: Default, R>(
    key: &'static std::thread::LocalKey<std::cell::RefCell<T>>,
    f: impl FnOnce(&mut T) -> R,
) -> R {
    let mut work = key.with_borrow_mut(std::mem::take);
    let r = f(&mut work);
    key.with_borrow_mut(|w| *w = work);
    r
}

/// The first `n` values of `buf`, grown if needed; their contents are whatever was there.
fn scratch(buf: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if buf.len() < n {
        buf.resize(n, 0.0);
    }
    &mut buf[..n]
}

/// Zeroes the padding of `imgs` NHWC planes that [`pad_nhwc`] fills: the rows above and below
/// the image and the columns left and right of it (the planes are reused across shapes).
fn zero_border(g: &ConvGeom, grid: Grid, imgs: usize, xp: &mut [f32]) {
    let c = g.c_in;
    let row_len = grid.wp * c;
    let (top, left) = (g.pad[0], g.pad[1]);
    for plane in xp.chunks_exact_mut(grid.hp * row_len).take(imgs) {
        for (r, row) in plane.chunks_exact_mut(row_len).enumerate() {
            if r < top || r >= top + g.h {
                row.fill(0.0);
            } else {
                row[..left * c].fill(0.0);
                row[(left + g.w) * c..].fill(0.0);
            }
        }
    }
}

/// `y = conv(x, w) + bias` for a stride-1 3×3 convolution ([`applies`]), NCHW, with the
/// transformed weights `u` of [`transform_weights`]; returns `[B, C_out, out_h, out_w]`.
pub fn forward(g: &ConvGeom, x: &[f32], u: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    assert!(
        applies(g),
        "winograd: not a stride-1 3×3 convolution: {g:?}"
    );
    assert_eq!(x.len(), g.batch * g.in_len(), "winograd: input size");
    assert_eq!(u.len(), XI * g.c_out * g.c_in, "winograd: weight size");
    let grid = Grid::of(g);
    let out_len = g.c_out * g.out_h() * g.out_w();
    let mut y = vec![0f32; g.batch * out_len];
    if y.is_empty() {
        return y;
    }
    let per_task = tasks_of(g, grid);
    // Too few tasks to keep the threads busy: each task's products then spread over them.
    // (Both product routes split tiles or channels, never a sum, so the bits stay the same.)
    let par = g.batch.div_ceil(per_task) < 2 * rayon::current_num_threads();
    let (ci, co) = (g.c_in, g.c_out);
    with_scratch(&PACKED, |packed_buf| {
        let packed = products_kernel().then(|| pack_for_products(u, co, ci, packed_buf));
        y.par_chunks_mut(per_task * out_len)
            .enumerate()
            .for_each(|(task, y_chunk)| {
                with_scratch(&WORK, |work| {
                    let imgs = y_chunk.len() / out_len;
                    let x_chunk = &x[task * per_task * g.in_len()..][..imgs * g.in_len()];
                    let tiles = imgs * grid.tiles();
                    let xp = scratch(&mut work.xp, imgs * grid.hp * grid.wp * ci);
                    zero_border(g, grid, imgs, xp);
                    pad_nhwc(g, grid, x_chunk, xp);
                    let v = scratch(&mut work.v, tiles * XI * ci);
                    input_transform(g, grid, imgs, xp, v);
                    let m = scratch(&mut work.m, tiles * XI * co);
                    products(co, ci, tiles, u, packed, v, m, par);
                    output_transform(g, grid, imgs, m, bias, y_chunk);
                })
            });
    });
    y
}

/// Whether [`products`] runs this module's AVX-512 kernel (else the GEMM crate's).
fn products_kernel() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::simd::has_avx512()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Output channels rounded up to whole vectors.
fn padded(co: usize) -> usize {
    co.div_ceil(LANES) * LANES
}

/// `u[C_out][ξ][C_in]` (from [`transform_weights`]) as `[ξ][C_in][C_out padded to 16]`, the
/// rows [`products`]' kernel loads whole (zeros past `C_out`), in `buf`.
fn pack_for_products<'a>(u: &[f32], co: usize, ci: usize, buf: &'a mut Vec<f32>) -> &'a [f32] {
    let cp = padded(co);
    let p = scratch(buf, XI * ci * cp);
    if cp != co {
        p.fill(0.0);
    }
    // U_ξ is [C_out][C_in] with row stride 36·C_in in `u`; each ξ transposed in 16×16 blocks.
    p.par_chunks_mut(ci * cp)
        .enumerate()
        .for_each(|(xi, p_xi)| {
            for o0 in (0..co).step_by(LANES) {
                for i0 in (0..ci).step_by(LANES) {
                    transpose_block(
                        &u[(o0 * XI + xi) * ci + i0..],
                        XI * ci,
                        LANES.min(co - o0),
                        LANES.min(ci - i0),
                        &mut p_xi[i0 * cp + o0..],
                        cp,
                    );
                }
            }
        });
    p
}

/// The 36 products `M_ξ = U_ξ · V_ξ` of one task: `m[tile][ξ][C_out]` from `u[C_out][ξ][C_in]`
/// (or its [`pack_for_products`] form) and `v[tile][ξ][C_in]`.
///
/// With AVX-512, a kernel of this module computes them straight from these layouts: the
/// transformed tiles are already rows of the left operand (`M_ξᵀ = V_ξᵀ U_ξᵀ`, C_in contiguous)
/// and the packed weights rows of the right, so nothing is repacked per call, which a general
/// GEMM does for each of the 36 products. Every output is one sum over C_in in order, so the
/// bits do not depend on how tiles are split across threads. Elsewhere: the GEMM crate.
#[allow(clippy::too_many_arguments)]
fn products(
    co: usize,
    ci: usize,
    tiles: usize,
    u: &[f32],
    packed: Option<&[f32]>,
    v: &[f32],
    m: &mut [f32],
    par: bool,
) {
    #[cfg(target_arch = "x86_64")]
    if let Some(up) = packed {
        assert_eq!(
            up.len(),
            XI * ci * padded(co),
            "winograd: packed weight size"
        );
        assert!(v.len() >= tiles * XI * ci && m.len() >= tiles * XI * co);
        // Chunks of tiles are independent (disjoint rows of M); split when the caller's tasks
        // are too few to keep the threads busy.
        let chunk = if par {
            tiles.div_ceil(4 * rayon::current_num_threads()).max(24)
        } else {
            tiles
        }
        .max(1);
        let run = |(mc, vc): (&mut [f32], &[f32])| {
            let t = mc.len() / (XI * co);
            // SAFETY: AVX-512F is present (`packed` is only built then), and the chunk holds
            // `t` whole tiles of both `m` and `v`.
            unsafe { products_avx512(co, ci, t, up, vc, mc) }
        };
        let (mc, vc) = (&mut m[..tiles * XI * co], &v[..tiles * XI * ci]);
        if par && tiles > chunk {
            mc.par_chunks_mut(chunk * XI * co)
                .zip(vc.par_chunks(chunk * XI * ci))
                .for_each(run);
        } else {
            run((mc, vc));
        }
        return;
    }
    let _ = packed;
    for xi in 0..XI {
        // M_ξ [C_out × tiles] = U_ξ [C_out × C_in] · V_ξ [C_in × tiles]
        matmul(
            co,
            tiles,
            ci,
            &mut m[xi * co..],
            (1, XI * co),
            false,
            &u[xi * ci..],
            (XI * ci, 1),
            &v[xi * ci..],
            (1, XI * ci),
            par,
        );
    }
}

/// [`products`]' kernel over `tiles` tiles: for each ξ, blocks of up to 64 output channels
/// (4 registers) times a few tiles, accumulated in registers over C_in.
///
/// # Safety
/// AVX-512F must be present; `up` is `[ξ][ci][padded(co)]`, `v` holds `tiles·36·ci` values and
/// `m` `tiles·36·co`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn products_avx512(
    co: usize,
    ci: usize,
    tiles: usize,
    up: &[f32],
    v: &[f32],
    m: &mut [f32],
) {
    let cp = padded(co);
    for xi in 0..XI {
        let u_xi = &up[xi * ci * cp..][..ci * cp];
        let mut c0 = 0;
        while c0 < co {
            let left = co - c0;
            // SAFETY: as the caller promised, for channels c0.. of this ξ.
            unsafe {
                if left > 48 {
                    product_block::<4, 6>(co, ci, tiles, xi, c0, u_xi, v, m);
                    c0 += 64;
                } else if left > 32 {
                    product_block::<3, 8>(co, ci, tiles, xi, c0, u_xi, v, m);
                    c0 += 48;
                } else if left > 16 {
                    product_block::<2, 12>(co, ci, tiles, xi, c0, u_xi, v, m);
                    c0 += 32;
                } else {
                    product_block::<1, 16>(co, ci, tiles, xi, c0, u_xi, v, m);
                    c0 += 16;
                }
            }
        }
    }
}

/// For `NB` vectors of channels from `start` out of `len`: each vector's mask of the lanes
/// below `len` (0 for a vector wholly past it).
#[cfg(target_arch = "x86_64")]
fn lane_masks<const NB: usize>(len: usize, start: usize) -> [std::arch::x86_64::__mmask16; NB] {
    std::array::from_fn(|j| {
        let n = len.saturating_sub(start + LANES * j).min(LANES);
        ((1u32 << n) - 1) as u16
    })
}

/// `NB` vectors of output channels from `c0` (the last one masked at C_out) for every tile, `TB`
/// tiles at a time, with `NB·TB` accumulators in registers.
///
/// # Safety
/// As [`products_avx512`], and `c0 + 16·NB ≤ padded(co)`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn product_block<const NB: usize, const TB: usize>(
    co: usize,
    ci: usize,
    tiles: usize,
    xi: usize,
    c0: usize,
    u_xi: &[f32],
    v: &[f32],
    m: &mut [f32],
) {
    use std::arch::x86_64::*;
    let cp = padded(co);
    debug_assert!(c0 + LANES * NB <= cp && u_xi.len() == ci * cp);
    debug_assert!(v.len() >= tiles * XI * ci && m.len() >= tiles * XI * co);
    let masks = lane_masks::<NB>(co, c0);
    for t0 in (0..tiles).step_by(TB) {
        // Past the last tile, the rows repeat it; their sums are not stored.
        let rows: [*const f32; TB] = std::array::from_fn(|t| {
            let tile = (t0 + t).min(tiles - 1);
            // SAFETY: inside `v`, which holds `tiles` tiles.
            unsafe { v.as_ptr().add((tile * XI + xi) * ci) }
        });
        let mut acc = [[_mm512_setzero_ps(); NB]; TB];
        for k in 0..ci {
            // SAFETY: row k of U_ξ has cp ≥ c0 + 16·NB values; rows[t] has ci values.
            let w: [__m512; NB] = std::array::from_fn(|j| unsafe {
                _mm512_loadu_ps(u_xi.as_ptr().add(k * cp + c0 + LANES * j))
            });
            for t in 0..TB {
                let b = _mm512_set1_ps(unsafe { *rows[t].add(k) });
                for j in 0..NB {
                    acc[t][j] = _mm512_fmadd_ps(w[j], b, acc[t][j]);
                }
            }
        }
        for (t, acc_t) in acc.iter().enumerate().take(tiles - t0) {
            let row = ((t0 + t) * XI + xi) * co + c0;
            for j in 0..NB {
                if masks[j] != 0 {
                    // SAFETY: the mask keeps the store inside this tile's C_out values.
                    unsafe {
                        _mm512_mask_storeu_ps(
                            m.as_mut_ptr().add(row + LANES * j),
                            masks[j],
                            acc_t[j],
                        )
                    };
                }
            }
        }
    }
}

/// Tiles whose dM and V rows [`grad_products`]' kernel takes at a time, for a few ξ: about
/// 100 KB for 32 + 32 channels, so they stay in L1/L2 while every output block passes over
/// them, and span few pages (a whole ξ column of a batch is 36 rows apart per tile and missed
/// the TLB on every row).
const GRAD_CHUNK: usize = 64;
/// Tiles ahead whose rows [`grad_block`] prefetches.
const GRAD_PREFETCH: usize = 24;
/// ξ per task of [`grad_products`]' kernel: six tasks, contiguous in each tile's rows.
const GRAD_XI_GROUP: usize = 6;

/// `dU_ξ [C_out × C_in] = Σ_tiles dM_ξ · V_ξᵀ` for every ξ, from `dm[tile][ξ][C_out]` and
/// `v[tile][ξ][C_in]`, into `du[ξ][C_out][C_in]`.
///
/// With AVX-512, this module's kernel: each tile adds the outer product of its dM_ξ row and
/// its V_ξ row, read where the transforms left them (a general GEMM first repacks both
/// operands). Tiles go in chunks of [`GRAD_CHUNK`], the partial sums through `du` between
/// chunks; every output is still one sum over the tiles in order (a partial sum stored and
/// reloaded is the same f32), so no bit depends on the chunking or the threads. Elsewhere:
/// the GEMM crate, one ξ per task.
fn grad_products(co: usize, ci: usize, tiles: usize, dm: &[f32], v: &[f32], du: &mut [f32]) {
    assert!(dm.len() >= tiles * XI * co && v.len() >= tiles * XI * ci);
    assert_eq!(du.len(), XI * co * ci, "winograd: dU size");
    #[cfg(target_arch = "x86_64")]
    if products_kernel() {
        du.fill(0.0);
        du.par_chunks_mut(GRAD_XI_GROUP * co * ci)
            .enumerate()
            .for_each(|(group, du_g)| {
                let xi0 = group * GRAD_XI_GROUP;
                for t0 in (0..tiles).step_by(GRAD_CHUNK) {
                    let t1 = tiles.min(t0 + GRAD_CHUNK);
                    for (k, du_xi) in du_g.chunks_exact_mut(co * ci).enumerate() {
                        // SAFETY: AVX-512F is present; the sizes were checked above.
                        unsafe { grad_products_avx512(co, ci, t0..t1, xi0 + k, dm, v, du_xi) };
                    }
                }
            });
        return;
    }
    du.par_chunks_mut(co * ci)
        .enumerate()
        .for_each(|(xi, du_xi)| {
            matmul(
                co,
                ci,
                tiles,
                du_xi,
                (ci, 1),
                false,
                &dm[xi * co..],
                (1, XI * co),
                &v[xi * ci..],
                (XI * ci, 1),
                false,
            )
        });
}

/// [`grad_products`]' kernel for one ξ and the tiles `ts`, adding to `du_xi`: blocks of up to
/// 64 input channels (4 registers) times a few output channels, accumulated in registers.
///
/// # Safety
/// AVX-512F must be present; `dm` and `v` hold the rows of tiles `ts` (`·36·co`, `·36·ci`
/// values) and `du_xi` `co·ci`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn grad_products_avx512(
    co: usize,
    ci: usize,
    ts: std::ops::Range<usize>,
    xi: usize,
    dm: &[f32],
    v: &[f32],
    du_xi: &mut [f32],
) {
    let mut i0 = 0;
    while i0 < ci {
        let left = ci - i0;
        // SAFETY: as the caller promised, for input channels i0..
        unsafe {
            if left > 48 {
                grad_block::<4, 6>(co, ci, ts.clone(), xi, i0, dm, v, du_xi);
                i0 += 64;
            } else if left > 32 {
                grad_block::<3, 8>(co, ci, ts.clone(), xi, i0, dm, v, du_xi);
                i0 += 48;
            } else if left > 16 {
                grad_block::<2, 12>(co, ci, ts.clone(), xi, i0, dm, v, du_xi);
                i0 += 32;
            } else {
                grad_block::<1, 16>(co, ci, ts.clone(), xi, i0, dm, v, du_xi);
                i0 += 16;
            }
        }
    }
}

/// `NB` vectors of input channels from `i0` (the last ones masked at C_in) for every output
/// channel, `TB` at a time, with `NB·TB` accumulators in registers, loaded from `du_xi` and
/// stored back.
///
/// # Safety
/// As [`grad_products_avx512`], and `i0 < ci`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn grad_block<const NB: usize, const TB: usize>(
    co: usize,
    ci: usize,
    ts: std::ops::Range<usize>,
    xi: usize,
    i0: usize,
    dm: &[f32],
    v: &[f32],
    du_xi: &mut [f32],
) {
    use std::arch::x86_64::*;
    debug_assert!(i0 < ci && du_xi.len() == co * ci);
    debug_assert!(dm.len() >= ts.end * XI * co && v.len() >= ts.end * XI * ci);
    // Masked loads read nothing past C_in (a vector wholly past it reads zeros, unstored).
    let masks = lane_masks::<NB>(ci, i0);
    for o0 in (0..co).step_by(TB) {
        // Past the last output channel, the columns repeat it; their sums are not stored.
        let cols: [usize; TB] = std::array::from_fn(|r| (o0 + r).min(co - 1));
        let rows = TB.min(co - o0);
        let mut acc = [[_mm512_setzero_ps(); NB]; TB];
        for (r, acc_r) in acc.iter_mut().enumerate().take(rows) {
            for j in 0..NB {
                // SAFETY: the mask keeps the load inside row o0 + r's C_in values.
                acc_r[j] = unsafe {
                    _mm512_maskz_loadu_ps(
                        masks[j],
                        du_xi.as_ptr().add((o0 + r) * ci + i0 + LANES * j),
                    )
                };
            }
        }
        for t in ts.clone() {
            // SAFETY: tile t's V_ξ row holds ci values from (t·36 + ξ)·ci, its dM_ξ row co.
            let (vr, dr) = unsafe {
                (
                    v.as_ptr().add((t * XI + xi) * ci + i0),
                    dm.as_ptr().add((t * XI + xi) * co),
                )
            };
            // Consecutive tiles' rows are more than a page apart, where the hardware's
            // prefetchers stop: fetch a few tiles ahead by hand (a hint; never faults).
            let ahead = GRAD_PREFETCH * XI;
            for j in 0..NB {
                _mm_prefetch::<_MM_HINT_T0>(vr.wrapping_add(ahead * ci + LANES * j).cast());
            }
            _mm_prefetch::<_MM_HINT_T0>(dr.wrapping_add(ahead * co + cols[0]).cast());
            _mm_prefetch::<_MM_HINT_T0>(dr.wrapping_add(ahead * co + cols[TB - 1]).cast());
            let x: [__m512; NB] = std::array::from_fn(|j| unsafe {
                _mm512_maskz_loadu_ps(masks[j], vr.add(LANES * j))
            });
            for r in 0..TB {
                let b = _mm512_set1_ps(unsafe { *dr.add(cols[r]) });
                for j in 0..NB {
                    acc[r][j] = _mm512_fmadd_ps(x[j], b, acc[r][j]);
                }
            }
        }
        for (r, acc_r) in acc.iter().enumerate().take(rows) {
            let row = (o0 + r) * ci + i0;
            for j in 0..NB {
                if masks[j] != 0 {
                    // SAFETY: the mask keeps the store inside this row's C_in values.
                    unsafe {
                        _mm512_mask_storeu_ps(
                            du_xi.as_mut_ptr().add(row + LANES * j),
                            masks[j],
                            acc_r[j],
                        )
                    };
                }
            }
        }
    }
}

/// `A dy` for one column of a 4×4 output-gradient tile: the adjoint of [`at`].
#[inline(always)]
fn a_col(d: [f32; TILE]) -> [f32; ALPHA] {
    [
        d[0],
        d[0] + d[1] + d[2] + d[3],
        d[0] - d[1] + d[2] - d[3],
        d[0] + 2.0 * d[1] + 4.0 * d[2] + 8.0 * d[3],
        d[0] - 2.0 * d[1] + 4.0 * d[2] - 8.0 * d[3],
        d[3],
    ]
}

multiversion! {
/// `dM = A dY Aᵀ` (the adjoint of the output transform) for every tile of `imgs` images of the
/// NCHW output gradient `dy`, into `dm[tile][ξ][C_out]`; outputs cut off at the edges have a
/// zero gradient.
fn grad_output_transform(g: &ConvGeom, grid: Grid, imgs: usize, dy: &[f32], dm: &mut [f32]) {
    let (co, oh, ow) = (g.c_out, g.out_h(), g.out_w());
    let mut tile = 0;
    for i in 0..imgs {
        for ty in 0..grid.th {
            for tx in 0..grid.tw {
                let out = &mut dm[tile * XI * co..][..XI * co];
                let rows = TILE.min(oh - TILE * ty);
                let cols = TILE.min(ow - TILE * tx);
                for c0 in (0..co).step_by(LANES) {
                    let n = LANES.min(co - c0);
                    let mut d = [[[0f32; LANES]; TILE]; TILE];
                    for l in 0..n {
                        let plane = &dy[(i * co + c0 + l) * oh * ow..][..oh * ow];
                        for r in 0..rows {
                            let src = &plane[(TILE * ty + r) * ow + TILE * tx..][..cols];
                            for (s, v) in src.iter().enumerate() {
                                d[r][s][l] = *v;
                            }
                        }
                    }
                    // A dY column by column, then (A dY) Aᵀ row by row.
                    let mut t = [[[0f32; LANES]; TILE]; ALPHA];
                    for s in 0..TILE {
                        for l in 0..LANES {
                            let col = a_col([d[0][s][l], d[1][s][l], d[2][s][l], d[3][s][l]]);
                            for r in 0..ALPHA {
                                t[r][s][l] = col[r];
                            }
                        }
                    }
                    for r in 0..ALPHA {
                        let mut o = [[0f32; LANES]; ALPHA];
                        for l in 0..LANES {
                            let row = a_col([t[r][0][l], t[r][1][l], t[r][2][l], t[r][3][l]]);
                            for s in 0..ALPHA {
                                o[s][l] = row[s];
                            }
                        }
                        for (s, os) in o.iter().enumerate() {
                            store(out, (r * ALPHA + s) * co + c0, n, os);
                        }
                    }
                }
                tile += 1;
            }
        }
    }
}
}

/// `Gᵀ u` for one column of a 6×6 filter-gradient tile: the adjoint of [`g3`], in f64.
fn gt_col(u: [f64; ALPHA]) -> [f64; 3] {
    [
        u[0] / 4.0 - u[1] / 6.0 - u[2] / 6.0 + u[3] / 24.0 + u[4] / 24.0,
        -u[1] / 6.0 + u[2] / 6.0 + u[3] / 12.0 - u[4] / 12.0,
        -u[1] / 6.0 - u[2] / 6.0 + u[3] / 6.0 + u[4] / 6.0 + u[5],
    ]
}

/// `∂L/∂w` of a stride-1 3×3 convolution ([`applies`]) through the Winograd domain, the
/// adjoint of [`forward`]: with `V_ξ` the transformed input tiles and `dM_ξ = (A dY Aᵀ)_ξ` the
/// transformed output-gradient tiles, `dU_ξ [C_out × C_in] = Σ_tiles dM_ξ · V_ξᵀ` (36 products
/// whose depth is the number of tiles in the batch, [`grad_products`]) and `dw = Gᵀ dU G` for
/// each kernel.
/// Each of the 36 sums runs on one thread over the tiles in a fixed order, so the bits do not
/// depend on the thread count. Returns `[C_out, C_in, 3, 3]`.
pub fn weight_grad(g: &ConvGeom, x: &[f32], dy: &[f32]) -> Vec<f32> {
    assert!(
        applies(g),
        "winograd: not a stride-1 3×3 convolution: {g:?}"
    );
    assert_eq!(x.len(), g.batch * g.in_len(), "winograd: input size");
    let out_len = g.c_out * g.out_h() * g.out_w();
    assert_eq!(dy.len(), g.batch * out_len, "winograd: gradient size");
    let (ci, co) = (g.c_in, g.c_out);
    let mut dw = vec![0f32; co * ci * 9];
    if g.batch == 0 || dw.is_empty() {
        return dw;
    }
    let grid = Grid::of(g);
    let per_task = tasks_of(g, grid);
    let tiles = g.batch * grid.tiles();
    // V and dM of the whole batch live in this thread's scratch between calls ([`with_scratch`]).
    with_scratch(&GRAD_WORK, |(v_buf, dm_buf, du_buf)| {
        let v = scratch(v_buf, tiles * XI * ci);
        v.par_chunks_mut(per_task * grid.tiles() * XI * ci)
            .zip(x.par_chunks(per_task * g.in_len()))
            .for_each(|(v_chunk, x_chunk)| {
                with_scratch(&WORK, |work| {
                    let imgs = x_chunk.len() / g.in_len();
                    let xp = scratch(&mut work.xp, imgs * grid.hp * grid.wp * ci);
                    zero_border(g, grid, imgs, xp);
                    pad_nhwc(g, grid, x_chunk, xp);
                    input_transform(g, grid, imgs, xp, v_chunk);
                })
            });
        let dm = scratch(dm_buf, tiles * XI * co);
        dm.par_chunks_mut(per_task * grid.tiles() * XI * co)
            .zip(dy.par_chunks(per_task * out_len))
            .for_each(|(dm_chunk, dy_chunk)| {
                grad_output_transform(g, grid, dy_chunk.len() / out_len, dy_chunk, dm_chunk);
            });
        // dU_ξ = dM_ξ [C_out × tiles] · V_ξᵀ [tiles × C_in], as [ξ][C_out][C_in].
        let du = scratch(du_buf, XI * co * ci);
        grad_products(co, ci, tiles, dm, v, du);
        dw.par_chunks_mut(ci * 9)
            .enumerate()
            .for_each(|(o, dw_co)| {
                for (i, k) in dw_co.chunks_exact_mut(9).enumerate() {
                    let at_xi = |xi: usize| du[(xi * co + o) * ci + i] as f64;
                    // Gᵀ dU column by column (3×6), then (Gᵀ dU) G row by row (3×3).
                    let mut t = [[0f64; ALPHA]; 3];
                    for s in 0..ALPHA {
                        let col = gt_col(std::array::from_fn(|r| at_xi(r * ALPHA + s)));
                        for a in 0..3 {
                            t[a][s] = col[a];
                        }
                    }
                    for a in 0..3 {
                        let row = gt_col(t[a]);
                        for b in 0..3 {
                            k[a * 3 + b] = row[b] as f32;
                        }
                    }
                }
            });
    });
    dw
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 1-D transforms compose to correlation: Aᵀ[(G k) ⊙ (Bᵀ d)] = (Σ_j d[i+j] k[j])_i
    /// (Lavin & Gray 2016, §4). With the kernel in the last row of the 3×3, the filter
    /// transform's row ξ = (5, ·) is G k, because G's last row is (0, 0, 1).
    #[test]
    fn one_dimensional_transforms_compute_correlation() {
        let d = [0.3f32, -1.25, 2.0, 0.5, -0.75, 1.5];
        let k = [0.25f32, -0.5, 1.0];
        let u = transform_weights(&[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, k[0], k[1], k[2]], 1, 1);
        let bd = bt(d);
        let prod: [f32; ALPHA] = std::array::from_fn(|j| u[ALPHA * 5 + j] * bd[j]);
        let y = at(prod);
        for (i, yi) in y.iter().enumerate() {
            let want: f32 = (0..3).map(|j| d[i + j] * k[j]).sum();
            assert!((yi - want).abs() < 1e-5, "y[{i}] = {yi}, want {want}");
        }
    }

    /// The same bits on one and two threads, with several tasks per thread (28×28: 49 tiles
    /// per image) and with one task whose products spread over the threads (8×8: 4 tiles).
    #[test]
    fn bits_do_not_depend_on_the_thread_count() {
        for (batch, h, c) in [(6, 28, 8), (3, 8, 20)] {
            let g = ConvGeom {
                batch,
                c_in: c,
                h,
                w: h,
                c_out: c + 3,
                kh: 3,
                kw: 3,
                stride: 1,
                pad: [1, 1, 1, 1],
            };
            let x = crate::testing::lcg_values(g.batch * g.in_len(), 5, 11, 1.0);
            let w = crate::testing::lcg_values(g.c_out * g.col_rows(), 6, 11, 1.0);
            let run = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                pool.install(|| forward(&g, &x, &transform_weights(&w, g.c_out, g.c_in), None))
            };
            let (one, two) = (run(1), run(2));
            assert!(
                one.iter()
                    .zip(&two)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{g:?}"
            );
        }
    }
}
