//! diffusers interoperability: a `UNet2DModel` folder (DDPM configuration) in, a run folder out,
//! and back.
//!
//! A diffusers model folder holds `config.json` (the `UNet2DModel` settings) and
//! `diffusion_pytorch_model.safetensors` (or the PyTorch pickle `diffusion_pytorch_model.bin`);
//! a pipeline folder (e.g. google/ddpm-cifar10-32) has them in `unet/`, next to
//! `scheduler/scheduler_config.json` (the `DDPMScheduler` settings: T, the β schedule, the
//! reverse-process variance).
//!
//! The U-Net of this crate is layer for layer diffusers' `UNet2DModel` in the configuration of
//! Ho et al. 2020 (appendix B): sinusoidal time embedding without the sin/cos flip and with
//! frequency shift 1, SiLU, pre-norm residual blocks with an additive time embedding,
//! single-head self-attention, strided-convolution downsampling without padding on the first
//! side, nearest-neighbour upsampling then a convolution. Every other setting is refused with
//! its name and value, so an import either reproduces the network exactly or stops.
//!
//! Parameter names are this crate's module paths except `to_out.0` (a `ModuleList` in PyTorch;
//! older diffusers versions call the attention projections `query`, `key`, `value`,
//! `proj_attn`), and PyTorch stores dense weights `[out, in]` where burn stores `[in, out]`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use burn::tensor::Device;
use serde_json::{Value, json};

use crate::diffusion::{DiffusionConfig, Prediction, VarianceType};
use crate::model::{UNet, UNetConfig};
use crate::params;
use crate::schedule::BetaSchedule;
use crate::tensorfile::{self, NamedTensor};
use crate::train::checkpoint::{CheckpointMeta, save_checkpoint};
use crate::train::optim::TrainState;
use crate::train::{Run, RunConfig, TrainConfig};

/// The model's settings file in a diffusers folder.
pub const CONFIG_FILE: &str = "config.json";
/// The scheduler's settings file.
pub const SCHEDULER_FILE: &str = "scheduler_config.json";
/// Weights as safetensors (what `save_pretrained` writes).
pub const WEIGHTS_SAFETENSORS: &str = "diffusion_pytorch_model.safetensors";
/// Weights as a `torch.save` archive (older repositories).
pub const WEIGHTS_BIN: &str = "diffusion_pytorch_model.bin";
/// The diffusers version whose `UNet2DModel` settings [`unet_config_to_diffusers`] writes.
pub const DIFFUSERS_VERSION: &str = "0.42.1";

/// diffusers' `UNet2DModel.__init__` defaults, for settings a `config.json` leaves out (older
/// files omit settings added later; diffusers fills them in the same way).
fn unet_default(key: &str) -> Option<Value> {
    Some(match key {
        "sample_size" => Value::Null,
        "in_channels" | "out_channels" => json!(3),
        "center_input_sample" => json!(false),
        "time_embedding_type" => json!("positional"),
        "time_embedding_dim" => Value::Null,
        "freq_shift" => json!(0),
        "flip_sin_to_cos" => json!(true),
        "down_block_types" => json!([
            "DownBlock2D",
            "AttnDownBlock2D",
            "AttnDownBlock2D",
            "AttnDownBlock2D"
        ]),
        "mid_block_type" => json!("UNetMidBlock2D"),
        "up_block_types" => json!([
            "AttnUpBlock2D",
            "AttnUpBlock2D",
            "AttnUpBlock2D",
            "UpBlock2D"
        ]),
        "block_out_channels" => json!([224, 448, 672, 896]),
        "layers_per_block" => json!(2),
        "mid_block_scale_factor" => json!(1),
        "downsample_padding" => json!(1),
        "downsample_type" => json!("conv"),
        "upsample_type" => json!("conv"),
        "dropout" => json!(0.0),
        "act_fn" => json!("silu"),
        "attention_head_dim" => json!(8),
        "norm_num_groups" => json!(32),
        "attn_norm_num_groups" => Value::Null,
        "norm_eps" => json!(1e-5),
        "resnet_time_scale_shift" => json!("default"),
        "add_attention" => json!(true),
        "class_embed_type" => Value::Null,
        "num_class_embeds" => Value::Null,
        "num_train_timesteps" => Value::Null,
        _ => return None,
    })
}

/// A `config.json` with diffusers' defaults filled in, read setting by setting.
struct Settings<'a> {
    json: &'a Value,
    defaults: fn(&str) -> Option<Value>,
}

