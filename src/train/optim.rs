//! One fused pass over all parameters per step: global-norm gradient clipping, Adam
//! (Kingma & Ba 2015, with bias correction) and the exponential moving average of the weights.
//!
//! The state lives on the host as flat f32 arrays in the model's parameter order, which makes
//! checkpoints plain safetensors files and resumption exact.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Hyper-parameters of the update.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OptimConfig {
    /// Peak learning rate (Ho et al.: 2e-4).
    pub lr: f64,
    /// Linear warm-up steps. Ho et al. 2020 warm up over 5000 of their 800k steps; the default
    /// here is 1000, because runs on a CPU are a few thousand steps long and would otherwise
    /// spend most of their time below the peak learning rate.
    pub warmup_steps: u64,
    /// Adam β1.
    pub beta1: f64,
    /// Adam β2.
    pub beta2: f64,
    /// Adam ε.
    pub eps: f64,
    /// Max global gradient norm (Ho et al.: 1.0); 0 disables clipping.
    pub grad_clip: f64,
    /// EMA decay (Ho et al.: 0.9999).
    pub ema_decay: f64,
    /// Use `min(decay, (1+n)/(10+n))` so the EMA is usable early in short runs.
    pub ema_warmup: bool,
    /// How the learning rate moves after the warm-up (absent in runs made before it existed:
    /// constant).
    #[serde(default)]
    pub lr_schedule: LrSchedule,
    /// The step at which a decaying schedule reaches zero (the run's `--steps`); unused by
    /// [`LrSchedule::Constant`].
    #[serde(default)]
    pub decay_steps: Option<u64>,
}

/// The learning rate after the warm-up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    /// The peak rate until the end (Ho et al. 2020).
    #[default]
    Constant,
    /// Cosine annealing to zero at the last step (Loshchilov & Hutter 2017, SGDR, without
    /// restarts): `lr·½(1 + cos(π·p))`, p the share of the post-warm-up steps done.
    Cosine,
    /// A straight line from the peak to zero at the last step: `lr·(1 − p)`.
    Linear,
}

impl LrSchedule {
    /// The share of the peak rate once a share `p` ∈ [0, 1] of the post-warm-up steps is done.
    fn factor(self, p: f64) -> f64 {
        match self {
            LrSchedule::Constant => 1.0,
            LrSchedule::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * p).cos()),
            LrSchedule::Linear => 1.0 - p,
        }
    }
}

impl std::fmt::Display for LrSchedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LrSchedule::Constant => "constant",
            LrSchedule::Cosine => "cosine",
            LrSchedule::Linear => "linear",
        })
    }
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            lr: 2e-4,
            warmup_steps: 1000,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            grad_clip: 1.0,
            ema_decay: 0.9999,
            ema_warmup: true,
            lr_schedule: LrSchedule::Constant,
            decay_steps: None,
        }
    }
}

impl OptimConfig {
    /// Learning rate at (1-based) step `step`: linear warm-up to the peak at `warmup_steps`,
    /// then the [`LrSchedule`], which for a decay reaches zero at `decay_steps` and stays there.
    pub fn lr_at(&self, step: u64) -> f64 {
        let w = self.warmup_steps;
        if step < w {
            return self.lr * step as f64 / w as f64;
        }
        let Some(end) = self
            .decay_steps
            .filter(|_| self.lr_schedule != LrSchedule::Constant)
        else {
            return self.lr;
        };
        let p = if end <= w {
            1.0
        } else {
            ((step - w) as f64 / (end - w) as f64).min(1.0)
        };
        self.lr * self.lr_schedule.factor(p)
    }

    /// Checks that a decaying schedule knows where it ends.
    pub fn validate(&self) -> Result<(), String> {
        match (self.lr_schedule, self.decay_steps) {
            (LrSchedule::Constant, _) => Ok(()),
            (s, None) => Err(format!(
                "the {s} learning-rate schedule decays to zero at the last step: give --steps \
                 (a --minutes budget alone does not say which step is the last)"
            )),
            (s, Some(end)) if end <= self.warmup_steps => Err(format!(
                "the {s} learning-rate schedule needs more steps ({end}) than the warm-up ({})",
                self.warmup_steps
            )),
            _ => Ok(()),
        }
    }

    /// EMA decay at (1-based) step `step`.
    pub fn ema_decay_at(&self, step: u64) -> f64 {
        if self.ema_warmup {
            self.ema_decay
                .min((1.0 + step as f64) / (10.0 + step as f64))
        } else {
            self.ema_decay
        }
    }
}

