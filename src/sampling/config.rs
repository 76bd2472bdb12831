//! A typed, serialisable choice of sampler that builds the sampler for a diffusion: the one
//! place that knows every sampler (candle's `SchedulerConfig` → `Box<dyn Scheduler>` shape).

use serde::{Deserialize, Serialize};

use super::{Ancestral, Ddim, DpmSolverPP, Heun, Sampler, Spacing, timestep_subsequence};
use crate::diffusion::GaussianDiffusion;

/// A sampler name that [`SamplerConfig::from_name`] does not know.
#[derive(Debug, thiserror::Error)]
#[error("unknown sampler `{0}` ({names})", names = SamplerConfig::NAMES)]
pub struct UnknownSampler(pub String);

/// Which sampler, with its options.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "sampler", rename_all = "kebab-case")]
pub enum SamplerConfig {
    /// Algorithm 2 of Ho et al. on all T steps, σ_t² from the diffusion.
    Ddpm {
        /// Clip x̂₀ to [−1, 1] before forming μ̃.
        clip_x0: bool,
    },
    /// DDIM (Song et al. 2021, eq. 12) on `steps` steps.
    Ddim {
        /// Number of steps.
        steps: usize,
        /// η: 0 deterministic, 1 = DDPM's σ² = β̃ on the full sequence.
        eta: f64,
        /// How the steps are spread over 0..T.
        spacing: Spacing,
        /// Clip x̂₀ to [−1, 1].
        clip_x0: bool,
    },
    /// DPM-Solver++(2M) (Lu et al. 2022) on `steps` steps.
    #[serde(rename = "dpm-solver++")]
    DpmSolverPP {
        /// Number of steps (network calls).
        steps: usize,
        /// How the steps are spread over 0..T.
        spacing: Spacing,
        /// Clip x̂₀ to [−1, 1].
        clip_x0: bool,
    },
    /// Heun's method on the probability-flow ODE (Karras et al. 2022) on `steps` steps
    /// (2·steps − 1 network calls).
    Heun {
        /// Number of steps.
        steps: usize,
        /// How the steps are spread over 0..T.
        spacing: Spacing,
        /// Clip x̂₀ to [−1, 1].
        clip_x0: bool,
    },
}

impl Default for SamplerConfig {
    /// DDIM, 50 quadratic steps, x̂₀ clipped: a good preview sampler.
    fn default() -> Self {
        SamplerConfig::Ddim {
            steps: 50,
            eta: 0.0,
            spacing: Spacing::Quadratic,
            clip_x0: true,
        }
    }
}

impl SamplerConfig {
    /// Names accepted by [`SamplerConfig::from_name`].
    pub const NAMES: &'static str = "ddpm, ddim, dpm-solver++, heun";

    /// A sampler by name with the common options; `spacing: None` takes the DDIM paper's
    /// quadratic spacing, which resolved the probability-flow ODE of the linear schedule better
    /// than Karras et al.'s at 10–80 steps in the Gaussian-oracle test (tests/solvers.rs).
    pub fn from_name(
        name: &str,
        steps: usize,
        eta: f64,
        spacing: Option<Spacing>,
        clip_x0: bool,
    ) -> Result<Self, UnknownSampler> {
        Ok(match name {
            "ddpm" | "ancestral" => SamplerConfig::Ddpm { clip_x0 },
            "ddim" => SamplerConfig::Ddim {
                steps,
                eta,
                spacing: spacing.unwrap_or(Spacing::Quadratic),
                clip_x0,
            },
            "dpm-solver++" | "dpm-solver" | "dpmpp" => SamplerConfig::DpmSolverPP {
                steps,
                spacing: spacing.unwrap_or(Spacing::Quadratic),
                clip_x0,
            },
            "heun" => SamplerConfig::Heun {
                steps,
                spacing: spacing.unwrap_or(Spacing::Quadratic),
                clip_x0,
            },
            other => return Err(UnknownSampler(other.to_string())),
        })
    }

    /// The sampler's name.
    pub fn name(&self) -> &'static str {
        match self {
            SamplerConfig::Ddpm { .. } => "ddpm",
            SamplerConfig::Ddim { .. } => "ddim",
            SamplerConfig::DpmSolverPP { .. } => "dpm-solver++",
            SamplerConfig::Heun { .. } => "heun",
        }
    }

    /// Builds the sampler for `diffusion` (the β tables are the diffusion's, never rebuilt).
    pub fn build(&self, diffusion: &GaussianDiffusion) -> Box<dyn Sampler> {
        let ts = |steps: usize, spacing: Spacing| {
            timestep_subsequence(&diffusion.schedule, steps, spacing)
        };
        match *self {
            SamplerConfig::Ddpm { clip_x0 } => Box::new(Ancestral::new(diffusion, clip_x0)),
            SamplerConfig::Ddim {
                steps,
                eta,
                spacing,
                clip_x0,
            } => Box::new(Ddim::new(ts(steps, spacing), eta, clip_x0)),
            SamplerConfig::DpmSolverPP {
                steps,
                spacing,
                clip_x0,
            } => Box::new(DpmSolverPP::new(ts(steps, spacing), clip_x0)),
            SamplerConfig::Heun {
                steps,
                spacing,
                clip_x0,
            } => Box::new(Heun::new(ts(steps, spacing), clip_x0)),
        }
    }

    /// e.g. "ddim (50 quadratic steps, η = 0)".
    pub fn describe(&self, diffusion: &GaussianDiffusion) -> String {
        let n = self.build(diffusion).timesteps().len();
        let sp = |s: Spacing| format!("{s:?}").to_lowercase();
        match self {
            SamplerConfig::Ddpm { .. } => format!("ddpm ({n} steps)"),
            SamplerConfig::Ddim { eta, spacing, .. } => {
                format!("ddim ({n} {} steps, η = {eta})", sp(*spacing))
            }
            SamplerConfig::DpmSolverPP { spacing, .. } => {
                format!("dpm-solver++ ({n} {} steps)", sp(*spacing))
            }
            SamplerConfig::Heun { spacing, .. } => {
                format!(
                    "heun ({n} {} steps, {} network calls)",
                    sp(*spacing),
                    2 * n - 1
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffusion::DiffusionConfig;

    #[test]
    fn unknown_names_are_refused_with_the_known_ones_listed() {
        let e = SamplerConfig::from_name("euler", 10, 0.0, None, true).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown sampler `euler` (ddpm, ddim, dpm-solver++, heun)"
        );
    }

    #[test]
    fn configs_round_trip_through_json_and_build_their_samplers() {
        let d = GaussianDiffusion::new(DiffusionConfig::default());
        for name in ["ddpm", "ddim", "dpm-solver++", "heun"] {
            let c = SamplerConfig::from_name(name, 20, 0.0, None, true).unwrap();
            assert_eq!(c.name(), name);
            let json = serde_json::to_string(&c).unwrap();
            assert!(json.contains(&format!("\"sampler\":\"{name}\"")), "{json}");
            assert_eq!(serde_json::from_str::<SamplerConfig>(&json).unwrap(), c);
            let n = c.build(&d).timesteps().len();
            assert_eq!(n, if name == "ddpm" { 1000 } else { 20 });
        }
        assert!(SamplerConfig::from_name("euler", 1, 0.0, None, true).is_err());
    }
}
