//! Dropout masks from a counter-based generator: element i's keep/drop decision is a hash of
//! (seed, i), so the mask is drawn in parallel, vectorised, and is the same whatever the
//! thread count. burn's generic `random` draws one value at a time from a ChaCha stream on one
//! thread (5.5% of a `cifar10` training step on 2 cores, BENCHMARKS.md).

use rayon::prelude::*;

use super::simd::multiversion;

/// MurmurHash3's 32-bit finaliser: a bijection of u32 whose every output bit depends on
/// every input bit.
#[inline(always)]
fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85EB_CA6B);
    h ^= h >> 13;
    h = h.wrapping_mul(0xC2B2_AE35);
    h ^ (h >> 16)
}

/// 24 uniform bits for element `i` of the stream `seed`: two finaliser rounds keyed by the
/// seed's halves.
#[inline(always)]
pub fn uniform24(seed: u64, i: u32) -> u32 {
    let (k0, k1) = (seed as u32, (seed >> 32) as u32);
    fmix32(fmix32(i ^ k0).wrapping_add(k1)) >> 8
}

const CHUNK: usize = 1 << 14;

multiversion! {
    fn fill_chunk(mask: &mut [f32], first: u32, threshold: u32, scale: f32, seed: u64) {
        for (j, m) in mask.iter_mut().enumerate() {
            let keep = uniform24(seed, first.wrapping_add(j as u32)) < threshold;
            *m = if keep { scale } else { 0.0 };
        }
    }
}

/// The inverted-dropout mask of `len` elements: 1/(1 − p) with probability 1 − p (to 2⁻²⁴),
/// else 0; a pure function of (`seed`, element index).
///
/// # Panics
/// If `p` is not in [0, 1) or `len` exceeds 2³² (the counter is 32 bits).
pub fn dropout_mask(len: usize, p: f64, seed: u64) -> Vec<f32> {
    assert!(
        (0.0..1.0).contains(&p),
        "dropout probability {p} not in [0, 1)"
    );
    assert!(len as u64 <= 1 << 32, "dropout mask of {len} elements");
    let threshold = ((1.0 - p) * (1u32 << 24) as f64).round() as u32;
    let scale = (1.0 / (1.0 - p)) as f32;
    let mut mask = vec![0f32; len];
    mask.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(c, m)| fill_chunk(m, (c * CHUNK) as u32, threshold, scale, seed));
    mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_keep_one_minus_p_independently_and_deterministically() {
        let (n, p) = (1 << 20, 0.1);
        let m = dropout_mask(n, p, 0x1234_5678_9ABC);
        assert_eq!(m, dropout_mask(n, p, 0x1234_5678_9ABC));
        assert_ne!(m, dropout_mask(n, p, 0x1234_5678_9ABD));
        let scale = (1.0 / (1.0 - p)) as f32;
        assert!(m.iter().all(|&v| v == 0.0 || v == scale));
        let kept: Vec<bool> = m.iter().map(|&v| v != 0.0).collect();
        let rate = kept.iter().filter(|&&k| k).count() as f64 / n as f64;
        // Binomial standard deviation √(p(1−p)/n) = 2.9e-4: 5σ.
        assert!((rate - 0.9).abs() < 1.5e-3, "keep rate {rate}");
        // Neighbours (and elements 16 apart, one vector) are independent: P(both kept) = 0.81.
        for lag in [1, 2, 16, 1 << 14] {
            let both = (0..n - lag).filter(|&i| kept[i] && kept[i + lag]).count() as f64
                / (n - lag) as f64;
            assert!((both - 0.81).abs() < 2.5e-3, "lag {lag}: {both}");
        }
        // Seeds differing in one bit of either half give unrelated masks.
        for s in [0x1234_5678_9ABC ^ 1, 0x1234_5678_9ABC ^ (1 << 40)] {
            let other = dropout_mask(n, p, s);
            let agree = kept
                .iter()
                .zip(&other)
                .filter(|(k, o)| **k == (**o != 0.0))
                .count() as f64
                / n as f64;
            // Independent masks agree with probability 0.81 + 0.01.
            assert!((agree - 0.82).abs() < 2.5e-3, "seed {s:x}: {agree}");
        }
        assert!(dropout_mask(10, 0.0, 7).iter().all(|&v| v == 1.0));
    }
}