/// The scalars of one update at (1-based) step `step`, shared by the host update and
/// [`super::device_optim`]: the clipping factor, Adam's coefficients with bias correction
/// (Kingma & Ba 2015, Algorithm 1) and the EMA decay.
#[derive(Clone, Copy, Debug)]
pub struct StepCoefficients {
    /// Gradient scale: `max_norm/(norm + 1e-6)` when the norm exceeds `max_norm`
    /// (torch.nn.utils.clip_grad_norm_), else 1.
    pub clip: f32,
    /// Adam β1.
    pub b1: f32,
    /// Adam β2.
    pub b2: f32,
    /// Adam ε.
    pub eps: f32,
    /// `lr / (1 − β1^step)`.
    pub step_size: f32,
    /// `1/√(1 − β2^step)`.
    pub inv_sqrt_bc2: f32,
    /// EMA decay at this step.
    pub decay: f32,
    /// Learning rate at this step.
    pub lr: f64,
}

impl StepCoefficients {
    /// The coefficients of step `step` given the global gradient norm before clipping.
    pub fn new(cfg: &OptimConfig, step: u64, grad_norm: f64) -> Self {
        let clip = if cfg.grad_clip > 0.0 && grad_norm > cfg.grad_clip {
            cfg.grad_clip / (grad_norm + 1e-6)
        } else {
            1.0
        };
        let lr = cfg.lr_at(step);
        let bc1 = 1.0 - cfg.beta1.powi(step as i32);
        let bc2 = 1.0 - cfg.beta2.powi(step as i32);
        StepCoefficients {
            clip: clip as f32,
            b1: cfg.beta1 as f32,
            b2: cfg.beta2 as f32,
            eps: cfg.eps as f32,
            step_size: (lr / bc1) as f32,
            inv_sqrt_bc2: (1.0 / bc2.sqrt()) as f32,
            decay: cfg.ema_decay_at(step) as f32,
            lr,
        }
    }
}

/// Parameters, EMA and Adam moments, all in the same order and shapes.
#[derive(Clone, Debug)]
pub struct TrainState {
    /// Current weights.
    pub params: Vec<Vec<f32>>,
    /// EMA weights.
    pub ema: Vec<Vec<f32>>,
    /// Adam first moments.
    pub m: Vec<Vec<f32>>,
    /// Adam second moments.
    pub v: Vec<Vec<f32>>,
    /// Optimisation steps taken.
    pub step: u64,
}

/// What one update did.
#[derive(Clone, Copy, Debug)]
pub struct UpdateStats {
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Learning rate used.
    pub lr: f64,
}

impl TrainState {
    /// Fresh state from initial weights (EMA starts at the weights, moments at zero).
    pub fn new(params: Vec<Vec<f32>>) -> Self {
        let zeros: Vec<Vec<f32>> = params.iter().map(|p| vec![0.0; p.len()]).collect();
        TrainState {
            ema: params.clone(),
            m: zeros.clone(),
            v: zeros,
            params,
            step: 0,
        }
    }

