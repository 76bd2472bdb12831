//! # ddpm — denoising diffusion probabilistic models on burn
//!
//! Ho et al. 2020 (DDPM), Song et al. 2021 (DDIM) and Dhariwal & Nichol 2021 (classifier
//! guidance), with the mathematics kept free of I/O so it can be checked against exact values.

pub mod data;
pub mod diffusion;
pub mod image;
pub mod likelihood;
pub mod model;
pub mod oracle;
pub mod params;
pub mod sampling;
pub mod schedule;
pub mod tensorfile;
pub mod train;

#[cfg(test)]
pub(crate) mod testing;
