//! How Algorithm 1 draws t: uniformly (Ho et al. 2020), or by importance sampling with
//! p_t ∝ √E[L_t²] (Nichol & Dhariwal 2021, §3.3, eq. 17), which lowers the variance of the
//! single-term estimate `T·L_{t−1}` of L_vlb. The sampler's history is part of a run's state:
//! checkpoints carry it (bit for bit), so a resumed run draws the same t as an uninterrupted one.

use anyhow::{Result, bail};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// How the training loop draws t.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum TimestepSampling {
    /// t ~ U{1..T} (Ho et al. Algorithm 1).
    #[default]
    Uniform,
    /// p_t ∝ √E[L_t²] over the last 10 losses at each t, mixed with 0.1% uniform, once every
    /// t has 10 (uniform before); each sample's loss is weighted by 1/(T·p_t) so that the
    /// estimate stays unbiased (Nichol & Dhariwal 2021, eq. 17). For `--loss vlb`.
    Importance,
}

/// Losses remembered per t (Nichol & Dhariwal 2021: 10).
pub const HISTORY_PER_TERM: usize = 10;
/// The uniform share mixed into p_t, so that every t keeps being visited.
pub const UNIFORM_PROB: f64 = 0.001;

/// Importance sampling of t from the second moment of each term's recent losses.
#[derive(Clone, Debug, PartialEq)]
pub struct LossSecondMomentSampler {
    /// The last losses at each t, oldest first (at most [`HISTORY_PER_TERM`]).
    history: Vec<Vec<f64>>,
}

/// The sampler's state as stored in a checkpoint: each loss as its f64 bit pattern, so the
/// round trip through JSON is exact.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SamplerState {
    /// `history_bits[t]`: the last losses at t, oldest first.
    pub history_bits: Vec<Vec<u64>>,
}

impl LossSecondMomentSampler {
    /// An empty history over `num_timesteps` terms.
    pub fn new(num_timesteps: usize) -> Self {
        LossSecondMomentSampler {
            history: vec![Vec::with_capacity(HISTORY_PER_TERM); num_timesteps],
        }
    }

    /// Whether every t has a full history (before that, t is drawn uniformly).
    pub fn warmed_up(&self) -> bool {
        self.history.iter().all(|h| h.len() == HISTORY_PER_TERM)
    }

    /// p_t: uniform before warm-up, then `(1 − 0.001)·√E[L_t²]/Σ_s √E[L_s²] + 0.001/T`.
    pub fn probabilities(&self) -> Vec<f64> {
        let n = self.history.len();
        if !self.warmed_up() {
            return vec![1.0 / n as f64; n];
        }
        let w: Vec<f64> = self
            .history
            .iter()
            .map(|h| (h.iter().map(|l| l * l).sum::<f64>() / h.len() as f64).sqrt())
            .collect();
        let total: f64 = w.iter().sum();
        if !(total.is_finite() && total > 0.0) {
            return vec![1.0 / n as f64; n];
        }
        w.iter()
            .map(|x| x / total * (1.0 - UNIFORM_PROB) + UNIFORM_PROB / n as f64)
            .collect()
    }

    /// Draws `batch` timesteps from p and their weights 1/(T·p_t) (1 before warm-up).
    pub fn sample(&self, rng: &mut impl Rng, batch: usize) -> (Vec<usize>, Vec<f64>) {
        let n = self.history.len();
        if !self.warmed_up() {
            let t = (0..batch).map(|_| rng.random_range(0..n)).collect();
            return (t, vec![1.0; batch]);
        }
        let p = self.probabilities();
        let cdf: Vec<f64> = p
            .iter()
            .scan(0.0, |acc, &q| {
                *acc += q;
                Some(*acc)
            })
            .collect();
        let total = cdf[n - 1];
        (0..batch)
            .map(|_| {
                let u = rng.random::<f64>() * total;
                let t = cdf.partition_point(|&c| c <= u).min(n - 1);
                (t, 1.0 / (n as f64 * p[t]))
            })
            .unzip()
    }

    /// Records each sample's (unweighted) loss at its t, dropping the oldest beyond 10.
    pub fn update(&mut self, t: &[usize], losses: &[f64]) {
        for (&ti, &l) in t.iter().zip(losses) {
            let h = &mut self.history[ti];
            if h.len() == HISTORY_PER_TERM {
                h.remove(0);
            }
            h.push(l);
        }
    }

    /// The state to checkpoint.
    pub fn state(&self) -> SamplerState {
        SamplerState {
            history_bits: self
                .history
                .iter()
                .map(|h| h.iter().map(|l| l.to_bits()).collect())
                .collect(),
        }
    }

