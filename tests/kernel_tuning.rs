//! The kernel autotuner and training runs (its own test binary: the tuner is process-wide):
//! a run records the convolution algorithms it used in its checkpoints, and a resumed run
//! computes with the recorded ones, whatever the machine would pick now.

use std::collections::BTreeMap;

use burn::tensor::Device;
use ddpm::diffusion::DiffusionConfig;
use ddpm::kernels::tune;
use ddpm::model::UNetConfig;
use ddpm::train::checkpoint::{CheckpointMeta, latest_checkpoint};
use ddpm::train::optim::OptimConfig;
use ddpm::train::{RunConfig, TrainConfig, Trainer};

#[test]
fn checkpoints_record_the_kernel_choices_and_resume_pins_them() {
    if !ddpm::kernels::direct::available() {
        println!("no AVX-512 here: every convolution is a GEMM, nothing to record");
        return;
    }
    tune::enable(None);
    let mut model = UNetConfig::tiny(28, 1);
    model.base_channels = 8;
    let config = RunConfig {
        model,
        diffusion: DiffusionConfig::default(),
        train: TrainConfig {
            data: "mnist5k".into(),
            batch_size: 4,
            max_steps: Some(2),
            optim: OptimConfig {
                warmup_steps: 1,
                ..Default::default()
            },
            sample_every: 0,
            checkpoint_every: 2,
            preview_count: 0,
            ..Default::default()
        },
    };
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let device = Device::flex();
    Trainer::create(&run, config, &device)
        .unwrap()
        .train()
        .unwrap();
    let state = latest_checkpoint(&run).unwrap().unwrap().join("state.json");
    let mut meta: CheckpointMeta =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    let recorded = meta
        .kernel_choices
        .clone()
        .expect("no kernel choices recorded");
    // Forward and input-gradient shapes of the tiny U-Net, batch 4.
    assert!(recorded.len() >= 4, "{recorded:?}");
    assert!(recorded.keys().all(|k| k.ends_with(" b4")), "{recorded:?}");
    assert_eq!(recorded, tune::snapshot());

    // Flip every recorded choice, as if the run had been tuned on another machine: resuming
    // must compute with the flipped ones, not with this process's.
    let flipped: BTreeMap<String, String> = recorded
        .iter()
        .map(|(k, v)| {
            let other = if v == "direct" { "gemm" } else { "direct" };
            (k.clone(), other.to_string())
        })
        .collect();
    meta.kernel_choices = Some(flipped.clone());
    std::fs::write(&state, serde_json::to_string(&meta).unwrap()).unwrap();
    let mut resumed = Trainer::resume(&run, &device, |tc| tc.max_steps = Some(4)).unwrap();
    let now = tune::snapshot();
    for (k, v) in &flipped {
        assert_eq!(&now[k], v, "{k}");
    }
    resumed.train().unwrap();
    let state = latest_checkpoint(&run).unwrap().unwrap().join("state.json");
    let meta: CheckpointMeta =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    let after = meta.kernel_choices.unwrap();
    for (k, v) in &flipped {
        assert_eq!(&after[k], v, "{k}");
    }
}
