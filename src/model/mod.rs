//! Networks: the ε-prediction U-Net and its blocks.

pub mod blocks;
pub mod classifier;
pub mod unet;

pub use unet::{UNet, UNetConfig};