    /// Restores a checkpointed state, checking it against `num_timesteps`.
    pub fn from_state(num_timesteps: usize, state: &SamplerState) -> Result<Self> {
        if state.history_bits.len() != num_timesteps {
            bail!(
                "the importance sampler's history has {} terms, but the run has T = {num_timesteps}",
                state.history_bits.len()
            );
        }
        if let Some(h) = state
            .history_bits
            .iter()
            .find(|h| h.len() > HISTORY_PER_TERM)
        {
            bail!(
                "the importance sampler's history holds {} losses for one t (at most {HISTORY_PER_TERM})",
                h.len()
            );
        }
        Ok(LossSecondMomentSampler {
            history: state
                .history_bits
                .iter()
                .map(|h| h.iter().map(|&b| f64::from_bits(b)).collect())
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{SeedableRng, rngs::StdRng};

    /// A sampler whose history at t holds `loss(t, k)` for k = 0..10.
    fn filled(n: usize, loss: impl Fn(usize, usize) -> f64) -> LossSecondMomentSampler {
        let mut s = LossSecondMomentSampler::new(n);
        for k in 0..HISTORY_PER_TERM {
            let t: Vec<usize> = (0..n).collect();
            let l: Vec<f64> = t.iter().map(|&t| loss(t, k)).collect();
            s.update(&t, &l);
        }
        s
    }

    #[test]
    fn uniform_with_unit_weights_until_every_term_has_ten_losses() {
        let mut s = LossSecondMomentSampler::new(5);
        for _ in 0..HISTORY_PER_TERM {
            s.update(&[0, 1, 2, 3], &[1.0, 2.0, 3.0, 4.0]);
        }
        assert!(!s.warmed_up());
        assert_eq!(s.probabilities(), vec![0.2; 5]);
        let (t, w) = s.sample(&mut StdRng::seed_from_u64(0), 1000);
        assert!(w.iter().all(|&w| w == 1.0));
        for k in 0..5 {
            let c = t.iter().filter(|&&x| x == k).count();
            assert!((150..250).contains(&c), "t = {k}: {c} of 1000");
        }
        s.update(&[4; HISTORY_PER_TERM], &[5.0; HISTORY_PER_TERM]);
        assert!(s.warmed_up());
    }

    #[test]
    fn probabilities_follow_the_root_mean_square_loss_mixed_with_uniform() {
        let n = 4;
        // Losses k+1 at t = 0 (RMS √38.5), 2 at t = 1, 0 at t = 2, −3 at t = 3 (RMS 3).
        let s = filled(n, |t, k| match t {
            0 => (k + 1) as f64,
            1 => 2.0,
            2 => 0.0,
            _ => -3.0,
        });
        let rms = [38.5f64.sqrt(), 2.0, 0.0, 3.0];
        let total: f64 = rms.iter().sum();
        let p = s.probabilities();
        for t in 0..n {
            let want = rms[t] / total * (1.0 - UNIFORM_PROB) + UNIFORM_PROB / n as f64;
            assert!((p[t] - want).abs() < 1e-15, "t = {t}: {} vs {want}", p[t]);
        }
        // A zero-loss term keeps the uniform floor.
        assert!(p[2] > 0.0);
        // Only the last 10 losses count: ten more 1s at t = 0 make its RMS 1.
        let mut s2 = s.clone();
        s2.update(&[0; HISTORY_PER_TERM], &[1.0; HISTORY_PER_TERM]);
        let p2 = s2.probabilities();
        let total2 = 1.0 + 2.0 + 0.0 + 3.0;
        assert!((p2[0] - (1.0 / total2 * (1.0 - UNIFORM_PROB) + UNIFORM_PROB / 4.0)).abs() < 1e-15);
    }

    #[test]
    fn weighted_estimate_is_unbiased_and_has_lower_variance_than_uniform() {
        // Terms like L_vlb's: a few large terms at small t, small ones elsewhere.
        let n = 100;
        let term = |t: usize| 10.0 / (1.0 + t as f64).powi(2) + 0.01;
        let s = filled(n, |t, _| term(t));
        let exact = (0..n).map(term).sum::<f64>() / n as f64;
        // Exactly unbiased: Σ_t p_t · L_t/(T p_t) = mean L.
        let p = s.probabilities();
        let expectation: f64 = (0..n).map(|t| p[t] * term(t) / (n as f64 * p[t])).sum();
        assert!((expectation - exact).abs() < 1e-12);
        // Monte Carlo: the weighted mean matches and the spread is smaller than uniform t's.
        let mut rng = StdRng::seed_from_u64(3);
        let (t, w) = s.sample(&mut rng, 200_000);
        let est: Vec<f64> = t.iter().zip(&w).map(|(&t, &w)| w * term(t)).collect();
        let m = est.iter().sum::<f64>() / est.len() as f64;
        let var = est.iter().map(|e| (e - m).powi(2)).sum::<f64>() / est.len() as f64;
        let uniform_var = (0..n).map(|t| (term(t) - exact).powi(2)).sum::<f64>() / n as f64;
        assert!((m - exact).abs() < 0.01 * exact, "{m} vs {exact}");
        assert!(var < 0.05 * uniform_var, "{var} vs uniform {uniform_var}");
    }

    #[test]
    fn state_round_trips_bit_for_bit_and_is_checked() {
        let s = filled(7, |t, k| (t as f64 + 0.1) / (k as f64 + 3.0));
        let json = serde_json::to_string(&s.state()).unwrap();
        let back: SamplerState = serde_json::from_str(&json).unwrap();
        let r = LossSecondMomentSampler::from_state(7, &back).unwrap();
        assert_eq!(r, s);
        let err = LossSecondMomentSampler::from_state(8, &back)
            .unwrap_err()
            .to_string();
        assert!(err.contains("T = 8"), "{err}");
        // Same state, same draws.
        let draw = |s: &LossSecondMomentSampler| s.sample(&mut StdRng::seed_from_u64(1), 50);
        assert_eq!(draw(&s), draw(&r));
    }
}
