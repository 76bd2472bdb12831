//! The command-line tool, one module per command; `main.rs` only parses and dispatches.

pub(crate) mod bench;
pub(crate) mod classifier;
pub(crate) mod common;
pub(crate) mod demo;
pub(crate) mod eval;
pub(crate) mod fid;
pub(crate) mod inspect;
pub(crate) mod interop;
pub(crate) mod latent;
pub(crate) mod sample;
pub(crate) mod selftest;
pub(crate) mod train;

/// What every command module uses.
#[allow(unused_imports)]
pub(crate) mod prelude {
    pub(crate) use std::path::PathBuf;
    pub(crate) use std::time::Instant;

    pub(crate) use anyhow::{Context, Result, bail};
    pub(crate) use burn::tensor::{Device, Tensor, TensorData};
    pub(crate) use clap::{Args, Subcommand};

    pub(crate) use ddpm::data::{self, Split};
    pub(crate) use ddpm::diffusion::{
        Denoiser, DiffusionConfig, GaussianDiffusion, LossType, Prediction, VarianceType,
    };
    pub(crate) use ddpm::metrics::fid::{
        FEATURE_DIM, FeatureStats, extract_features, frechet_distance, precision_recall,
    };
    pub(crate) use ddpm::metrics::inception::{FidInception, locate_weights};
    pub(crate) use ddpm::model::UNetConfig;
    pub(crate) use ddpm::sampling::{
        BatchOptions, Ddim, NoiseSource, Sampler, SamplerConfig, Spacing, timestep_subsequence,
    };
    pub(crate) use ddpm::schedule::BetaSchedule;
    pub(crate) use ddpm::train::{Run, RunConfig, TrainConfig, Trainer};

    pub(crate) use super::common::*;
    pub(crate) use super::fid::{FidNetArgs, dataset_features, fid_progress};
}
