//! Loading a diffusers `UNet2DModel` (DDPM configuration) into [`UNet`].
//!
//! diffusers' parameter names are this crate's module paths except for `to_out.0` (a
//! `ModuleList` in PyTorch) and the layout of dense weights (PyTorch stores `[out, in]`, burn
//! `[in, out]`).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use burn::tensor::Device;
use serde_json::Value;

use super::unet::{UNet, UNetConfig};
use crate::params;
use crate::tensorfile;

/// Translates a diffusers `config.json` into a [`UNetConfig`], refusing anything that is not
/// the DDPM configuration this crate implements.
pub fn config_from_diffusers(json: &Value) -> Result<UNetConfig> {
    let get = |k: &str| {
        json.get(k)
            .with_context(|| format!("config.json has no `{k}`"))
    };
    let usize_of = |k: &str| -> Result<usize> {
        get(k)?
            .as_u64()
            .map(|v| v as usize)
            .with_context(|| format!("`{k}` is not an integer"))
    };
    let expect = |k: &str, v: Value| -> Result<()> {
        let got = json.get(k).cloned().unwrap_or(Value::Null);
        ensure!(
            got == v,
            "unsupported diffusers setting `{k}` = {got} (need {v})"
        );
        Ok(())
    };
    expect("flip_sin_to_cos", Value::Bool(false))?;
    expect("freq_shift", Value::from(1))?;
    expect("downsample_padding", Value::from(0))?;
    expect("time_embedding_type", Value::from("positional"))?;
    expect("act_fn", Value::from("silu"))?;
    expect("resnet_time_scale_shift", Value::from("default"))?;
    expect("center_input_sample", Value::Bool(false))?;
    expect("class_embed_type", Value::Null)?;
    expect("attention_head_dim", Value::Null)?;
    let boc: Vec<usize> = get("block_out_channels")?
        .as_array()
        .context("block_out_channels is not a list")?
        .iter()
        .map(|v| {
            v.as_u64()
                .map(|x| x as usize)
                .context("bad block_out_channels")
        })
        .collect::<Result<_>>()?;
    ensure!(!boc.is_empty(), "block_out_channels is empty");
    let base = boc[0];
    let channel_mult: Vec<usize> = boc
        .iter()
        .map(|&c| {
            ensure!(
                c % base == 0,
                "block_out_channels must be multiples of the first"
            );
            Ok(c / base)
        })
        .collect::<Result<_>>()?;
    let in_channels = usize_of("in_channels")?;
    ensure!(
        usize_of("out_channels")? == in_channels,
        "out_channels must equal in_channels"
    );
    let image_size = usize_of("sample_size")?;
    let down: Vec<String> = get("down_block_types")?
        .as_array()
        .context("down_block_types is not a list")?
        .iter()
        .map(|v| v.as_str().unwrap_or("").to_string())
        .collect();
    ensure!(
        down.len() == boc.len(),
        "one down block per block_out_channels entry"
    );
    let mut config = UNetConfig {
        image_size,
        in_channels,
        base_channels: base,
        channel_mult,
        num_res_blocks: usize_of("layers_per_block")?,
        attention_resolutions: Vec::new(),
        dropout: get("dropout").ok().and_then(|v| v.as_f64()).unwrap_or(0.0),
        norm_groups: usize_of("norm_num_groups")?,
        norm_eps: get("norm_eps")?.as_f64().context("norm_eps")?,
        out_channels: None,
        num_class_embeds: None,
    };
    let sizes = config.level_sizes();
    for (l, kind) in down.iter().enumerate() {
        match kind.as_str() {
            "DownBlock2D" => {}
            "AttnDownBlock2D" => config.attention_resolutions.push(sizes[l]),
            other => bail!("unsupported down block type {other}"),
        }
    }
    Ok(config)
}

/// Maps a diffusers parameter name to this crate's path.
pub fn diffusers_name_to_ours(name: &str) -> String {
    name.replace(".to_out.0.", ".to_out.")
}

/// Loads `config.json` and `diffusion_pytorch_model.safetensors` from a diffusers model folder.
pub fn load_diffusers_unet(dir: &Path, device: &Device) -> Result<(UNetConfig, UNet)> {
    let cfg_path = dir.join("config.json");
    let json: Value = serde_json::from_str(
        &std::fs::read_to_string(&cfg_path)
            .with_context(|| format!("reading {}", cfg_path.display()))?,
    )
    .with_context(|| format!("parsing {}", cfg_path.display()))?;
    let config = config_from_diffusers(&json).with_context(|| format!("{}", cfg_path.display()))?;
    let weights_path = dir.join("diffusion_pytorch_model.safetensors");
    let tensors = tensorfile::read_f32_tensors(&weights_path)?;
    let mut by_name: HashMap<String, (Vec<usize>, Vec<f32>)> = tensors
        .into_iter()
        .map(|(n, shape, v)| (diffusers_name_to_ours(&n), (shape, v)))
        .collect();
    let model = config.init(device);
    let mut values = Vec::new();
    for (name, shape) in params::layout(&model) {
        let (src_shape, v) = by_name.remove(&name).with_context(|| {
            format!(
                "{}: no tensor for parameter `{name}`",
                weights_path.display()
            )
        })?;
        let v = if shape.len() == 2 {
            // PyTorch dense weights are [out, in]; ours are [in, out].
            ensure!(
                src_shape == vec![shape[1], shape[0]],
                "{}: `{name}` has shape {src_shape:?}, expected {:?}",
                weights_path.display(),
                [shape[1], shape[0]]
            );
            transpose(&v, shape[1], shape[0])
        } else {
            ensure!(
                src_shape == shape,
                "{}: `{name}` has shape {src_shape:?}, expected {shape:?}",
                weights_path.display()
            );
            v
        };
        values.push(v);
    }
    if let Some(extra) = by_name.keys().next() {
        bail!(
            "{}: tensor `{extra}` does not belong to the model described by config.json",
            weights_path.display()
        );
    }
    Ok((config, params::assign(model, &values, false)))
}

/// Transposes a row-major `rows × cols` matrix.
fn transpose(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; v.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = v[r * cols + c];
        }
    }
    out
}