impl Settings<'_> {
    fn get(&self, k: &str) -> Value {
        match self.json.get(k) {
            Some(v) => v.clone(),
            None => (self.defaults)(k).unwrap_or(Value::Null),
        }
    }

    fn usize(&self, k: &str) -> Result<usize> {
        let v = self.get(k);
        v.as_u64()
            .map(|x| x as usize)
            .with_context(|| format!("setting `{k}` = {v} is not a non-negative integer"))
    }

    fn f64(&self, k: &str) -> Result<f64> {
        let v = self.get(k);
        v.as_f64()
            .with_context(|| format!("setting `{k}` = {v} is not a number"))
    }

    fn bool(&self, k: &str) -> Result<bool> {
        let v = self.get(k);
        v.as_bool()
            .with_context(|| format!("setting `{k}` = {v} is not true or false"))
    }

    fn str(&self, k: &str) -> Result<String> {
        let v = self.get(k);
        v.as_str()
            .map(str::to_string)
            .with_context(|| format!("setting `{k}` = {v} is not a string"))
    }

    /// Refuses a setting whose value is not `want` (a value this crate implements).
    fn expect(&self, k: &str, want: Value, what: &str) -> Result<()> {
        let got = self.get(k);
        // JSON numbers 1 and 1.0 are the same setting.
        let same =
            got == want || matches!((got.as_f64(), want.as_f64()), (Some(a), Some(b)) if a == b);
        ensure!(
            same,
            "unsupported diffusers setting `{k}` = {got}: ddpm implements only {want} ({what})"
        );
        Ok(())
    }

    fn str_list(&self, k: &str) -> Result<Vec<String>> {
        let v = self.get(k);
        v.as_array()
            .with_context(|| format!("setting `{k}` = {v} is not a list"))?
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_string)
                    .with_context(|| format!("setting `{k}`: {x} is not a string"))
            })
            .collect()
    }

    /// Settings neither known nor private (`_class_name`, `_diffusers_version`, ...).
    fn unknown(&self) -> Vec<String> {
        match self.json.as_object() {
            Some(m) => m
                .iter()
                .filter(|(k, v)| {
                    !k.starts_with('_') && (self.defaults)(k).is_none() && !v.is_null()
                })
                .map(|(k, v)| format!("`{k}` = {v}"))
                .collect(),
            None => Vec::new(),
        }
    }
}

/// Translates a diffusers `UNet2DModel` `config.json` into a [`UNetConfig`], refusing anything
/// that is not the DDPM configuration this crate implements; the error names the setting.
pub fn unet_config_from_diffusers(json: &Value) -> Result<UNetConfig> {
    ensure!(json.is_object(), "config.json is not a JSON object");
    let s = Settings {
        json,
        defaults: unet_default,
    };
    if let Some(class) = json.get("_class_name").and_then(Value::as_str) {
        ensure!(
            class == "UNet2DModel",
            "`_class_name` = \"{class}\": ddpm imports only UNet2DModel"
        );
    }
    let unknown = s.unknown();
    ensure!(
        unknown.is_empty(),
        "unknown diffusers setting(s) {} (ddpm knows UNet2DModel's settings of diffusers {DIFFUSERS_VERSION})",
        unknown.join(", ")
    );
    s.expect(
        "time_embedding_type",
        json!("positional"),
        "sinusoidal time embedding",
    )?;
    s.expect("flip_sin_to_cos", json!(false), "sin before cos, Ho et al.")?;
    s.expect("freq_shift", json!(1), "Ho et al.'s frequencies")?;
    s.expect("act_fn", json!("silu"), "SiLU")?;
    s.expect(
        "resnet_time_scale_shift",
        json!("default"),
        "additive time embedding",
    )?;
    s.expect(
        "center_input_sample",
        json!(false),
        "inputs already in [-1, 1]",
    )?;
    s.expect(
        "downsample_padding",
        json!(0),
        "Ho et al.'s strided convolution",
    )?;
    s.expect("downsample_type", json!("conv"), "strided convolution")?;
    s.expect(
        "upsample_type",
        json!("conv"),
        "nearest neighbour + convolution",
    )?;
    s.expect(
        "mid_block_type",
        json!("UNetMidBlock2D"),
        "resnet, attention, resnet",
    )?;
    s.expect("mid_block_scale_factor", json!(1), "unscaled middle block")?;
    s.expect(
        "add_attention",
        json!(true),
        "attention in the middle block",
    )?;
    s.expect(
        "class_embed_type",
        Value::Null,
        "a learned class embedding from `num_class_embeds`",
    )?;
    let num_class_embeds = match s.get("num_class_embeds") {
        Value::Null => None,
        v => match v.as_u64() {
            Some(n) if n > 0 => Some(n as usize),
            _ => bail!("setting `num_class_embeds` = {v} is not a positive integer"),
        },
    };

    let boc: Vec<usize> = {
        let v = s.get("block_out_channels");
        v.as_array()
            .with_context(|| format!("setting `block_out_channels` = {v} is not a list"))?
            .iter()
            .map(|x| {
                x.as_u64().map(|c| c as usize).with_context(|| {
                    format!("setting `block_out_channels` = {v}: {x} is not an integer")
                })
            })
            .collect::<Result<_>>()?
    };
    ensure!(
        !boc.is_empty() && boc[0] > 0,
        "setting `block_out_channels` = {boc:?} needs a positive first entry"
    );
    let base = boc[0];
    let channel_mult: Vec<usize> = boc
        .iter()
        .map(|&c| {
            ensure!(
                c % base == 0,
                "setting `block_out_channels` = {boc:?}: ddpm needs multiples of the first entry (ch × ch_mult)"
            );
            Ok(c / base)
        })
        .collect::<Result<_>>()?;
    let in_channels = s.usize("in_channels")?;
    let out_channels = s.usize("out_channels")?;
    // 2C outputs: the second half interpolates the variance (`learned_range`).
    ensure!(
        out_channels == in_channels || out_channels == 2 * in_channels,
        "unsupported diffusers setting `out_channels` = {out_channels}: ddpm needs `in_channels` = {in_channels}, or twice that for a learned variance"
    );
    // An integer, or [height, width] (square only).
    let size = s.get("sample_size");
    let image_size = match size.as_array().map(|a| a.as_slice()) {
        Some([h, w]) if h == w => h.as_u64(),
        Some(_) => None,
        None => size.as_u64(),
    }
    .map(|v| v as usize)
    .with_context(|| {
        format!("unsupported diffusers setting `sample_size` = {size}: ddpm needs square images (one integer)")
    })?;
    let time_dim = s.get("time_embedding_dim");
    ensure!(
        time_dim.is_null() || time_dim.as_u64() == Some(4 * base as u64),
        "unsupported diffusers setting `time_embedding_dim` = {time_dim}: ddpm uses 4 × block_out_channels[0] = {}",
        4 * base
    );
    let groups = s.usize("norm_num_groups")?;
    let attn_groups = s.get("attn_norm_num_groups");
    ensure!(
        attn_groups.is_null() || attn_groups.as_u64() == Some(groups as u64),
        "unsupported diffusers setting `attn_norm_num_groups` = {attn_groups}: ddpm's attention uses `norm_num_groups` = {groups}"
    );
    let down = s.str_list("down_block_types")?;
    let up = s.str_list("up_block_types")?;
    ensure!(
        down.len() == boc.len(),
        "setting `down_block_types` has {} entries but `block_out_channels` has {}",
        down.len(),
        boc.len()
    );
    ensure!(
        up.len() == boc.len(),
        "setting `up_block_types` has {} entries but `block_out_channels` has {}",
        up.len(),
        boc.len()
    );
    let mut config = UNetConfig {
        image_size,
        in_channels,
        base_channels: base,
        channel_mult,
        num_res_blocks: s.usize("layers_per_block")?,
        attention_resolutions: Vec::new(),
        dropout: s.f64("dropout")?,
        norm_groups: groups,
        norm_eps: s.f64("norm_eps")?,
        out_channels: (out_channels != in_channels).then_some(out_channels),
        num_class_embeds,
    };
    let sizes = config.level_sizes();
    let mut attention_channels = vec![boc[boc.len() - 1]];
    for (l, kind) in down.iter().enumerate() {
        match kind.as_str() {
            "DownBlock2D" => {}
            "AttnDownBlock2D" => {
                config.attention_resolutions.push(sizes[l]);
                attention_channels.push(boc[l]);
            }
            other => bail!(
                "unsupported diffusers setting `down_block_types`[{l}] = \"{other}\": ddpm builds DownBlock2D and AttnDownBlock2D"
            ),
        }
    }
    for (i, kind) in up.iter().enumerate() {
        let l = boc.len() - 1 - i;
        let want = if config.attention_resolutions.contains(&sizes[l]) {
            "AttnUpBlock2D"
        } else {
            "UpBlock2D"
        };
        ensure!(
            kind == want,
            "unsupported diffusers setting `up_block_types`[{i}] = \"{kind}\": ddpm's way up mirrors `down_block_types`, which needs \"{want}\" there"
        );
    }
    // One attention head: `attention_head_dim` null, or equal to the channels of every
    // attention layer (the middle block's included).
    let head = s.get("attention_head_dim");
    ensure!(
        head.is_null()
            || attention_channels
                .iter()
                .all(|&c| head.as_u64() == Some(c as u64)),
        "unsupported diffusers setting `attention_head_dim` = {head}: ddpm's attention has one head (null, or the channel count of every attention layer: {attention_channels:?})"
    );
    config
        .validate()
        .map_err(|e| anyhow::anyhow!("the model in config.json cannot be built: {e}"))?;
    Ok(config)
}

