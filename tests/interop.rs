//! diffusers interoperability: export → import round trips (identical weights and ε), the
//! PyTorch `.bin` reader against a file written by `torch.save`, and clear errors for bad
//! folders.

use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use ddpm::diffusers::{self, export_run, import_run};
use ddpm::diffusion::{DiffusionConfig, Prediction, VarianceType};
use ddpm::model::UNetConfig;
use ddpm::params;
use ddpm::schedule::BetaSchedule;
use ddpm::train::checkpoint::{CheckpointMeta, save_checkpoint};
use ddpm::train::optim::TrainState;
use ddpm::train::{Run, RunConfig, TrainConfig};

fn load_run_model(
    run: &Path,
    device: &Device,
    ema: bool,
) -> anyhow::Result<(RunConfig, ddpm::model::UNet, u64)> {
    Run::open(run)?.model(device, ema)
}

/// A run whose raw and EMA weights differ, with a non-default diffusion (cosine β, v
/// prediction, learned variance: 6 output channels) and a class embedding, at step 7.
fn make_run(run: &Path) -> (RunConfig, Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let config = RunConfig {
        model: UNetConfig {
            out_channels: Some(6),
            num_class_embeds: Some(4),
            ..UNetConfig::tiny(16, 3)
        },
        diffusion: DiffusionConfig {
            num_timesteps: 500,
            schedule: BetaSchedule::cosine(),
            variance: VarianceType::Learned,
            prediction: Prediction::V,
            ..Default::default()
        },
        train: TrainConfig::default(),
    };
    config.save(run).unwrap();
    let model = config.model.init(&Device::flex());
    let layout = params::layout(&model);
    let raw: Vec<Vec<f32>> = params::collect(&model)
        .into_iter()
        .map(|p| p.values)
        .collect();
    // EMA: different values everywhere (the zero-initialised output layers included).
    let ema: Vec<Vec<f32>> = raw
        .iter()
        .enumerate()
        .map(|(k, v)| {
            v.iter()
                .enumerate()
                .map(|(i, x)| 0.5 * x + 1e-3 * ((k * 31 + i) % 17) as f32)
                .collect()
        })
        .collect();
    let mut state = TrainState::new(raw.clone());
    state.ema = ema.clone();
    state.step = 7;
    let meta = CheckpointMeta {
        step: 7,
        wall_seconds: 1.0,
        images_seen: 28,
        loss: 0.5,
        task_state: None,
        kernel_choices: None,
    };
    save_checkpoint(run, &layout, &state, &meta, 2).unwrap();
    (config, raw, ema)
}

fn eps_of(run: &Path, ema: bool, x: &[f32]) -> Vec<f32> {
    let device = Device::flex();
    let (_, model, _) = load_run_model(run, &device, ema).unwrap();
    let x = Tensor::<4>::from_data(TensorData::new(x.to_vec(), [2, 3, 16, 16]), &device);
    model
        .forward_with(x, &[3.0, 420.0], Some(&[1, 3]), false)
        .into_data()
        .try_into_vec()
        .unwrap()
}

fn weights_of(run: &Path, ema: bool) -> Vec<Vec<f32>> {
    let (_, model, _) = load_run_model(run, &Device::flex(), ema).unwrap();
    params::collect(&model)
        .into_iter()
        .map(|p| p.values)
        .collect()
}