    /// Applies one step with gradients `grads` (same layout as the parameters).
    pub fn update(&mut self, grads: &[Vec<f32>], cfg: &OptimConfig) -> UpdateStats {
        assert_eq!(grads.len(), self.params.len());
        self.step += 1;
        let step = self.step;
        // Per-parameter sums in parallel, then added in parameter order: rayon's own `sum`
        // splits adaptively, and a different addition order would break bit-exact resumption.
        let partial: Vec<f64> = grads
            .par_iter()
            .map(|g| g.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>())
            .collect();
        let sq: f64 = partial.iter().sum();
        let grad_norm = sq.sqrt();
        let c = StepCoefficients::new(cfg, step, grad_norm);
        let StepCoefficients {
            clip,
            b1: b1f,
            b2: b2f,
            eps,
            step_size,
            inv_sqrt_bc2,
            decay,
            lr,
        } = c;
        self.params
            .par_iter_mut()
            .zip(self.ema.par_iter_mut())
            .zip(self.m.par_iter_mut().zip(self.v.par_iter_mut()))
            .zip(grads.par_iter())
            .for_each(|(((p, e), (m, v)), g)| {
                for i in 0..p.len() {
                    let gi = g[i] * clip;
                    m[i] = b1f * m[i] + (1.0 - b1f) * gi;
                    v[i] = b2f * v[i] + (1.0 - b2f) * gi * gi;
                    p[i] -= step_size * m[i] / (v[i].sqrt() * inv_sqrt_bc2 + eps);
                    e[i] = decay * e[i] + (1.0 - decay) * p[i];
                }
            });
        UpdateStats { grad_norm, lr }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adam_matches_a_hand_computed_step_and_clips() {
        let cfg = OptimConfig {
            lr: 0.1,
            warmup_steps: 0,
            grad_clip: 1.0,
            ema_decay: 0.5,
            ema_warmup: false,
            ..Default::default()
        };
        let mut s = TrainState::new(vec![vec![1.0, -2.0]]);
        // ‖g‖ = 5 → clipped to norm 1: g = (0.6, 0.8).
        let st = s.update(&[vec![3.0, 4.0]], &cfg);
        assert!((st.grad_norm - 5.0).abs() < 1e-12);
        // First Adam step moves each weight by lr·sign(g) (up to ε).
        assert!((s.params[0][0] - 0.9).abs() < 1e-6, "{}", s.params[0][0]);
        assert!((s.params[0][1] + 2.1).abs() < 1e-6);
        // EMA: 0.5·old + 0.5·new.
        assert!((s.ema[0][0] - 0.95).abs() < 1e-6);
        // Second step with the same gradient: m̂ = g, v̂ = g², so again lr·sign.
        s.update(&[vec![3.0, 4.0]], &cfg);
        assert!((s.params[0][0] - 0.8).abs() < 1e-5, "{}", s.params[0][0]);
    }

    #[test]
    fn warmup_and_ema_schedules() {
        let cfg = OptimConfig {
            warmup_steps: 5000,
            ..Default::default()
        };
        assert!((cfg.lr_at(2500) - 1e-4).abs() < 1e-15);
        assert_eq!(cfg.lr_at(10_000), 2e-4);
        // The default warm-up ramps the same way: half the peak half-way, the peak at its end.
        let d = OptimConfig::default();
        let w = d.warmup_steps;
        assert!(w > 0 && w.is_multiple_of(2));
        assert!((d.lr_at(w / 2) - d.lr / 2.0).abs() < 1e-15);
        assert_eq!(d.lr_at(w), d.lr);
        assert!((cfg.ema_decay_at(1) - 2.0 / 11.0).abs() < 1e-12);
        assert_eq!(cfg.ema_decay_at(10_000_000), 0.9999);
    }

    #[test]
    fn decaying_schedules_follow_their_formulas_after_the_warm_up() {
        let base = OptimConfig {
            lr: 1e-3,
            warmup_steps: 100,
            decay_steps: Some(1100),
            ..Default::default()
        };
        let cos = OptimConfig {
            lr_schedule: LrSchedule::Cosine,
            ..base.clone()
        };
        let lin = OptimConfig {
            lr_schedule: LrSchedule::Linear,
            ..base.clone()
        };
        for c in [&base, &cos, &lin] {
            // The warm-up is the same ramp, and the peak is reached at its last step.
            assert!((c.lr_at(50) - 5e-4).abs() < 1e-18);
            assert_eq!(c.lr_at(100), 1e-3);
            c.validate().unwrap();
        }
        // p = (step − 100)/1000: a quarter, half and all the way.
        let quarter = 1e-3 * 0.5 * (1.0 + std::f64::consts::FRAC_PI_4.cos());
        assert!((cos.lr_at(350) - quarter).abs() < 1e-15);
        assert!((cos.lr_at(600) - 5e-4).abs() < 1e-15);
        assert!((lin.lr_at(350) - 7.5e-4).abs() < 1e-15);
        assert!((lin.lr_at(600) - 5e-4).abs() < 1e-15);
        for c in [&cos, &lin] {
            assert!(c.lr_at(1100).abs() < 1e-18);
            assert!(c.lr_at(5000).abs() < 1e-18, "stays at zero after the end");
            // Monotone after the peak.
            assert!((101..1100).all(|s| c.lr_at(s + 1) <= c.lr_at(s)));
        }
        assert_eq!(base.lr_at(1100), 1e-3);
        // Without an end, a decay is refused rather than silently constant.
        let open = OptimConfig {
            decay_steps: None,
            ..cos.clone()
        };
        assert!(open.validate().unwrap_err().contains("--steps"));
        let short = OptimConfig {
            decay_steps: Some(100),
            ..cos
        };
        assert!(short.validate().unwrap_err().contains("warm-up"));
    }

    #[test]
    fn configs_written_before_the_schedule_existed_read_as_constant() {
        let mut v = serde_json::to_value(OptimConfig::default()).unwrap();
        let o = v.as_object_mut().unwrap();
        o.remove("lr_schedule");
        o.remove("decay_steps");
        let c: OptimConfig = serde_json::from_value(v).unwrap();
        assert_eq!(c, OptimConfig::default());
    }
}
