//! Run directories and atomic checkpoints.
//!
//! ```text
//! RUN/config.json                      model + diffusion + training configuration (written first)
//! RUN/checkpoints/step-0001000/        model.safetensors, ema.safetensors,
//!                                      optimizer.safetensors (adam_m.*, adam_v.*), state.json
//! RUN/checkpoints/latest               name of the newest complete checkpoint
//! RUN/samples/step-0001000.png         preview grids from the EMA weights
//! RUN/log.csv                          step, loss, lr, grad_norm, images/s, wall time
//! ```
//! A checkpoint is written into a temporary folder, every file fsynced, then renamed into place;
//! only then is `latest` replaced (also atomically). Killing the process at any moment leaves
//! the previous checkpoint intact and `latest` pointing at a complete one.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};

use super::optim::TrainState;
use crate::diffusion::DiffusionConfig;
use crate::model::UNetConfig;
use crate::tensorfile::{f32_tensors_to_bytes, read_f32_tensors, sync_dir, write_atomic};

use super::trainer::TrainConfig;

/// Everything needed to rebuild model, diffusion and data of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    /// The network.
    pub model: UNetConfig,
    /// The diffusion process.
    pub diffusion: DiffusionConfig,
    /// Data and optimisation.
    pub train: TrainConfig,
}

impl RunConfig {
    /// Reads `RUN/config.json`.
    pub fn load(run: &Path) -> Result<Self> {
        let p = run.join("config.json");
        let text = fs::read_to_string(&p).with_context(|| {
            format!(
                "{}: cannot read (is {} a run directory?)",
                p.display(),
                run.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("{}: invalid run config", p.display()))
    }

    /// Writes `RUN/config.json` atomically.
    pub fn save(&self, run: &Path) -> Result<()> {
        fs::create_dir_all(run).with_context(|| format!("creating {}", run.display()))?;
        write_atomic(
            &run.join("config.json"),
            serde_json::to_string_pretty(self)?.as_bytes(),
        )
    }
}

/// Scalar state saved with every checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// Optimisation steps completed.
    pub step: u64,
    /// Training wall time so far, seconds.
    pub wall_seconds: f64,
    /// Images seen.
    pub images_seen: u64,
    /// Smoothed loss at save time (NaN when unknown: JSON writes it as null).
    #[serde(deserialize_with = "nan_if_null")]
    pub loss: f64,
}

/// Reads a number written by serde_json, where NaN was written as `null`.
fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

impl CheckpointMeta {
    /// The state of a run that has not taken a step.
    pub fn fresh() -> Self {
        CheckpointMeta {
            step: 0,
            wall_seconds: 0.0,
            images_seen: 0,
            loss: f64::NAN,
        }
    }
}

/// A step progress bar for a training loop (`label` names the loop), starting at `step`.
pub fn step_progress_bar(label: &str, target: u64, step: u64) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new(if target == u64::MAX { 0 } else { target });
    pb.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{{spinner}} {label} [{{elapsed_precise}} < {{eta_precise}}] {{bar:30}} step {{pos}}/{{len}} {{msg}}"
        ))
        .unwrap(),
    );
    pb.set_position(step);
    pb
}

/// Folder name of the checkpoint at `step`.
pub fn checkpoint_name(step: u64) -> String {
    format!("step-{step:07}")
}

fn named(prefix: &str, names: &[String], shapes: &[Vec<usize>], values: &[Vec<f32>]) -> Vec<u8> {
    let items: Vec<(String, Vec<usize>, &[f32])> = names
        .iter()
        .zip(shapes)
        .zip(values)
        .map(|((n, s), v)| (format!("{prefix}{n}"), s.clone(), v.as_slice()))
        .collect();
    f32_tensors_to_bytes(&items, None).expect("serialising tensors")
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))?;
    f.sync_all()?;
    Ok(())
}