#[test]
fn export_then_import_gives_identical_weights_and_eps() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let (config, raw, ema) = make_run(&run);
    let x: Vec<f32> = (0..2 * 3 * 16 * 16)
        .map(|i| ((i * 7919) % 200) as f32 / 100.0 - 1.0)
        .collect();

    for (use_ema, want) in [(true, &ema), (false, &raw)] {
        let out = dir.path().join(format!("exported-{use_ema}"));
        let report = export_run(&run, &out, use_ema).unwrap();
        assert_eq!(report.step, 7);
        // diffusers' names and PyTorch's [out, in] layout in the file.
        let file =
            ddpm::tensorfile::read_f32_tensors(&out.join(diffusers::WEIGHTS_SAFETENSORS)).unwrap();
        let q = file
            .iter()
            .find(|(n, _, _)| n == "down_blocks.1.attentions.0.to_out.0.weight")
            .expect("to_out.0 in the exported file");
        assert_eq!(q.1, vec![32, 32]);
        let temb = file
            .iter()
            .find(|(n, _, _)| n == "time_embedding.linear_1.weight")
            .unwrap();
        assert_eq!(temb.1, vec![64, 16], "[out, in]");
        // nn.Embedding's table is [rows, dim], not transposed.
        let emb = file
            .iter()
            .find(|(n, _, _)| n == "class_embedding.weight")
            .unwrap();
        assert_eq!(emb.1, vec![4, 64]);
        let json: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.join(diffusers::CONFIG_FILE)).unwrap(),
        )
        .unwrap();
        assert_eq!(json["block_out_channels"], serde_json::json!([16, 32]));
        assert_eq!(
            json["down_block_types"],
            serde_json::json!(["DownBlock2D", "AttnDownBlock2D"])
        );
        let sched: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.join(diffusers::SCHEDULER_FILE)).unwrap(),
        )
        .unwrap();
        assert_eq!(sched["beta_schedule"], "squaredcos_cap_v2");
        assert_eq!(sched["variance_type"], "learned_range");
        assert_eq!(sched["prediction_type"], "v_prediction");
        assert_eq!(json["out_channels"], 6);
        assert_eq!(json["num_class_embeds"], 4);
        assert_eq!(sched["num_train_timesteps"], 500);

        let back = dir.path().join(format!("imported-{use_ema}"));
        let r = import_run(&out, &back, "mnist5k").unwrap();
        assert!(r.model.files.scheduler.is_some());
        let imported = RunConfig::load(&back).unwrap();
        assert_eq!(imported.model, config.model);
        assert_eq!(imported.diffusion, config.diffusion);
        // Raw and EMA of the imported run are both the exported weights, bit for bit.
        assert_eq!(&weights_of(&back, true), want);
        assert_eq!(&weights_of(&back, false), want);
        // Same ε on the same input.
        assert_eq!(eps_of(&back, true, &x), eps_of(&run, use_ema, &x));
        // Exporting the imported run gives the same files' tensors again.
        let again = dir.path().join(format!("again-{use_ema}"));
        export_run(&back, &again, true).unwrap();
        let file2 = ddpm::tensorfile::read_f32_tensors(&again.join(diffusers::WEIGHTS_SAFETENSORS))
            .unwrap();
        assert_eq!(file, file2);
    }
    assert_ne!(
        eps_of(&run, true, &x),
        eps_of(&run, false, &x),
        "raw and EMA must differ for the test to mean anything"
    );
}

#[test]
fn torch_save_archive_reads_known_values() {
    // tests/data/torch_save_state_dict.bin: written by torch.save (PyTorch 2.15) from a state
    // dict; scripts/make-fixtures.py (`--torch-save-sample`) writes it again.
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/torch_save_state_dict.bin");
    let t = diffusers::read_weights(&p).unwrap();
    let get = |n: &str| {
        let (_, s, v) = t
            .iter()
            .find(|(k, _, _)| k == n)
            .unwrap_or_else(|| panic!("{n}"));
        (s.clone(), v.clone())
    };
    let names: Vec<&str> = t.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "bf16",
            "double",
            "half",
            "lin.bias",
            "lin.weight",
            "norm.bias",
            "norm.running_mean",
            "norm.running_var",
            "norm.weight",
            "view.offset2"
        ],
        "float tensors only (num_batches_tracked is int64), sorted"
    );
    assert_eq!(
        get("lin.weight"),
        (
            vec![2, 3],
            [
                -0.004322517663240433,
                0.3097158372402191,
                -0.4751853346824646,
                -0.4248946011066437,
                -0.2223689705133438,
                0.15482072532176971
            ]
            .map(|x: f64| x as f32)
            .to_vec()
        )
    );
    assert_eq!(get("view.offset2"), (vec![3], vec![1.0, 1.5, 2.0]));
    assert_eq!(
        get("half"),
        (vec![4], vec![1.0, -2.0, 0.333_251_95, 65504.0])
    );
    assert_eq!(get("bf16"), (vec![2], vec![1.0, -3.140625]));
    assert_eq!(get("double"), (vec![1, 2], vec![0.1, 0.2]));
}

