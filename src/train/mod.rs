//! Training: the loop of Algorithm 1, the fused optimiser step, and run folders/checkpoints.

pub mod checkpoint;
pub mod classifier;
pub mod config;
pub mod optim;
pub mod trainer;

pub use config::{RunConfig, TrainConfig, default_run_config};
pub use optim::OptimConfig;
pub use trainer::{Trainer, load_run_model};
