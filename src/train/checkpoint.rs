//! Run directories and atomic checkpoints.
//!
//! ```text
//! RUN/config.json                      model + diffusion + training configuration (written first)
//! RUN/checkpoints/step-0001000/        model.safetensors, ema.safetensors,
//!                                      optimizer.safetensors (adam_m.*, adam_v.*), state.json
//! RUN/checkpoints/latest               name of the newest complete checkpoint
//! RUN/samples/step-0001000.png         preview grids from the EMA weights
//! RUN/log.csv                          step, loss, … (the task's columns), wall time
//! RUN/loss.png                         the loss column of log.csv, redrawn at every checkpoint
//! RUN/checkpoints/damaged-step-0002000 a checkpoint found unreadable on resume, set aside
//! ```
//! A checkpoint is written into a temporary folder, every file fsynced, then renamed into place;
//! only then is `latest` replaced (also atomically). Killing the process at any moment leaves
//! the previous checkpoint intact and `latest` pointing at a complete one. Should a checkpoint
//! still be damaged later (a truncated copy, a disk error), resuming passes over it to the
//! newest one that reads completely ([`load_newest_intact`]).

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};

use super::optim::TrainState;
use crate::tensorfile::{f32_tensors_to_bytes, read_f32_tensors, sync_dir, write_atomic};

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
    /// The task's own state beyond weights and optimiser (e.g. the importance sampler's loss
    /// history), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_state: Option<serde_json::Value>,
    /// The convolution algorithm chosen per shape (`kernels::tune`), pinned again on resume so
    /// that the resumed run computes with the same kernels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_choices: Option<std::collections::BTreeMap<String, String>>,
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
            task_state: None,
            kernel_choices: None,
        }
    }
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

/// The step of a checkpoint folder name (`step-0001000` → 1000).
pub fn checkpoint_step(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("step-")?;
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// Every checkpoint folder of a run (`checkpoints/step-N`), newest first; temporary folders
/// of interrupted saves and set-aside damaged ones are not included.
pub fn list_checkpoints(run: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let dir = run.join("checkpoints");
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut out: Vec<(u64, PathBuf)> = fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            checkpoint_step(&name).map(|s| (s, e.path()))
        })
        .collect();
    out.sort_by_key(|b| std::cmp::Reverse(b.0));
    Ok(out)
}

/// Checks a checkpoint folder completely: `state.json`, and every tensor of the three weight
/// files against `layout`; its step must match the folder name.
pub fn check_checkpoint(dir: &Path, layout: &[(String, Vec<usize>)]) -> Result<CheckpointMeta> {
    let (_, meta) = load_checkpoint(dir, layout)?;
    verify_step(dir, &meta)?;
    Ok(meta)
}

fn verify_step(dir: &Path, meta: &CheckpointMeta) -> Result<()> {
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if let Some(s) = checkpoint_step(name) {
        ensure!(
            s == meta.step,
            "{}: says step {} but the folder is {name}",
            dir.join("state.json").display(),
            meta.step
        );
    }
    Ok(())
}

/// The checkpoint a run resumes from: the newest that loads completely.
pub struct Resumable {
    /// Its folder.
    pub dir: PathBuf,
    /// Weights, EMA, moments, step.
    pub state: TrainState,
    /// Its scalar state.
    pub meta: CheckpointMeta,
    /// Newer checkpoint folders that could not be read, with what was wrong (newest first).
    pub skipped: Vec<(PathBuf, String)>,
}

/// Loads the newest checkpoint of `run` that reads completely against `layout`, passing over
/// newer ones that are damaged (truncated or corrupt tensor files, unreadable `state.json`).
/// When none loads, the error lists every checkpoint and its problem.
pub fn load_newest_intact(run: &Path, layout: &[(String, Vec<usize>)]) -> Result<Resumable> {
    let all = list_checkpoints(run)?;
    ensure!(
        !all.is_empty(),
        "{}: no checkpoint to resume from",
        run.join("checkpoints").display()
    );
    let mut skipped = Vec::new();
    for (_, dir) in all {
        let loaded = load_checkpoint(&dir, layout)
            .and_then(|(state, meta)| verify_step(&dir, &meta).map(|_| (state, meta)));
        match loaded {
            Ok((state, meta)) => {
                return Ok(Resumable {
                    dir,
                    state,
                    meta,
                    skipped,
                });
            }
            Err(e) => skipped.push((dir, format!("{e:#}"))),
        }
    }
    let list: Vec<String> = skipped
        .iter()
        .map(|(d, e)| format!("  {}: {e}", d.display()))
        .collect();
    bail!(
        "no checkpoint of {} can be read:\n{}",
        run.display(),
        list.join("\n")
    )
}

/// Moves a damaged checkpoint folder to `checkpoints/damaged-step-N` (or `…-2`, `…-3` when
/// taken), out of the way of resuming and pruning but kept for inspection.
pub fn set_aside(dir: &Path) -> Result<PathBuf> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("step");
    let mut target = parent.join(format!("damaged-{name}"));
    let mut k = 2;
    while target.exists() {
        target = parent.join(format!("damaged-{name}-{k}"));
        k += 1;
    }
    fs::rename(dir, &target)
        .with_context(|| format!("moving {} to {}", dir.display(), target.display()))?;
    sync_dir(parent);
    Ok(target)
}

/// Points `RUN/checkpoints/latest` at the checkpoint folder `dir` (atomically).
pub fn point_latest_at(run: &Path, dir: &Path) -> Result<()> {
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{}: not a checkpoint folder", dir.display()))?;
    write_atomic(&run.join("checkpoints").join("latest"), name.as_bytes())
}