#[test]
fn bad_folders_give_errors_naming_file_and_setting() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    make_run(&run);
    let good = dir.path().join("good");
    export_run(&run, &good, true).unwrap();
    let err = |src: &Path| {
        let target = dir.path().join(format!("t-{}", rand_name()));
        format!("{:#}", import_run(src, &target, "mnist5k").unwrap_err())
    };

    // Missing folder, missing config, missing weights: the paths looked at.
    let e = err(&dir.path().join("nowhere"));
    assert!(e.contains("nowhere") && e.contains("no such folder"), "{e}");
    let bad = copy_of(&good, dir.path(), "no-config");
    std::fs::remove_file(bad.join("config.json")).unwrap();
    let e = err(&bad);
    assert!(
        e.contains("config.json") && e.contains("unet/config.json"),
        "{e}"
    );
    let bad = copy_of(&good, dir.path(), "no-weights");
    std::fs::remove_file(bad.join(diffusers::WEIGHTS_SAFETENSORS)).unwrap();
    let e = err(&bad);
    assert!(
        e.contains(diffusers::WEIGHTS_SAFETENSORS) && e.contains(diffusers::WEIGHTS_BIN),
        "{e}"
    );

    // A setting ddpm does not build: the file and the setting.
    for (key, value, needle) in [
        (
            "down_block_types",
            serde_json::json!(["DownBlock2D", "CrossAttnDownBlock2D"]),
            "CrossAttnDownBlock2D",
        ),
        ("norm_num_groups", serde_json::json!(3), "GroupNorm"),
        (
            "class_embed_type",
            serde_json::json!("timestep"),
            "class_embed_type",
        ),
        (
            "block_out_channels",
            serde_json::json!([16, 32, 64]),
            "block_out_channels",
        ),
    ] {
        let bad = copy_of(&good, dir.path(), key);
        let p = bad.join("config.json");
        let mut j: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        j[key] = value;
        std::fs::write(&p, j.to_string()).unwrap();
        let e = err(&bad);
        assert!(
            e.contains("config.json") && e.contains(needle),
            "{key}: {e}"
        );
    }
    // A scheduler ddpm cannot follow.
    let bad = copy_of(&good, dir.path(), "sched");
    let p = bad.join(diffusers::SCHEDULER_FILE);
    let mut j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    j["prediction_type"] = serde_json::json!("flow");
    std::fs::write(&p, j.to_string()).unwrap();
    let e = err(&bad);
    assert!(
        e.contains("scheduler_config.json") && e.contains("prediction_type"),
        "{e}"
    );
    // A fixed variance for a network with 2C outputs.
    j["prediction_type"] = serde_json::json!("epsilon");
    j["variance_type"] = serde_json::json!("fixed_small");
    std::fs::write(&p, j.to_string()).unwrap();
    let e = err(&bad);
    assert!(
        e.contains("`out_channels` = 6") && e.contains("fixed_small"),
        "{e}"
    );

    // Weights that do not fit config.json: a missing tensor, a wrong shape, a corrupt file.
    let w = good.join(diffusers::WEIGHTS_SAFETENSORS);
    let tensors = ddpm::tensorfile::read_f32_tensors(&w).unwrap();
    let write = |dst: &Path, t: &[(String, Vec<usize>, Vec<f32>)]| {
        let refs: Vec<(String, Vec<usize>, &[f32])> = t
            .iter()
            .map(|(n, s, v)| (n.clone(), s.clone(), v.as_slice()))
            .collect();
        std::fs::write(
            dst,
            ddpm::tensorfile::f32_tensors_to_bytes(&refs, None).unwrap(),
        )
        .unwrap();
    };
    let bad = copy_of(&good, dir.path(), "missing-tensor");
    let fewer: Vec<_> = tensors
        .iter()
        .filter(|(n, _, _)| n != "conv_out.bias")
        .cloned()
        .collect();
    write(&bad.join(diffusers::WEIGHTS_SAFETENSORS), &fewer);
    let e = err(&bad);
    assert!(
        e.contains("conv_out.bias") && e.contains(diffusers::WEIGHTS_SAFETENSORS),
        "{e}"
    );
    let bad = copy_of(&good, dir.path(), "wrong-shape");
    let mut reshaped = tensors.clone();
    for t in reshaped.iter_mut() {
        if t.0 == "conv_in.weight" {
            let n = t.2.len();
            t.1 = vec![n];
        }
    }
    write(&bad.join(diffusers::WEIGHTS_SAFETENSORS), &reshaped);
    let e = err(&bad);
    assert!(e.contains("conv_in.weight") && e.contains("shape"), "{e}");
    let bad = copy_of(&good, dir.path(), "corrupt");
    std::fs::write(
        bad.join(diffusers::WEIGHTS_SAFETENSORS),
        b"\x10\x00\x00\x00junk",
    )
    .unwrap();
    let e = err(&bad);
    assert!(e.contains(diffusers::WEIGHTS_SAFETENSORS), "{e}");

    // The target already holds a run; exporting a run without a checkpoint.
    let e = format!("{:#}", import_run(&good, &run, "mnist5k").unwrap_err());
    assert!(e.contains("already holds a run"), "{e}");
    let empty = dir.path().join("empty-run");
    RunConfig {
        model: UNetConfig::tiny(16, 3),
        diffusion: DiffusionConfig::default(),
        train: TrainConfig::default(),
    }
    .save(&empty)
    .unwrap();
    let e = format!(
        "{:#}",
        export_run(&empty, &dir.path().join("x"), true).unwrap_err()
    );
    assert!(e.contains("no checkpoint"), "{e}");
}