/// The diffusers `config.json` of a [`UNetConfig`] (every `UNet2DModel` setting written out).
pub fn unet_config_to_diffusers(c: &UNetConfig) -> Result<Value> {
    c.validate()
        .map_err(|e| anyhow::anyhow!("the run's model cannot be exported: {e}"))?;
    let sizes = c.level_sizes();
    let boc: Vec<usize> = c.channel_mult.iter().map(|m| m * c.base_channels).collect();
    let attn: Vec<bool> = sizes
        .iter()
        .map(|s| c.attention_resolutions.contains(s))
        .collect();
    let down: Vec<&str> = attn
        .iter()
        .map(|&a| if a { "AttnDownBlock2D" } else { "DownBlock2D" })
        .collect();
    let up: Vec<&str> = attn
        .iter()
        .rev()
        .map(|&a| if a { "AttnUpBlock2D" } else { "UpBlock2D" })
        .collect();
    Ok(json!({
        "_class_name": "UNet2DModel",
        "_diffusers_version": DIFFUSERS_VERSION,
        "act_fn": "silu",
        "add_attention": true,
        "attention_head_dim": null,
        "attn_norm_num_groups": null,
        "block_out_channels": boc,
        "center_input_sample": false,
        "class_embed_type": null,
        "down_block_types": down,
        "downsample_padding": 0,
        "downsample_type": "conv",
        "dropout": c.dropout,
        "flip_sin_to_cos": false,
        "freq_shift": 1,
        "in_channels": c.in_channels,
        "layers_per_block": c.num_res_blocks,
        "mid_block_scale_factor": 1,
        "mid_block_type": "UNetMidBlock2D",
        "norm_eps": c.norm_eps,
        "norm_num_groups": c.norm_groups,
        "num_class_embeds": c.num_class_embeds,
        "num_train_timesteps": null,
        "out_channels": c.out_channels.unwrap_or(c.in_channels),
        "resnet_time_scale_shift": "default",
        "sample_size": c.image_size,
        "time_embedding_dim": null,
        "time_embedding_type": "positional",
        "up_block_types": up,
        "upsample_type": "conv",
    }))
}

