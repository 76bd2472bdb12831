//! Group normalisation (Wu & He 2018) with its per-channel affine map and an optional SiLU,
//! forward and backward in one pass each over the activations.
//!
//! Written as burn ops, `silu(group_norm(x))` is nine element-wise passes forward and about
//! twice that backward, each allocating a full-size tensor; this module reads `x` once to get
//! the group statistics and once more to write the output, and recomputes the normalised
//! values in the backward pass instead of keeping them.
//!
//! Statistics are accumulated in f64 (burn's reference accumulates in f32; the two agree to
//! f32 rounding). Per-channel gradient sums over the batch are added in image order, so the
//! result does not depend on the thread count.

// Index loops over lanes and pixels keep the inner loops in the shape LLVM vectorises.
#![allow(clippy::needless_range_loop)]

use rayon::prelude::*;

/// The shape of one group normalisation over NCHW activations.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NormGeom {
    /// Images.
    pub batch: usize,
    /// Channels.
    pub channels: usize,
    /// Pixels per channel (H·W).
    pub pixels: usize,
    /// Groups (divides `channels`).
    pub groups: usize,
    /// Added to the variance.
    pub eps: f64,
    /// Apply SiLU after the affine map.
    pub silu: bool,
}

impl NormGeom {
    fn image_len(&self) -> usize {
        self.channels * self.pixels
    }

    fn group_channels(&self) -> usize {
        self.channels / self.groups
    }
}

use super::simd::{multiversion, sigmoid};

const LANES: usize = 16;

/// Σ v in 16 f32 lanes (so it vectorises), the lanes added in f64.
#[inline(always)]
fn sum(v: &[f32]) -> f64 {
    let mut acc = [0f32; LANES];
    let chunks = v.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            acc[i] += c[i];
        }
    }
    acc.iter().chain(rest).map(|&a| a as f64).sum()
}

/// Σ (v − m)² in 16 f32 lanes.
#[inline(always)]
fn sum_sq_dev(v: &[f32], m: f32) -> f64 {
    let mut acc = [0f32; LANES];
    let chunks = v.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            let d = c[i] - m;
            acc[i] += d * d;
        }
    }
    let tail: f64 = rest.iter().map(|&a| ((a - m) * (a - m)) as f64).sum();
    acc.iter().map(|&a| a as f64).sum::<f64>() + tail
}

multiversion! {
    /// One image: its group statistics into `st`, its output into `y`.
    fn image_forward(
        g: &NormGeom,
        x: &[f32],
        gamma: &[f32],
        beta: &[f32],
        y: &mut [f32],
        st: &mut [(f32, f32)],
    ) {
        let gc = g.group_channels();
        let len = gc * g.pixels;
        for (grp, stat) in st.iter_mut().enumerate() {
            let v = &x[grp * len..][..len];
            let mean = sum(v) / len as f64;
            let var = sum_sq_dev(v, mean as f32) / len as f64;
            *stat = (mean as f32, (1.0 / (var + g.eps).sqrt()) as f32);
        }
        for c in 0..g.channels {
            let (mean, rstd) = st[c / gc];
            let (scale, shift) = (gamma[c] * rstd, beta[c] - gamma[c] * rstd * mean);
            let src = &x[c * g.pixels..][..g.pixels];
            let dst = &mut y[c * g.pixels..][..g.pixels];
            if g.silu {
                for (d, &a) in dst.iter_mut().zip(src) {
                    let z = a * scale + shift;
                    *d = z * sigmoid(z);
                }
            } else {
                for (d, &a) in dst.iter_mut().zip(src) {
                    *d = a * scale + shift;
                }
            }
        }
    }
}