#[test]
fn pipeline_layout_with_unet_and_scheduler_folders() {
    // google/ddpm-cifar10-32's layout: unet/{config.json, weights}, scheduler/scheduler_config.json.
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    make_run(&run);
    let flat = dir.path().join("flat");
    export_run(&run, &flat, true).unwrap();
    let pipe = dir.path().join("pipe");
    std::fs::create_dir_all(pipe.join("unet")).unwrap();
    std::fs::create_dir_all(pipe.join("scheduler")).unwrap();
    for f in [diffusers::CONFIG_FILE, diffusers::WEIGHTS_SAFETENSORS] {
        std::fs::copy(flat.join(f), pipe.join("unet").join(f)).unwrap();
    }
    std::fs::copy(
        flat.join(diffusers::SCHEDULER_FILE),
        pipe.join("scheduler").join(diffusers::SCHEDULER_FILE),
    )
    .unwrap();
    for src in [pipe.clone(), pipe.join("unet")] {
        let files = diffusers::locate(&src).unwrap();
        assert_eq!(files.config, pipe.join("unet/config.json"));
        assert_eq!(
            files.scheduler,
            Some(pipe.join("scheduler/scheduler_config.json"))
        );
    }
    // Without a scheduler: the defaults of Ho et al., with the learned variance that the 2C
    // output channels imply.
    std::fs::remove_dir_all(pipe.join("scheduler")).unwrap();
    let back = dir.path().join("back");
    let r = import_run(&pipe, &back, "mnist5k").unwrap();
    assert!(r.model.files.scheduler.is_none());
    assert!(r.model.notes.iter().any(|n| n.contains("learned variance")));
    assert_eq!(
        RunConfig::load(&back).unwrap().diffusion,
        DiffusionConfig {
            variance: VarianceType::Learned,
            ..Default::default()
        }
    );
}

fn copy_of(src: &Path, parent: &Path, name: &str) -> std::path::PathBuf {
    let dst = parent.join(format!("copy-{name}"));
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    dst
}

fn rand_name() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::Relaxed).to_string()
}

/// diffusers' own ε against ddpm's, run by scripts/check-diffusers-interop.sh: DDPM_INTEROP_DIR
/// is a diffusers model folder with `reference_io.safetensors` (`x`, integer `t`, diffusers'
/// `eps`); the folder is loaded by ddpm, and DDPM_INTEROP_RUN, when set, is a run whose EMA
/// weights must give the same ε.
#[test]
fn diffusers_reference_io_when_given() {
    let Some(dir) = std::env::var_os("DDPM_INTEROP_DIR").map(std::path::PathBuf::from) else {
        println!("SKIP: DDPM_INTEROP_DIR is not set (scripts/check-diffusers-interop.sh sets it)");
        return;
    };
    let device = Device::flex();
    let files = diffusers::locate(&dir).unwrap();
    let io_path = files
        .config
        .parent()
        .unwrap()
        .join("reference_io.safetensors");
    let io = ddpm::tensorfile::read_f32_tensors(&io_path).unwrap();
    let get = |n: &str| io.iter().find(|(k, _, _)| k == n).unwrap().clone();
    let ((_, xs, x), (_, _, t), (_, _, eps)) = (get("x"), get("t"), get("eps"));
    let input = || {
        Tensor::<4>::from_data(
            TensorData::new(x.clone(), [xs[0], xs[1], xs[2], xs[3]]),
            &device,
        )
    };
    let max_abs = |out: Tensor<4>| {
        let out: Vec<f32> = out.into_data().try_into_vec().unwrap();
        out.iter()
            .zip(&eps)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max)
    };
    let scale = eps.iter().fold(0f32, |m, v| m.max(v.abs()));
    // Class labels, for class-conditional models.
    let y: Option<Vec<usize>> = io
        .iter()
        .find(|(k, _, _)| k == "y")
        .map(|(_, _, v)| v.iter().map(|&l| l as usize).collect());
    let (_, model) = diffusers::load_diffusers_unet(&dir, &device).unwrap();
    let err = max_abs(model.forward_with(input(), &t, y.as_deref(), false));
    println!(
        "{} ({}): t = {t:?}, max |eps| = {scale:.3}, max |eps_ddpm - eps_diffusers| = {err:.3e}",
        dir.display(),
        files.weights.file_name().unwrap().to_string_lossy()
    );
    assert!(err <= 1e-4, "{err}");
    if let Some(run) = std::env::var_os("DDPM_INTEROP_RUN").map(std::path::PathBuf::from) {
        let (_, model, step) = load_run_model(&run, &device, true).unwrap();
        let err = max_abs(model.forward_with(input(), &t, y.as_deref(), false));
        println!(
            "run {} (step {step}, EMA): max |eps_ddpm - eps_diffusers| = {err:.3e}",
            run.display()
        );
        assert!(err <= 1e-4, "{err}");
    }
}