/// diffusers' `DDPMScheduler.__init__` defaults.
fn scheduler_default(key: &str) -> Option<Value> {
    Some(match key {
        "num_train_timesteps" => json!(1000),
        "beta_start" => json!(0.0001),
        "beta_end" => json!(0.02),
        "beta_schedule" => json!("linear"),
        "trained_betas" => Value::Null,
        "variance_type" => json!("fixed_small"),
        "clip_sample" => json!(true),
        "prediction_type" => json!("epsilon"),
        "thresholding" => json!(false),
        "dynamic_thresholding_ratio" => json!(0.995),
        "clip_sample_range" => json!(1.0),
        "sample_max_value" => json!(1.0),
        "timestep_spacing" => json!("leading"),
        "steps_offset" => json!(0),
        "rescale_betas_zero_snr" => json!(false),
        // Written by older versions, without effect on DDPM sampling.
        "tensor_format" | "predict_epsilon" => Value::Null,
        _ => return None,
    })
}

/// The diffusion process of a diffusers `scheduler_config.json` (`DDPMScheduler`, or another
/// scheduler class with the same training settings), with notes on settings that are sampling
/// options in ddpm rather than part of a run.
pub fn diffusion_from_scheduler(json: &Value) -> Result<(DiffusionConfig, Vec<String>)> {
    ensure!(
        json.is_object(),
        "scheduler_config.json is not a JSON object"
    );
    let s = Settings {
        json,
        defaults: scheduler_default,
    };
    let mut notes = Vec::new();
    let t = s.usize("num_train_timesteps")?;
    ensure!(t >= 2, "setting `num_train_timesteps` = {t} is too small");
    // `predict_epsilon = false` is how diffusers before 0.7 said "predicts x0".
    let legacy_x0 = json.get("predict_epsilon") == Some(&json!(false));
    let prediction = match s.str("prediction_type")?.as_str() {
        _ if legacy_x0 => Prediction::X0,
        "epsilon" => Prediction::Epsilon,
        "sample" => Prediction::X0,
        "v_prediction" => Prediction::V,
        other => bail!(
            "unsupported diffusers setting `prediction_type` = \"{other}\": ddpm's networks predict epsilon, sample (x₀) or v_prediction"
        ),
    };
    s.expect(
        "rescale_betas_zero_snr",
        json!(false),
        "the β schedule as given",
    )?;
    s.expect(
        "thresholding",
        json!(false),
        "x̂₀ clipped to [-1, 1] at most",
    )?;
    let trained = s.get("trained_betas");
    let schedule = if !trained.is_null() {
        let betas: Vec<f64> = trained
            .as_array()
            .with_context(|| "setting `trained_betas` is not a list")?
            .iter()
            .map(|b| {
                b.as_f64()
                    .context("setting `trained_betas` holds a non-number")
            })
            .collect::<Result<_>>()?;
        ensure!(
            betas.len() == t,
            "setting `trained_betas` has {} values but `num_train_timesteps` = {t}",
            betas.len()
        );
        BetaSchedule::Explicit { betas }
    } else {
        let (b0, b1) = (s.f64("beta_start")?, s.f64("beta_end")?);
        match s.str("beta_schedule")?.as_str() {
            "linear" => BetaSchedule::Linear {
                beta_start: b0,
                beta_end: b1,
            },
            // diffusers' `betas_for_alpha_bar` with the cosine ᾱ of Nichol & Dhariwal 2021
            // (s = 0.008, β ≤ 0.999), which is ddpm's cosine schedule.
            "squaredcos_cap_v2" => BetaSchedule::cosine(),
            // β = (linspace(√β_start, √β_end, T))², as diffusers defines it.
            "scaled_linear" => BetaSchedule::Explicit {
                betas: (0..t)
                    .map(|i| {
                        let r = i as f64 / (t - 1) as f64;
                        (b0.sqrt() + r * (b1.sqrt() - b0.sqrt())).powi(2)
                    })
                    .collect(),
            },
            other => bail!(
                "unsupported diffusers setting `beta_schedule` = \"{other}\": ddpm reads linear, scaled_linear and squaredcos_cap_v2 (or `trained_betas`)"
            ),
        }
    };
    let variance = match s.str("variance_type")?.as_str() {
        "fixed_small" | "fixed_small_log" => VarianceType::Small,
        "fixed_large" | "fixed_large_log" => VarianceType::Large,
        // log σ² = frac·log β_t + (1 − frac)·log β̃_t, frac = (v + 1)/2 (Nichol & Dhariwal 2021
        // eq. 15), diffusers' `learned_range`.
        "learned_range" => VarianceType::Learned,
        other => bail!(
            "unsupported diffusers setting `variance_type` = \"{other}\": ddpm reads fixed_small (β̃_t), fixed_large (β_t) and learned_range"
        ),
    };
    if !s.bool("clip_sample")? {
        notes.push(
            "the scheduler does not clip x̂₀ (`clip_sample` = false): sample with `--clip false` to match"
                .into(),
        );
    } else {
        let range = s.f64("clip_sample_range")?;
        ensure!(
            range == 1.0,
            "unsupported diffusers setting `clip_sample_range` = {range}: ddpm clips x̂₀ to [-1, 1]"
        );
    }
    Ok((
        DiffusionConfig {
            num_timesteps: t,
            schedule,
            variance,
            prediction,
            ..Default::default()
        },
        notes,
    ))
}