/// One channel's dz = dy (or dy·SiLU′(z)), written to `dz`, and its Σ dz·x̂ and Σ dz, the
/// sums kept in 16 f32 lanes and the lanes added in f64. Written over `chunks_exact` with
/// SiLU as a constant so the loop compiles to whole-register operations.
#[inline(always)]
fn dz_sums<const SILU: bool>(
    xs: &[f32],
    dys: &[f32],
    dz: &mut [f32],
    (mean, rstd): (f32, f32),
    (gam, bet): (f32, f32),
) -> (f64, f64) {
    let one = |x: f32, dy: f32| {
        let xh = (x - mean) * rstd;
        let mut d = dy;
        if SILU {
            let z = xh * gam + bet;
            let s = sigmoid(z);
            d *= s + z * s * (1.0 - s);
        }
        (xh, d)
    };
    let full = xs.len() / LANES * LANES;
    let mut acc_g = [0f32; LANES];
    let mut acc_b = [0f32; LANES];
    for ((xc, dyc), dzc) in xs[..full]
        .chunks_exact(LANES)
        .zip(dys[..full].chunks_exact(LANES))
        .zip(dz[..full].chunks_exact_mut(LANES))
    {
        for l in 0..LANES {
            let (xh, d) = one(xc[l], dyc[l]);
            dzc[l] = d;
            acc_g[l] += d * xh;
            acc_b[l] += d;
        }
    }
    let (mut dgam, mut dbet) = (0f64, 0f64);
    for j in full..xs.len() {
        let (xh, d) = one(xs[j], dys[j]);
        dz[j] = d;
        dgam += (d * xh) as f64;
        dbet += d as f64;
    }
    dgam += acc_g.iter().map(|&a| a as f64).sum::<f64>();
    dbet += acc_b.iter().map(|&a| a as f64).sum::<f64>();
    (dgam, dbet)
}

multiversion! {
    /// One image of the backward pass: `dx` and this image's (dγ, dβ) into `part`.
    #[allow(clippy::too_many_arguments)]
    fn image_backward(
        g: &NormGeom,
        x: &[f32],
        dy: &[f32],
        gamma: &[f32],
        beta: &[f32],
        st: &[(f32, f32)],
        dx: &mut [f32],
        part: &mut [f64],
        dz_buf: &mut Vec<f32>,
    ) {
        let gc = g.group_channels();
        dz_buf.resize(gc * g.pixels, 0.0);
        for grp in 0..g.groups {
            let (mean, rstd) = st[grp];
            // Σ dx̂ and Σ dx̂·x̂ over the group; dx̂ = γ_c·dz, so both follow from the
            // per-channel Σ dz and Σ dz·x̂.
            let (mut s1, mut s2) = (0f64, 0f64);
            for cl in 0..gc {
                let c = grp * gc + cl;
                let off = c * g.pixels;
                let (xs, dys) = (&x[off..][..g.pixels], &dy[off..][..g.pixels]);
                let dz = &mut dz_buf[cl * g.pixels..][..g.pixels];
                let (gam, bet) = (gamma[c], beta[c]);
                let (dgam, dbet) = if g.silu {
                    dz_sums::<true>(xs, dys, dz, (mean, rstd), (gam, bet))
                } else {
                    dz_sums::<false>(xs, dys, dz, (mean, rstd), (gam, bet))
                };
                part[2 * c] = dgam;
                part[2 * c + 1] = dbet;
                s1 += gam as f64 * dbet;
                s2 += gam as f64 * dgam;
            }
            let n = (gc * g.pixels) as f64;
            let (m1, m2) = ((s1 / n) as f32, (s2 / n) as f32);
            for cl in 0..gc {
                let c = grp * gc + cl;
                let off = c * g.pixels;
                let xs = &x[off..][..g.pixels];
                let dz = &dz_buf[cl * g.pixels..][..g.pixels];
                let out = &mut dx[off..][..g.pixels];
                let gam = gamma[c];
                for ((o, &xv), &d) in out.iter_mut().zip(xs).zip(dz) {
                    let xh = (xv - mean) * rstd;
                    *o = rstd * (d * gam - m1 - xh * m2);
                }
            }
        }
    }
}

