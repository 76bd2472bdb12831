//! The kernel autotuner and training runs (its own test binary: the tuner is process-wide):
//! a run records the convolution algorithms it used in its checkpoints (forward passes, input
//! and weight gradients), and a resumed run computes with the recorded ones, whatever the
//! machine would pick now; with every convolution on Winograd, a resumed run equals an
//! uninterrupted one bit for bit.

mod common;
use common::final_state;
use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::Device;
use ddpm::diffusion::DiffusionConfig;
use ddpm::kernels::tune;
use ddpm::model::UNetConfig;
use ddpm::train::checkpoint::{CheckpointMeta, latest_checkpoint};
use ddpm::train::optim::OptimConfig;
use ddpm::train::{RunConfig, TrainConfig, Trainer};

fn config(steps: u64) -> RunConfig {
    let mut model = UNetConfig::tiny(28, 1);
    model.base_channels = 8;
    RunConfig {
        model,
        diffusion: DiffusionConfig::default(),
        train: TrainConfig {
            data: "mnist5k".into(),
            batch_size: 4,
            max_steps: Some(steps),
            optim: OptimConfig {
                warmup_steps: 1,
                ..Default::default()
            },
            sample_every: 0,
            checkpoint_every: 2,
            preview_count: 0,
            ..Default::default()
        },
    }
}

fn meta_of(run: &Path) -> (std::path::PathBuf, CheckpointMeta) {
    let state = latest_checkpoint(run).unwrap().unwrap().join("state.json");
    let meta = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    (state, meta)
}

#[test]
fn checkpoints_record_the_kernel_choices_and_resume_pins_them() {
    if !ddpm::kernels::direct::available() {
        println!("no AVX-512 here: the tuner only measures Winograd against the GEMM");
    }
    tune::enable(None);
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let device = Device::flex();
    Trainer::create(&run, config(2), &device)
        .unwrap()
        .train()
        .unwrap();
    let (state, mut meta) = meta_of(&run);
    let recorded = meta
        .kernel_choices
        .clone()
        .expect("no kernel choices recorded");
    // Forward, input-gradient and weight-gradient shapes of the tiny U-Net, batch 4.
    assert!(recorded.len() >= 6, "{recorded:?}");
    assert!(recorded.keys().all(|k| k.ends_with(" b4")), "{recorded:?}");
    assert!(
        recorded.keys().any(|k| k.starts_with("dW ")),
        "{recorded:?}"
    );
    assert_eq!(recorded, tune::snapshot());

    // Change every recorded choice, as if the run had been tuned on another machine: resuming
    // must compute with the changed ones, not with this process's.
    let changed: BTreeMap<String, String> = recorded
        .iter()
        .map(|(k, v)| {
            let other = match (k.starts_with("dW "), v.as_str()) {
                (true, "gemm") => "winograd",
                (true, _) => "gemm",
                (false, "gemm") => "winograd",
                (false, _) => "gemm",
            };
            (k.clone(), other.to_string())
        })
        .collect();
    meta.kernel_choices = Some(changed.clone());
    std::fs::write(&state, serde_json::to_string(&meta).unwrap()).unwrap();
    let mut resumed = Trainer::resume(&run, &device, |tc| tc.max_steps = Some(4)).unwrap();
    let now = tune::snapshot();
    for (k, v) in &changed {
        assert_eq!(&now[k], v, "{k}");
    }
    resumed.train().unwrap();
    let after = meta_of(&run).1.kernel_choices.unwrap();
    for (k, v) in &changed {
        assert_eq!(&after[k], v, "{k}");
    }

    // Every convolution of these shapes on Winograd (forward, input and weight gradients):
    // 2 steps + resume + 2 steps ≡ 4 uninterrupted steps, bit for bit.
    let winograd: BTreeMap<String, String> = recorded
        .keys()
        .map(|k| (k.clone(), "winograd".to_string()))
        .collect();
    tune::pin(&winograd);
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    Trainer::create(&a, config(4), &device)
        .unwrap()
        .train()
        .unwrap();
    Trainer::create(&b, config(2), &device)
        .unwrap()
        .train()
        .unwrap();
    Trainer::resume(&b, &device, |tc| tc.max_steps = Some(4))
        .unwrap()
        .train()
        .unwrap();
    assert_eq!(meta_of(&b).1.kernel_choices.unwrap(), winograd);
    let (sa, sb) = (final_state(&a), final_state(&b));
    assert_eq!((sa.step, sb.step), (4, 4));
    let bits = |v: &Vec<Vec<f32>>| v.iter().flatten().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert!(bits(&sa.params) == bits(&sb.params), "weights differ");
    assert!(bits(&sa.ema) == bits(&sb.ema), "EMA differs");
    assert!(bits(&sa.m) == bits(&sb.m), "Adam moments differ");
}