/// The `scheduler_config.json` of a diffusion process (`DDPMScheduler`).
pub fn scheduler_to_diffusers(d: &DiffusionConfig) -> Value {
    let (schedule, start, end, trained) = match &d.schedule {
        BetaSchedule::Linear {
            beta_start,
            beta_end,
        } => ("linear", *beta_start, *beta_end, Value::Null),
        BetaSchedule::Cosine { s, max_beta } if *s == 0.008 && *max_beta == 0.999 => {
            ("squaredcos_cap_v2", 0.0001, 0.02, Value::Null)
        }
        other => ("linear", 0.0001, 0.02, json!(other.betas(d.num_timesteps))),
    };
    json!({
        "_class_name": "DDPMScheduler",
        "_diffusers_version": DIFFUSERS_VERSION,
        "beta_end": end,
        "beta_schedule": schedule,
        "beta_start": start,
        "clip_sample": true,
        "clip_sample_range": 1.0,
        "num_train_timesteps": d.num_timesteps,
        "prediction_type": match d.prediction {
            Prediction::Epsilon => "epsilon",
            Prediction::X0 => "sample",
            Prediction::V => "v_prediction",
        },
        "trained_betas": trained,
        "variance_type": match d.variance {
            VarianceType::Small => "fixed_small",
            VarianceType::Large => "fixed_large",
            VarianceType::Learned => "learned_range",
        },
    })
}

/// Maps a diffusers parameter name to this crate's path (also the attention names of
/// diffusers before 0.14: `query`, `key`, `value`, `proj_attn`).
pub fn diffusers_name_to_ours(name: &str) -> String {
    let n = name.replace(".to_out.0.", ".to_out.");
    if n.contains(".attentions.") {
        n.replace(".query.", ".to_q.")
            .replace(".key.", ".to_k.")
            .replace(".value.", ".to_v.")
            .replace(".proj_attn.", ".to_out.")
    } else {
        n
    }
}

/// Maps this crate's parameter path to diffusers' name.
pub fn our_name_to_diffusers(name: &str) -> String {
    name.replace(".to_out.", ".to_out.0.")
}

/// The files of a diffusers model found from a folder.
#[derive(Clone, Debug)]
pub struct DiffusersFiles {
    /// `config.json` of the `UNet2DModel`.
    pub config: PathBuf,
    /// The weights (safetensors preferred over `.bin`).
    pub weights: PathBuf,
    /// `scheduler_config.json`, when there is one beside or in the pipeline folder.
    pub scheduler: Option<PathBuf>,
}

/// Finds the model files from `dir`: a model folder, or a pipeline folder with `unet/`;
/// the scheduler settings beside the model, in `scheduler/` or in the parent's `scheduler/`.
pub fn locate(dir: &Path) -> Result<DiffusersFiles> {
    ensure!(
        dir.is_dir(),
        "{}: no such folder (pass a diffusers model folder: config.json + {WEIGHTS_SAFETENSORS})",
        dir.display()
    );
    let model_dir =
        if !dir.join(CONFIG_FILE).exists() && dir.join("unet").join(CONFIG_FILE).exists() {
            dir.join("unet")
        } else {
            dir.to_path_buf()
        };
    let config = model_dir.join(CONFIG_FILE);
    ensure!(
        config.exists(),
        "{}: missing (looked for {} and {})",
        config.display(),
        dir.join(CONFIG_FILE).display(),
        dir.join("unet").join(CONFIG_FILE).display()
    );
    let candidates = [
        model_dir.join(WEIGHTS_SAFETENSORS),
        model_dir.join(WEIGHTS_BIN),
    ];
    let weights = candidates
        .iter()
        .find(|p| p.exists())
        .cloned()
        .with_context(|| {
            format!(
                "{}: no weights (looked for {} and {})",
                model_dir.display(),
                candidates[0].display(),
                candidates[1].display()
            )
        })?;
    let mut sched = vec![
        model_dir.join(SCHEDULER_FILE),
        model_dir.join("scheduler").join(SCHEDULER_FILE),
    ];
    if let Some(parent) = model_dir.parent() {
        sched.push(parent.join(SCHEDULER_FILE));
        sched.push(parent.join("scheduler").join(SCHEDULER_FILE));
    }
    Ok(DiffusersFiles {
        config,
        weights,
        scheduler: sched.into_iter().find(|p| p.exists()),
    })
}

fn read_json(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))
}

/// Every float tensor of a weights file: safetensors, or a `torch.save` ZIP archive (`.bin`,
/// `.pt`, `.pth`), told apart by their first bytes.
pub fn read_weights(path: &Path) -> Result<Vec<NamedTensor>> {
    let mut head = [0u8; 4];
    {
        use std::io::Read;
        let mut f =
            std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
        f.read_exact(&mut head)
            .map_err(|_| anyhow::anyhow!("{}: empty or truncated file", path.display()))?;
    }
    if head == *b"PK\x03\x04" {
        crate::torchscript::read_torch_save_tensors(path)
    } else if head == [0x80, 0x02, 0x8a, 0x0a] {
        // Pickle protocol 2 starting with torch's magic number (a LONG1 of 10 bytes).
        bail!(
            "{}: a torch.save file in the legacy (before PyTorch 1.6) format; re-save it with a recent PyTorch or convert it to safetensors",
            path.display()
        )
    } else {
        tensorfile::read_f32_tensors(path)
    }
}

