//! Training: one loop shared by every task ([`session`]), the diffusion model's step
//! (Algorithm 1, [`trainer`]) and the guidance classifier's ([`classifier`]), the fused
//! optimiser step (on the host, or on a GPU's tensors in [`device_optim`]), run configurations,
//! checkpoints, and opening finished runs ([`Run`]).
//!
//! Modules depend one way: `session` uses `config`, `optim`, `device_optim` and `checkpoint`;
//! `trainer` and `classifier` use `session`, `trainer` also `resample` (how t is drawn); `run`
//! reads what they write.

pub mod checkpoint;
pub mod classifier;
pub mod config;
pub mod device_optim;
pub mod optim;
pub mod resample;
pub mod run;
pub mod session;
pub mod trainer;

pub use config::{
    ClassifierRunConfig, Recipe, RecipeDefaults, RunConfig, TaskConfig, TrainConfig,
    default_run_config,
};
pub use optim::{LrSchedule, OptimConfig};
pub use run::{Run, RunKind};
pub use session::{Session, Task, TrainSummary};
pub use trainer::Trainer;
