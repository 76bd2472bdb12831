//! Training: the loop of Algorithm 1, the fused optimiser step, and run folders/checkpoints.

pub mod checkpoint;
pub mod classifier;
pub mod optim;
pub mod trainer;

pub use checkpoint::RunConfig;
pub use optim::OptimConfig;
pub use trainer::{TrainConfig, Trainer, load_run_model};