/// Arranges diffusers-named tensors into `model`'s parameter order and layout, checking
/// names and shapes (errors name `path` and the tensor).
pub fn weights_for(model: &UNet, tensors: Vec<NamedTensor>, path: &Path) -> Result<Vec<Vec<f32>>> {
    let mut by_name: HashMap<String, (Vec<usize>, Vec<f32>)> = tensors
        .into_iter()
        .map(|(n, shape, v)| (diffusers_name_to_ours(&n), (shape, v)))
        .collect();
    let mut values = Vec::new();
    for (name, shape) in params::layout(model) {
        let (src_shape, v) = by_name.remove(&name).with_context(|| {
            format!(
                "{}: no tensor `{}` (the model described by config.json needs it)",
                path.display(),
                our_name_to_diffusers(&name)
            )
        })?;
        let v = if is_linear_weight(&name, &shape) {
            // PyTorch dense weights are [out, in]; ours are [in, out].
            ensure!(
                src_shape == vec![shape[1], shape[0]],
                "{}: `{}` has shape {src_shape:?}, config.json needs {:?}",
                path.display(),
                our_name_to_diffusers(&name),
                [shape[1], shape[0]]
            );
            transpose(&v, shape[1], shape[0])
        } else {
            ensure!(
                src_shape == shape,
                "{}: `{}` has shape {src_shape:?}, config.json needs {shape:?}",
                path.display(),
                our_name_to_diffusers(&name)
            );
            v
        };
        values.push(v);
    }
    let mut extra: Vec<&String> = by_name.keys().collect();
    extra.sort();
    if let Some(first) = extra.first() {
        bail!(
            "{}: tensor `{first}` (and {} more) does not belong to the model described by config.json",
            path.display(),
            extra.len() - 1
        );
    }
    Ok(values)
}

/// A diffusers model read from disk: the network's settings and weights (this crate's layout),
/// the diffusion process when a scheduler config was found, and what was read.
#[derive(Debug)]
pub struct DiffusersModel {
    /// The U-Net's settings.
    pub config: UNetConfig,
    /// The diffusion process from `scheduler_config.json` (None: no scheduler file).
    pub diffusion: Option<DiffusionConfig>,
    /// Weights in [`params::layout`] order.
    pub weights: Vec<Vec<f32>>,
    /// The files read.
    pub files: DiffusersFiles,
    /// Settings of the scheduler that are sampling options in ddpm.
    pub notes: Vec<String>,
}

/// Reads a diffusers model folder (see [`locate`]) into a [`UNet`] on `device`.
pub fn load(dir: &Path, device: &Device) -> Result<(DiffusersModel, UNet)> {
    let files = locate(dir)?;
    let json = read_json(&files.config)?;
    let config =
        unet_config_from_diffusers(&json).with_context(|| format!("{}", files.config.display()))?;
    let (diffusion, notes) = match &files.scheduler {
        Some(p) => {
            let (d, n) = diffusion_from_scheduler(&read_json(p)?)
                .with_context(|| format!("{}", p.display()))?;
            (Some(d), n)
        }
        None => (None, Vec::new()),
    };
    let mut notes = notes;
    let learned_out = config.out_channels.is_some();
    let diffusion = match diffusion {
        Some(d) if (d.variance == VarianceType::Learned) != learned_out => bail!(
            "{} has `out_channels` = {} but {} says `variance_type` = {}: a learned variance (learned_range) needs twice `in_channels` = {} outputs, a fixed one exactly {}",
            files.config.display(),
            config.out_channels.unwrap_or(config.in_channels),
            files.scheduler.as_ref().unwrap().display(),
            scheduler_to_diffusers(&d)["variance_type"],
            config.in_channels,
            config.in_channels
        ),
        None if learned_out => {
            notes.push(
                "2C output channels and no scheduler config: the second half is read as a learned variance (learned_range)".into(),
            );
            Some(DiffusionConfig {
                variance: VarianceType::Learned,
                ..Default::default()
            })
        }
        d => d,
    };
    if let Some(n) = config.num_class_embeds {
        notes.push(format!(
            "class-conditional: ddpm reads the last of the {n} class-embedding rows as the null label ∅ of classifier-free guidance, leaving {} conditional classes",
            n.saturating_sub(1)
        ));
    }
    let tensors = read_weights(&files.weights)?;
    let model = config.init(device);
    let weights = weights_for(&model, tensors, &files.weights)?;
    let model = params::assign(model, &weights, false);
    Ok((
        DiffusersModel {
            config,
            diffusion,
            weights,
            files,
            notes,
        },
        model,
    ))
}

/// Loads a diffusers model folder (`config.json` + `diffusion_pytorch_model.safetensors` or
/// `.bin`, or a pipeline folder with `unet/`) into a [`UNet`].
pub fn load_diffusers_unet(dir: &Path, device: &Device) -> Result<(UNetConfig, UNet)> {
    let (m, model) = load(dir, device)?;
    Ok((m.config, model))
}

/// What [`import_run`] did.
#[derive(Debug)]
pub struct ImportReport {
    /// The model read.
    pub model: DiffusersModel,
    /// The run's settings as written.
    pub run_config: RunConfig,
    /// The checkpoint folder written.
    pub checkpoint: PathBuf,
}

