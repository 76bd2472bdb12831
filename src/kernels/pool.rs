//! The two poolings of the FID Inception network, forward only: a 3×3 stride-1 average pool
//! with padding 1 that excludes the padding from the count (TF's `SAME` average pool), and a
//! 3×3 stride-2 unpadded max pool. burn-flex's general pooling loops took 37% of an Inception
//! forward pass in a profile; these are separable or direct loops over one plane at a time.

use super::simd::multiversion;
use rayon::prelude::*;

multiversion! {
    /// One `h × w` plane: box sums along rows, then along columns, divided by the number of
    /// in-image taps (2 on an edge, 3 inside, per axis).
    fn avg3_plane(x: &[f32], h: usize, w: usize, rows: &mut Vec<f32>, y: &mut [f32]) {
        rows.resize(h * w, 0.0);
        for r in 0..h {
            let src = &x[r * w..][..w];
            let dst = &mut rows[r * w..][..w];
            for c in 0..w {
                let mut s = src[c];
                if c > 0 {
                    s += src[c - 1];
                }
                if c + 1 < w {
                    s += src[c + 1];
                }
                dst[c] = s;
            }
        }
        let count = |i: usize, n: usize| -> f32 {
            (1 + usize::from(i > 0) + usize::from(i + 1 < n)) as f32
        };
        for r in 0..h {
            let cr = count(r, h);
            let out = &mut y[r * w..][..w];
            let mid = &rows[r * w..][..w];
            out.copy_from_slice(mid);
            if r > 0 {
                for (o, v) in out.iter_mut().zip(&rows[(r - 1) * w..][..w]) {
                    *o += v;
                }
            }
            if r + 1 < h {
                for (o, v) in out.iter_mut().zip(&rows[(r + 1) * w..][..w]) {
                    *o += v;
                }
            }
            for (c, o) in out.iter_mut().enumerate() {
                *o /= cr * count(c, w);
            }
        }
    }
}

/// 3×3 average pool, stride 1, padding 1, padding not counted: `[planes, h, w]` → same.
pub fn avg_pool3s1(x: &[f32], planes: usize, h: usize, w: usize) -> Vec<f32> {
    assert_eq!(x.len(), planes * h * w, "avg pool: input size");
    let mut y = vec![0f32; x.len()];
    if y.is_empty() {
        return y;
    }
    y.par_chunks_mut(h * w)
        .enumerate()
        .for_each_init(Vec::new, |rows, (p, out)| {
            avg3_plane(&x[p * h * w..][..h * w], h, w, rows, out)
        });
    y
}

multiversion! {
    fn max3s2_plane(x: &[f32], h: usize, w: usize, y: &mut [f32]) {
        let (oh, ow) = ((h - 3) / 2 + 1, (w - 3) / 2 + 1);
        for oy in 0..oh {
            let out = &mut y[oy * ow..][..ow];
            out.fill(f32::NEG_INFINITY);
            for ky in 0..3 {
                let src = &x[(2 * oy + ky) * w..][..w];
                for (ox, o) in out.iter_mut().enumerate() {
                    let m = src[2 * ox].max(src[2 * ox + 1]).max(src[2 * ox + 2]);
                    *o = o.max(m);
                }
            }
        }
    }
}

/// 3×3 max pool, stride 2, no padding: `[planes, h, w]` → `[planes, (h−3)/2+1, (w−3)/2+1]`.
pub fn max_pool3s2(x: &[f32], planes: usize, h: usize, w: usize) -> Vec<f32> {
    assert_eq!(x.len(), planes * h * w, "max pool: input size");
    assert!(
        h >= 3 && w >= 3,
        "max pool: a {h}×{w} plane is smaller than the 3×3 window"
    );
    let (oh, ow) = ((h - 3) / 2 + 1, (w - 3) / 2 + 1);
    let mut y = vec![0f32; planes * oh * ow];
    if y.is_empty() {
        return y;
    }
    y.par_chunks_mut(oh * ow)
        .enumerate()
        .for_each(|(p, out)| max3s2_plane(&x[p * h * w..][..h * w], h, w, out));
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919) % 101) as f32 / 10.0 - 5.0)
            .collect()
    }

    #[test]
    fn average_pool_matches_the_definition() {
        for (h, w) in [(5, 7), (1, 1), (2, 3), (8, 8)] {
            let x = data(2 * h * w);
            let y = avg_pool3s1(&x, 2, h, w);
            for p in 0..2 {
                for r in 0..h {
                    for c in 0..w {
                        let (mut s, mut n) = (0f64, 0);
                        for dr in -1i64..=1 {
                            for dc in -1i64..=1 {
                                let (rr, cc) = (r as i64 + dr, c as i64 + dc);
                                if rr >= 0 && cc >= 0 && rr < h as i64 && cc < w as i64 {
                                    s += x[(p * h + rr as usize) * w + cc as usize] as f64;
                                    n += 1;
                                }
                            }
                        }
                        let got = y[(p * h + r) * w + c] as f64;
                        assert!((got - s / n as f64).abs() < 1e-5, "({h},{w}) at {r},{c}");
                    }
                }
            }
        }
    }

    #[test]
    fn max_pool_matches_the_definition() {
        for (h, w) in [(7, 7), (8, 9), (3, 3)] {
            let x = data(3 * h * w);
            let y = max_pool3s2(&x, 3, h, w);
            let (oh, ow) = ((h - 3) / 2 + 1, (w - 3) / 2 + 1);
            for p in 0..3 {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut m = f32::NEG_INFINITY;
                        for ky in 0..3 {
                            for kx in 0..3 {
                                m = m.max(x[(p * h + 2 * oy + ky) * w + 2 * ox + kx]);
                            }
                        }
                        assert_eq!(y[(p * oh + oy) * ow + ox], m);
                    }
                }
            }
        }
    }
}
