//! `ddpm sample --out-dir DIR --npz FILE`: one PNG per image and the `.npz` hold the same
//! bytes, in the layouts external evaluators read.

use std::path::Path;
use std::process::Command;

use burn::tensor::Device;
use ddpm::diffusion::DiffusionConfig;
use ddpm::model::UNetConfig;
use ddpm::params;
use ddpm::train::checkpoint::{CheckpointMeta, save_checkpoint};
use ddpm::train::optim::TrainState;
use ddpm::train::{RunConfig, TrainConfig};

fn make_run(run: &Path, model: UNetConfig) {
    let config = RunConfig {
        model,
        diffusion: DiffusionConfig::default(),
        train: TrainConfig::default(),
    };
    config.save(run).unwrap();
    let net = config.model.init(&Device::flex());
    let layout = params::layout(&net);
    let mut values: Vec<Vec<f32>> = params::collect(&net)
        .into_iter()
        .map(|p| p.values)
        .collect();
    // Random weights give ε of order 0, so images are mostly noise: make the output layer
    // non-zero so the pictures are not all one value either way.
    for v in values.iter_mut() {
        if v.iter().all(|&x| x == 0.0) {
            v.iter_mut()
                .enumerate()
                .for_each(|(i, x)| *x = ((i % 7) as f32 - 3.0) * 0.01);
        }
    }
    let state = TrainState::new(values);
    save_checkpoint(run, &layout, &state, &CheckpointMeta::fresh(), 1).unwrap();
}

fn ddpm(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ddpm"))
        .args(args)
        .output()
        .expect("run ddpm");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn pngs_and_npz_hold_the_same_images() {
    let dir = tempfile::tempdir().unwrap();
    for (name, model, channels) in [
        ("grey", UNetConfig::tiny(16, 1), 1usize),
        ("rgb", UNetConfig::tiny(16, 3), 3),
    ] {
        let run = dir.path().join(name);
        make_run(&run, model);
        let pngs = dir.path().join(format!("{name}-pngs"));
        let npz = dir.path().join(format!("{name}.npz"));
        let grid = dir.path().join(format!("{name}.png"));
        let (ok, out) = ddpm(&[
            "sample",
            "--run",
            run.to_str().unwrap(),
            "--n",
            "5",
            "--sampler",
            "ddim",
            "--steps",
            "2",
            "--out",
            grid.to_str().unwrap(),
            "--out-dir",
            pngs.to_str().unwrap(),
            "--npz",
            npz.to_str().unwrap(),
        ]);
        assert!(ok, "{out}");
        assert!(grid.exists() && out.contains("wrote 5 PNGs"), "{out}");
        let (shape, arr) = ddpm::output::read_npz_u8(&npz, "arr_0").unwrap();
        assert_eq!(shape, vec![5, 16, 16, channels]);
        let mut names: Vec<String> = std::fs::read_dir(&pngs)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        names.sort();
        assert_eq!(
            names,
            (0..5).map(|i| format!("{i:06}.png")).collect::<Vec<_>>()
        );
        for (i, n) in names.iter().enumerate() {
            let img = image::open(pngs.join(n)).unwrap();
            let bytes = if channels == 1 {
                img.as_luma8().expect("grey PNG").as_raw().clone()
            } else {
                img.as_rgb8().expect("RGB PNG").as_raw().clone()
            };
            assert_eq!(
                bytes,
                arr[i * 256 * channels..(i + 1) * 256 * channels],
                "{n}"
            );
        }
        // Not all one value (the images are real samples).
        assert!(arr.iter().any(|&v| v != arr[0]));
        // A folder that already holds PNGs is refused (stale images would be evaluated).
        let (ok, out) = ddpm(&[
            "sample",
            "--run",
            run.to_str().unwrap(),
            "--n",
            "1",
            "--sampler",
            "ddim",
            "--steps",
            "1",
            "--out",
            grid.to_str().unwrap(),
            "--out-dir",
            pngs.to_str().unwrap(),
        ]);
        assert!(!ok && out.contains("already holds 5 PNG files"), "{out}");
    }
}