/// Makes a run folder (config.json + a step-0 checkpoint whose raw and EMA weights are the
/// imported ones) from a diffusers model folder. Without a scheduler config the diffusion is
/// ddpm's default (Ho et al.: T = 1000, β linear 1e-4 → 0.02, σ² = β). `data` is the data
/// set recorded for further training. Refuses a folder that already holds a run.
pub fn import_run(dir: &Path, run: &Path, data: &str) -> Result<ImportReport> {
    ensure!(
        !run.join("config.json").exists(),
        "{}: already holds a run (config.json exists); choose a new folder",
        run.display()
    );
    let device = Device::flex();
    let (model, net) = load(dir, &device)?;
    let layout = params::layout(&net);
    drop(net);
    let run_config = RunConfig {
        model: model.config.clone(),
        diffusion: model.diffusion.clone().unwrap_or_default(),
        train: TrainConfig {
            data: data.to_string(),
            ..Default::default()
        },
    };
    run_config.save(run)?;
    let state = TrainState::new(model.weights.clone());
    let meta = CheckpointMeta::fresh();
    let checkpoint = save_checkpoint(run, &layout, &state, &meta, 1)?;
    Ok(ImportReport {
        model,
        run_config,
        checkpoint,
    })
}

/// What [`export_run`] wrote.
#[derive(Debug)]
pub struct ExportReport {
    /// The checkpoint read.
    pub checkpoint: PathBuf,
    /// Its step.
    pub step: u64,
    /// The files written.
    pub files: Vec<PathBuf>,
}

/// Writes a run's latest checkpoint as a diffusers folder: `config.json`,
/// `diffusion_pytorch_model.safetensors` (EMA weights, or the raw ones with `ema = false`) and
/// `scheduler_config.json`, which `UNet2DModel.from_pretrained(out)` and
/// `DDPMScheduler.from_pretrained(out)` load.
pub fn export_run(run: &Path, out: &Path, ema: bool) -> Result<ExportReport> {
    let config = RunConfig::load(run)?;
    let unet_json = unet_config_to_diffusers(&config.model)?;
    let opened = Run::open(run)?;
    let ckpt = opened.latest_checkpoint()?;
    let (_, model, step) = opened.model(&Device::flex(), ema)?;
    let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = params::collect(&model)
        .into_iter()
        .map(|p| {
            if is_linear_weight(&p.name, &p.shape) {
                // burn [in, out] → PyTorch [out, in].
                (
                    our_name_to_diffusers(&p.name),
                    vec![p.shape[1], p.shape[0]],
                    transpose(&p.values, p.shape[0], p.shape[1]),
                )
            } else {
                (our_name_to_diffusers(&p.name), p.shape, p.values)
            }
        })
        .collect();
    let refs: Vec<(String, Vec<usize>, &[f32])> = tensors
        .iter()
        .map(|(n, s, v)| (n.clone(), s.clone(), v.as_slice()))
        .collect();
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let bytes = tensorfile::f32_tensors_to_bytes(&refs, Some(metadata))?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let files = vec![
        out.join(CONFIG_FILE),
        out.join(WEIGHTS_SAFETENSORS),
        out.join(SCHEDULER_FILE),
    ];
    tensorfile::write_atomic(
        &files[0],
        serde_json::to_string_pretty(&unet_json)?.as_bytes(),
    )?;
    tensorfile::write_atomic(&files[1], &bytes)?;
    tensorfile::write_atomic(
        &files[2],
        serde_json::to_string_pretty(&scheduler_to_diffusers(&config.diffusion))?.as_bytes(),
    )?;
    Ok(ExportReport {
        checkpoint: ckpt,
        step,
        files,
    })
}

