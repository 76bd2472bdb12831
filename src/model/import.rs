//! Loading a diffusers `UNet2DModel` (DDPM configuration) into [`super::UNet`]; the mapping
//! lives in [`crate::diffusers`], which also writes runs back out for diffusers.

pub use crate::diffusers::{config_from_diffusers, diffusers_name_to_ours, load_diffusers_unet};