/// `y = act(γ_c · (x − μ_g)/√(σ²_g + eps) + β_c)`; returns `y` and the per-(image, group)
/// statistics the backward pass needs.
pub fn group_norm_forward(
    g: &NormGeom,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
) -> (Vec<f32>, Vec<(f32, f32)>) {
    assert!(
        g.channels.is_multiple_of(g.groups),
        "group norm: channels % groups"
    );
    assert_eq!(x.len(), g.batch * g.image_len(), "group norm: input size");
    assert_eq!(gamma.len(), g.channels, "group norm: γ size");
    assert_eq!(beta.len(), g.channels, "group norm: β size");
    let mut y = vec![0f32; x.len()];
    let mut stats = vec![(0f32, 0f32); g.batch * g.groups];
    if y.is_empty() {
        return (y, stats);
    }
    y.par_chunks_mut(g.image_len())
        .zip(stats.par_chunks_mut(g.groups))
        .enumerate()
        .for_each(|(b, (y_img, st))| {
            let x_img = &x[b * g.image_len()..][..g.image_len()];
            image_forward(g, x_img, gamma, beta, y_img, st);
        });
    (y, stats)
}

/// Gradients of [`group_norm_forward`].
pub struct NormGrads {
    /// ∂L/∂x.
    pub x: Vec<f32>,
    /// ∂L/∂γ.
    pub gamma: Vec<f32>,
    /// ∂L/∂β.
    pub beta: Vec<f32>,
}