/// True for the weight of a dense layer, which PyTorch stores `[out, in]` and burn `[in, out]`
/// (an embedding table is `[rows, dim]` in both).
fn is_linear_weight(name: &str, shape: &[usize]) -> bool {
    shape.len() == 2 && !name.starts_with("class_embedding.")
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

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture_like() -> Value {
        json!({
            "_class_name": "UNet2DModel",
            "act_fn": "silu",
            "attention_head_dim": null,
            "block_out_channels": [32, 64],
            "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
            "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
            "downsample_padding": 0,
            "flip_sin_to_cos": false,
            "freq_shift": 1,
            "in_channels": 3,
            "out_channels": 3,
            "layers_per_block": 1,
            "norm_eps": 1e-6,
            "norm_num_groups": 8,
            "sample_size": 16,
        })
    }

    #[test]
    fn config_maps_both_ways() {
        let c = unet_config_from_diffusers(&fixture_like()).unwrap();
        assert_eq!(c.channel_mult, vec![1, 2]);
        assert_eq!(c.attention_resolutions, vec![8]);
        let back = unet_config_from_diffusers(&unet_config_to_diffusers(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        for preset in ["cifar10", "small28", "tiny"] {
            let c = UNetConfig::preset(preset).unwrap();
            let back = unet_config_from_diffusers(&unet_config_to_diffusers(&c).unwrap()).unwrap();
            assert_eq!(back, c, "{preset}");
        }
    }

    #[test]
    fn refused_settings_are_named() {
        let cases: Vec<(&str, Value, &str)> = vec![
            (
                "down_block_types",
                json!(["DownBlock2D", "CrossAttnDownBlock2D"]),
                "down_block_types",
            ),
            (
                "up_block_types",
                json!(["UpBlock2D", "UpBlock2D"]),
                "up_block_types",
            ),
            ("class_embed_type", json!("timestep"), "class_embed_type"),
            ("num_class_embeds", json!(0), "num_class_embeds"),
            (
                "time_embedding_type",
                json!("fourier"),
                "time_embedding_type",
            ),
            ("flip_sin_to_cos", json!(true), "flip_sin_to_cos"),
            ("block_out_channels", json!([32, 48]), "block_out_channels"),
            ("norm_num_groups", json!(7), "divisible"),
            ("attn_norm_num_groups", json!(4), "attn_norm_num_groups"),
            ("attention_head_dim", json!(8), "attention_head_dim"),
            ("out_channels", json!(5), "out_channels"),
            (
                "resnet_time_scale_shift",
                json!("scale_shift"),
                "resnet_time_scale_shift",
            ),
            ("some_future_setting", json!(3), "some_future_setting"),
            (
                "_class_name",
                json!("UNet2DConditionModel"),
                "UNet2DConditionModel",
            ),
        ];
        for (key, value, needle) in cases {
            let mut j = fixture_like();
            j[key] = value;
            let err = format!("{:#}", unet_config_from_diffusers(&j).unwrap_err());
            assert!(err.contains(needle), "{key}: {err}");
        }
        // sample_size as [h, w]: square only.
        let mut j = fixture_like();
        j["sample_size"] = json!([16, 16]);
        assert_eq!(unet_config_from_diffusers(&j).unwrap().image_size, 16);
        j["sample_size"] = json!([16, 32]);
        let err = unet_config_from_diffusers(&j).unwrap_err().to_string();
        assert!(err.contains("`sample_size` = [16,32]"), "{err}");
        // An omitted setting takes diffusers' default, which may be one ddpm refuses.
        let mut j = fixture_like();
        j.as_object_mut().unwrap().remove("attention_head_dim");
        let err = unet_config_from_diffusers(&j).unwrap_err().to_string();
        assert!(err.contains("`attention_head_dim` = 8"), "{err}");
        // The attention width as the head size is one head too.
        let mut j = fixture_like();
        j["attention_head_dim"] = json!(64);
        assert!(unet_config_from_diffusers(&j).is_ok());
    }

    #[test]
    fn scheduler_maps_both_ways() {
        let d = DiffusionConfig::default();
        let (back, notes) = diffusion_from_scheduler(&scheduler_to_diffusers(&d)).unwrap();
        assert_eq!(back, d);
        assert!(notes.is_empty());
        let cos = DiffusionConfig {
            num_timesteps: 4000,
            schedule: BetaSchedule::cosine(),
            variance: VarianceType::Learned,
            prediction: Prediction::V,
            ..Default::default()
        };
        assert_eq!(
            diffusion_from_scheduler(&scheduler_to_diffusers(&cos))
                .unwrap()
                .0,
            cos
        );
        let explicit = DiffusionConfig {
            num_timesteps: 3,
            schedule: BetaSchedule::Explicit {
                betas: vec![0.1, 0.2, 0.3],
            },
            ..Default::default()
        };
        assert_eq!(
            diffusion_from_scheduler(&scheduler_to_diffusers(&explicit))
                .unwrap()
                .0,
            explicit
        );
        // google/ddpm-cifar10-32's scheduler_config.json (diffusers 0.1-era keys).
        let (d, _) = diffusion_from_scheduler(&json!({
            "_class_name": "DDPMScheduler", "beta_end": 0.02, "beta_schedule": "linear",
            "beta_start": 0.0001, "clip_sample": true, "num_train_timesteps": 1000,
            "trained_betas": null, "variance_type": "fixed_small"
        }))
        .unwrap();
        assert_eq!(d.variance, VarianceType::Small);
        assert_eq!(d.schedule, BetaSchedule::linear());
        // scaled_linear: the square of a linear ramp of √β.
        let (d, _) = diffusion_from_scheduler(&json!({
            "beta_schedule": "scaled_linear", "beta_start": 0.0001, "beta_end": 0.0009,
            "num_train_timesteps": 3
        }))
        .unwrap();
        let b = d.schedule.betas(3);
        assert!(
            (b[1] - 0.0004).abs() < 1e-15 && (b[2] - 0.0009).abs() < 1e-15,
            "{b:?}"
        );
        for (key, value) in [
            ("prediction_type", json!("flow")),
            ("variance_type", json!("learned")),
            ("beta_schedule", json!("sigmoid")),
            ("thresholding", json!(true)),
            ("rescale_betas_zero_snr", json!(true)),
        ] {
            let mut j = scheduler_to_diffusers(&DiffusionConfig::default());
            j[key] = value;
            let err = diffusion_from_scheduler(&j).unwrap_err().to_string();
            assert!(err.contains(key), "{key}: {err}");
        }
    }

    #[test]
    fn legacy_torch_save_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("diffusion_pytorch_model.bin");
        // What torch.save(..., _use_new_zipfile_serialization=False) starts with.
        std::fs::write(&p, b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.").unwrap();
        let err = read_weights(&p).unwrap_err().to_string();
        assert!(
            err.contains("legacy") && err.contains("diffusion_pytorch_model.bin"),
            "{err}"
        );
        std::fs::write(&p, b"").unwrap();
        let err = read_weights(&p).unwrap_err().to_string();
        assert!(err.contains("empty or truncated"), "{err}");
    }

    #[test]
    fn names_map_both_ways() {
        let old = "down_blocks.1.attentions.0.proj_attn.weight";
        assert_eq!(
            diffusers_name_to_ours(old),
            "down_blocks.1.attentions.0.to_out.weight"
        );
        assert_eq!(
            diffusers_name_to_ours("mid_block.attentions.0.query.bias"),
            "mid_block.attentions.0.to_q.bias"
        );
        let new = "up_blocks.0.attentions.2.to_out.0.weight";
        assert_eq!(our_name_to_diffusers(&diffusers_name_to_ours(new)), new);
    }
}