/// Writes a checkpoint atomically and points `latest` at it; keeps the newest `keep`.
pub fn save_checkpoint(
    run: &Path,
    layout: &[(String, Vec<usize>)],
    state: &TrainState,
    meta: &CheckpointMeta,
    keep: usize,
) -> Result<PathBuf> {
    let dir = run.join("checkpoints");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = checkpoint_name(meta.step);
    let final_dir = dir.join(&name);
    let tmp = dir.join(format!(".tmp-{name}-{}", std::process::id()));
    if tmp.exists() {
        fs::remove_dir_all(&tmp)?;
    }
    fs::create_dir_all(&tmp)?;
    let names: Vec<String> = layout.iter().map(|(n, _)| n.clone()).collect();
    let shapes: Vec<Vec<usize>> = layout.iter().map(|(_, s)| s.clone()).collect();
    write_synced(
        &tmp.join("model.safetensors"),
        &named("", &names, &shapes, &state.params),
    )?;
    write_synced(
        &tmp.join("ema.safetensors"),
        &named("", &names, &shapes, &state.ema),
    )?;
    let mut opt_names: Vec<String> = names.iter().map(|n| format!("adam_m.{n}")).collect();
    opt_names.extend(names.iter().map(|n| format!("adam_v.{n}")));
    let mut opt_shapes = shapes.clone();
    opt_shapes.extend(shapes.iter().cloned());
    let mut opt_vals = state.m.clone();
    opt_vals.extend(state.v.iter().cloned());
    write_synced(
        &tmp.join("optimizer.safetensors"),
        &named("", &opt_names, &opt_shapes, &opt_vals),
    )?;
    write_synced(
        &tmp.join("state.json"),
        serde_json::to_string_pretty(meta)?.as_bytes(),
    )?;
    sync_dir(&tmp);
    if final_dir.exists() {
        // Re-saving the same step (e.g. after a resume with no progress): replace it.
        let old = dir.join(format!(".old-{name}-{}", std::process::id()));
        fs::rename(&final_dir, &old)?;
        fs::rename(&tmp, &final_dir)?;
        fs::remove_dir_all(&old).ok();
    } else {
        fs::rename(&tmp, &final_dir)?;
    }
    sync_dir(&dir);
    write_atomic(&dir.join("latest"), name.as_bytes())?;
    prune(&dir, keep)?;
    Ok(final_dir)
}

fn prune(dir: &Path, keep: usize) -> Result<()> {
    let latest = fs::read_to_string(dir.join("latest")).unwrap_or_default();
    let mut steps: Vec<String> = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("step-"))
        .collect();
    steps.sort();
    let excess = steps.len().saturating_sub(keep.max(1));
    for n in steps.into_iter().take(excess) {
        if n != latest.trim() {
            fs::remove_dir_all(dir.join(&n)).ok();
        }
    }
    Ok(())
}

/// The newest complete checkpoint of a run, if any.
pub fn latest_checkpoint(run: &Path) -> Result<Option<PathBuf>> {
    let latest = run.join("checkpoints").join("latest");
    if !latest.exists() {
        return Ok(None);
    }
    let name =
        fs::read_to_string(&latest).with_context(|| format!("reading {}", latest.display()))?;
    let dir = run.join("checkpoints").join(name.trim());
    ensure!(
        dir.join("state.json").exists(),
        "{}: names {} which is incomplete or missing",
        latest.display(),
        dir.display()
    );
    Ok(Some(dir))
}

/// Reads one weights file and checks it against the model layout, in layout order.
pub fn load_weights(
    path: &Path,
    layout: &[(String, Vec<usize>)],
    prefix: &str,
) -> Result<Vec<Vec<f32>>> {
    let tensors = read_f32_tensors(path)?;
    let mut by_name: HashMap<String, (Vec<usize>, Vec<f32>)> =
        tensors.into_iter().map(|(n, s, v)| (n, (s, v))).collect();
    let mut out = Vec::with_capacity(layout.len());
    for (name, shape) in layout {
        let key = format!("{prefix}{name}");
        let Some((s, v)) = by_name.remove(&key) else {
            bail!(
                "{}: no tensor `{key}` — the checkpoint does not match the model in config.json",
                path.display()
            );
        };
        ensure!(
            &s == shape,
            "{}: `{key}` has shape {s:?} but the model in config.json needs {shape:?}",
            path.display()
        );
        out.push(v);
    }
    if let Some(extra) = by_name.keys().find(|k| k.starts_with(prefix)) {
        bail!(
            "{}: unexpected tensor `{extra}` — the checkpoint does not match the model in config.json",
            path.display()
        );
    }
    Ok(out)
}

/// Loads a whole training state from a checkpoint folder.
pub fn load_checkpoint(
    dir: &Path,
    layout: &[(String, Vec<usize>)],
) -> Result<(TrainState, CheckpointMeta)> {
    let meta_path = dir.join("state.json");
    let meta: CheckpointMeta = serde_json::from_str(
        &fs::read_to_string(&meta_path)
            .with_context(|| format!("reading {}", meta_path.display()))?,
    )
    .with_context(|| format!("{}: invalid checkpoint state", meta_path.display()))?;
    let params = load_weights(&dir.join("model.safetensors"), layout, "")?;
    let ema = load_weights(&dir.join("ema.safetensors"), layout, "")?;
    let m = load_weights(&dir.join("optimizer.safetensors"), layout, "adam_m.")?;
    let v = load_weights(&dir.join("optimizer.safetensors"), layout, "adam_v.")?;
    Ok((
        TrainState {
            params,
            ema,
            m,
            v,
            step: meta.step,
        },
        meta,
    ))
}