/// Backward pass of [`group_norm_forward`] given `dy` and the statistics it returned.
///
/// With x̂ = (x − μ)·r and dx̂ = γ·dz: `dx = r·(dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂))` over each
/// group; dγ = Σ dz·x̂ and dβ = Σ dz over the batch and pixels. Under SiLU,
/// dz = dy·(s + z·s·(1 − s)) with s = sigmoid(z).
pub fn group_norm_backward(
    g: &NormGeom,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    stats: &[(f32, f32)],
    dy: &[f32],
) -> NormGrads {
    assert_eq!(
        x.len(),
        g.batch * g.image_len(),
        "group norm backward: input size"
    );
    assert_eq!(dy.len(), x.len(), "group norm backward: grad size");
    assert_eq!(
        stats.len(),
        g.batch * g.groups,
        "group norm backward: stats"
    );
    let mut dx = vec![0f32; x.len()];
    if dx.is_empty() {
        return NormGrads {
            x: dx,
            gamma: vec![0.0; g.channels],
            beta: vec![0.0; g.channels],
        };
    }
    // Per image: its dγ and dβ partials, [2·C] as (dγ, dβ) pairs.
    let partials: Vec<Vec<f64>> = dx
        .par_chunks_mut(g.image_len())
        .enumerate()
        .map_init(Vec::new, |dz_buf: &mut Vec<f32>, (b, dx_img)| {
            let x_img = &x[b * g.image_len()..][..g.image_len()];
            let dy_img = &dy[b * g.image_len()..][..g.image_len()];
            let st = &stats[b * g.groups..][..g.groups];
            let mut part = vec![0f64; 2 * g.channels];
            image_backward(g, x_img, dy_img, gamma, beta, st, dx_img, &mut part, dz_buf);
            part
        })
        .collect();
    let mut dgamma = vec![0f64; g.channels];
    let mut dbeta = vec![0f64; g.channels];
    for part in &partials {
        for c in 0..g.channels {
            dgamma[c] += part[2 * c];
            dbeta[c] += part[2 * c + 1];
        }
    }
    NormGrads {
        x: dx,
        gamma: dgamma.into_iter().map(|v| v as f32).collect(),
        beta: dbeta.into_iter().map(|v| v as f32).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(n: usize, seed: u64) -> Vec<f32> {
        crate::testing::lcg_values(n, seed, 1, 2.0)
    }

    /// The definition in f64.
    fn reference(g: &NormGeom, x: &[f64], gamma: &[f64], beta: &[f64]) -> Vec<f64> {
        let gc = g.channels / g.groups;
        let len = gc * g.pixels;
        let mut y = vec![0f64; x.len()];
        for b in 0..g.batch {
            for grp in 0..g.groups {
                let off = b * g.channels * g.pixels + grp * len;
                let v = &x[off..off + len];
                let mean = v.iter().sum::<f64>() / len as f64;
                let var = v.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / len as f64;
                for j in 0..len {
                    let c = grp * gc + j / g.pixels;
                    let z = (v[j] - mean) / (var + g.eps).sqrt() * gamma[c] + beta[c];
                    y[off + j] = if g.silu { z / (1.0 + (-z).exp()) } else { z };
                }
            }
        }
        y
    }

    fn geoms() -> Vec<NormGeom> {
        let g = |batch, channels, pixels, groups, silu| NormGeom {
            batch,
            channels,
            pixels,
            groups,
            eps: 1e-6,
            silu,
        };
        vec![
            g(2, 6, 7, 3, true),
            g(3, 4, 5, 4, false),
            g(1, 8, 9, 2, true),
            g(4, 3, 1, 1, true),
            // Pixels past the 16-lane blocks, with and without a remainder.
            g(2, 4, 37, 2, true),
            g(1, 4, 32, 2, false),
        ]
    }

    #[test]
    fn forward_matches_the_definition() {
        for (i, g) in geoms().into_iter().enumerate() {
            let x = lcg(g.batch * g.channels * g.pixels, i as u64);
            let gamma = lcg(g.channels, 10 + i as u64);
            let beta = lcg(g.channels, 20 + i as u64);
            let (y, _) = group_norm_forward(&g, &x, &gamma, &beta);
            let f = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<_>>();
            let r = reference(&g, &f(&x), &f(&gamma), &f(&beta));
            for (a, b) in y.iter().zip(&r) {
                assert!((*a as f64 - b).abs() < 2e-5, "{g:?}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn backward_matches_finite_differences() {
        for (i, g) in geoms().into_iter().enumerate() {
            let n = g.batch * g.channels * g.pixels;
            let x = lcg(n, 30 + i as u64);
            let gamma = lcg(g.channels, 40 + i as u64);
            let beta = lcg(g.channels, 50 + i as u64);
            let dy = lcg(n, 60 + i as u64);
            let (_, stats) = group_norm_forward(&g, &x, &gamma, &beta);
            let grads = group_norm_backward(&g, &x, &gamma, &beta, &stats, &dy);
            let f = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<_>>();
            let (xd, gd, bd, dyd) = (f(&x), f(&gamma), f(&beta), f(&dy));
            let loss = |x: &[f64], ga: &[f64], be: &[f64]| -> f64 {
                reference(&g, x, ga, be)
                    .iter()
                    .zip(&dyd)
                    .map(|(a, b)| a * b)
                    .sum()
            };
            let h = 1e-5;
            for j in 0..n {
                let (mut p, mut m) = (xd.clone(), xd.clone());
                p[j] += h;
                m[j] -= h;
                let fd = (loss(&p, &gd, &bd) - loss(&m, &gd, &bd)) / (2.0 * h);
                assert!(
                    (grads.x[j] as f64 - fd).abs() < 1e-3 * (1.0 + fd.abs()),
                    "{g:?} dx[{j}]: {} vs {fd}",
                    grads.x[j]
                );
            }
            for c in 0..g.channels {
                let (mut p, mut m) = (gd.clone(), gd.clone());
                p[c] += h;
                m[c] -= h;
                let fd = (loss(&xd, &p, &bd) - loss(&xd, &m, &bd)) / (2.0 * h);
                assert!(
                    (grads.gamma[c] as f64 - fd).abs() < 1e-3 * (1.0 + fd.abs()),
                    "{g:?} dγ[{c}]"
                );
                let (mut p, mut m) = (bd.clone(), bd.clone());
                p[c] += h;
                m[c] -= h;
                let fd = (loss(&xd, &gd, &p) - loss(&xd, &gd, &m)) / (2.0 * h);
                assert!(
                    (grads.beta[c] as f64 - fd).abs() < 1e-3 * (1.0 + fd.abs()),
                    "{g:?} dβ[{c}]"
                );
            }
        }
    }
}
