//! The command-line tool end to end: train, resume, sample (same seed ⇒ same bytes), inspect,
//! and clear errors for bad input.

use std::process::Command;

fn ddpm(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ddpm"))
        .args(args)
        .output()
        .expect("run ddpm");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn train_resume_sample_inspect() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let run_s = run.to_str().unwrap();
    let (ok, out, err) = ddpm(&[
        "train",
        "--run",
        run_s,
        "--preset",
        "tiny",
        "--steps",
        "3",
        "--batch-size",
        "4",
        "--preview-count",
        "4",
        "--sample-every",
        "0",
        "--quiet",
    ]);
    assert!(ok, "train failed: {out}\n{err}");
    for f in [
        "config.json",
        "log.csv",
        "checkpoints/latest",
        "checkpoints/step-0000003/ema.safetensors",
        "samples/step-0000003.png",
    ] {
        assert!(run.join(f).exists(), "missing {f}");
    }
    let (ok, out, err) = ddpm(&["train", "--resume", run_s, "--steps", "5", "--quiet"]);
    assert!(ok, "resume failed: {out}\n{err}");
    assert!(
        out.contains("from step 3") && out.contains("step 5"),
        "{out}"
    );

    let g1 = dir.path().join("g1.png");
    let g2 = dir.path().join("g2.png");
    let gif = dir.path().join("c.gif");
    for g in [&g1, &g2] {
        let (ok, out, err) = ddpm(&[
            "sample",
            "--run",
            run_s,
            "--n",
            "4",
            "--seed",
            "7",
            "--sampler",
            "ddim",
            "--steps",
            "5",
            "--out",
            g.to_str().unwrap(),
            "--chain",
            gif.to_str().unwrap(),
        ]);
        assert!(ok, "sample failed: {out}\n{err}");
    }
    assert_eq!(
        std::fs::read(&g1).unwrap(),
        std::fs::read(&g2).unwrap(),
        "same seed, different images"
    );
    assert!(std::fs::metadata(&gif).unwrap().len() > 100);

    let strip = dir.path().join("fwd.png");
    let (ok, out, _) = ddpm(&[
        "inspect",
        "--out",
        strip.to_str().unwrap(),
        "--t",
        "0,10,1000",
    ]);
    assert!(ok && strip.exists());
    assert!(out.contains("ᾱ_T = 4.0358e-5"), "{out}");
}

#[test]
fn bad_input_gives_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("r");
    let (ok, _, err) = ddpm(&[
        "train",
        "--run",
        run.to_str().unwrap(),
        "--data",
        "/no/such/dir",
        "--steps",
        "1",
    ]);
    assert!(!ok && err.contains("/no/such/dir"), "{err}");
    // A truncated IDX file in a data folder.
    let data = dir.path().join("idx");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(
        data.join("train-images-idx3-ubyte"),
        [0u8, 0, 8, 3, 0, 0, 0, 9, 0, 0, 0, 28, 0, 0, 0, 28, 1, 2, 3],
    )
    .unwrap();
    let (ok, _, err) = ddpm(&[
        "train",
        "--run",
        run.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--steps",
        "1",
    ]);
    assert!(
        !ok && err.contains("train-images-idx3-ubyte") && err.contains("truncated"),
        "{err}"
    );
    // A learning-rate decay needs to know its last step.
    let (ok, _, err) = ddpm(&[
        "train",
        "--run",
        run.to_str().unwrap(),
        "--minutes",
        "1",
        "--lr-schedule",
        "cosine",
    ]);
    assert!(
        !ok && err.contains("--steps") && err.contains("cosine"),
        "{err}"
    );
    // Sampling from a folder that is not a run.
    let (ok, _, err) = ddpm(&["sample", "--run", dir.path().to_str().unwrap()]);
    assert!(!ok && err.contains("config.json"), "{err}");
    // bf16 does not apply to commands without a U-Net (or, on a CPU without AVX512_BF16,
    // the missing feature is named).
    let (ok, _, err) = ddpm(&["inspect", "--precision", "bf16"]);
    assert!(
        !ok && err.contains("--precision bf16")
            && (err.contains("omit it") || err.contains("avx512bf16")),
        "{err}"
    );
    let (ok, _, err) = ddpm(&["sample", "--precision", "fp8"]);
    assert!(!ok && err.contains("fp8"), "{err}");
    // --help explains the commands.
    let (ok, out, _) = ddpm(&["--help"]);
    assert!(ok && out.contains("train") && out.contains("sample") && out.contains("demo"));
}

#[test]
fn resume_passes_over_a_damaged_checkpoint_and_inspect_reports_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let run_s = run.to_str().unwrap();
    let (ok, out, err) = ddpm(&[
        "train",
        "--run",
        run_s,
        "--preset",
        "tiny",
        "--steps",
        "4",
        "--batch-size",
        "4",
        "--checkpoint-every",
        "2",
        "--preview-count",
        "0",
        "--quiet",
    ]);
    assert!(ok, "train failed: {out}\n{err}");
    // loss.png is written next to log.csv and is a PNG.
    let png = std::fs::read(run.join("loss.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(image::load_from_memory(&png).is_ok());

    // Truncate the newest checkpoint's EMA file, as an interrupted copy would.
    let ema = run.join("checkpoints/step-0000004/ema.safetensors");
    let bytes = std::fs::read(&ema).unwrap();
    std::fs::write(&ema, &bytes[..100]).unwrap();

    // inspect --run shows config, steps, last loss, checkpoints with sizes and their state.
    let (ok, out, err) = ddpm(&["inspect", "--run", run_s]);
    assert!(ok, "inspect failed: {out}\n{err}");
    for want in [
        "diffusion model",
        "\"batch_size\": 4",
        "step-0000004",
        "damaged",
        "ema.safetensors",
        "step-0000002",
        "intact",
        "newest intact checkpoint: step 2",
        "last loss",
        "metrics.json: none",
        "loss.png",
    ] {
        assert!(out.contains(want), "missing `{want}` in:\n{out}");
    }
    assert!(out.contains(" KB") || out.contains(" MB"), "{out}");

    // --resume falls back to step 2 and says why.
    let (ok, out, err) = ddpm(&["train", "--resume", run_s, "--steps", "5", "--quiet"]);
    assert!(ok, "resume failed: {out}\n{err}");
    assert!(
        err.contains("step-0000004")
            && err.contains("ema.safetensors")
            && err.contains("newest intact checkpoint, step 2"),
        "{err}"
    );
    assert!(
        out.contains("from step 2") && out.contains("step 5"),
        "{out}"
    );

    // metrics.json is shown when present.
    std::fs::write(run.join("metrics.json"), r#"{"fid": {"ddim-50": 12.5}}"#).unwrap();
    let (ok, out, _) = ddpm(&["inspect", "--run", run_s]);
    assert!(
        ok && out.contains("12.5") && out.contains("step-0000005"),
        "{out}"
    );
    // A folder that is not a run is refused with the file named.
    let (ok, _, err) = ddpm(&["inspect", "--run", dir.path().to_str().unwrap()]);
    assert!(!ok && err.contains("config.json"), "{err}");
}

#[test]
fn class_conditional_training_and_guided_sampling_options() {
    // A class-conditional v-prediction model with a learned variance: trains, and every new
    // sampler and editing option runs on it; bad combinations are refused by name.
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let run_s = run.to_str().unwrap();
    let (ok, out, err) = ddpm(&[
        "train",
        "--run",
        run_s,
        "--preset",
        "tiny",
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--preview-count",
        "4",
        "--class-cond",
        "--prediction",
        "v",
        "--variance",
        "learned",
        "--loss",
        "min-snr",
        "--quiet",
    ]);
    assert!(ok, "train failed: {out}\n{err}");
    let cfg = std::fs::read_to_string(run.join("config.json")).unwrap();
    assert!(cfg.contains("\"num_class_embeds\": 11"), "{cfg}");
    assert!(cfg.contains("\"out_channels\": 2"), "{cfg}");
    assert!(cfg.contains("\"prediction\": \"v\""), "{cfg}");
    let png = dir.path().join("s.png");
    let png_s = png.to_str().unwrap();
    for extra in [
        vec![
            "--sampler",
            "dpm-solver++",
            "--steps",
            "3",
            "--class",
            "3",
            "--cfg-scale",
            "2",
        ],
        vec!["--sampler", "heun", "--steps", "2", "--cfg-scale", "0"],
        vec![
            "--sampler",
            "ddim",
            "--steps",
            "3",
            "--spacing",
            "karras",
            "--class",
            "1",
        ],
    ] {
        let mut args = vec!["sample", "--run", run_s, "--n", "4", "--out", png_s];
        args.extend(extra.iter());
        let (ok, out, err) = ddpm(&args);
        assert!(ok, "{extra:?}: {out}\n{err}");
        assert!(png.exists());
    }
    // SDEdit and inpainting from image files.
    let img = dir.path().join("img.png");
    let mask = dir.path().join("mask.png");
    image::GrayImage::from_fn(28, 28, |x, _| image::Luma([(x * 9) as u8]))
        .save(&img)
        .unwrap();
    image::GrayImage::from_fn(28, 28, |x, _| image::Luma([if x < 14 { 255 } else { 0 }]))
        .save(&mask)
        .unwrap();
    let (ok, out, err) = ddpm(&[
        "sample",
        "--run",
        run_s,
        "--n",
        "2",
        "--out",
        png_s,
        "--sampler",
        "ddim",
        "--steps",
        "4",
        "--init",
        img.to_str().unwrap(),
        "--strength",
        "0.5",
    ]);
    assert!(ok && out.contains("SDEdit"), "{out}\n{err}");
    let (ok, out, err) = ddpm(&[
        "sample",
        "--run",
        run_s,
        "--n",
        "2",
        "--out",
        png_s,
        "--sampler",
        "ddim",
        "--steps",
        "4",
        "--inpaint",
        img.to_str().unwrap(),
        "--mask",
        mask.to_str().unwrap(),
        "--resample",
        "2",
    ]);
    assert!(ok && out.contains("50% of pixels known"), "{out}\n{err}");
    // Refused: a class beyond the model's, a learned variance switched off, an unknown sampler.
    for (args, needle) in [
        (vec!["--class", "10"], "the model has 10 classes"),
        (vec!["--variance", "small"], "learned variance"),
        (vec!["--sampler", "euler"], "unknown sampler `euler`"),
        (
            vec!["--strength", "1.5", "--init", img.to_str().unwrap()],
            "--strength 1.5",
        ),
    ] {
        let mut all = vec!["sample", "--run", run_s, "--n", "1", "--out", png_s];
        all.extend(args.iter());
        let (ok, out, err) = ddpm(&all);
        assert!(!ok && err.contains(needle), "{args:?}: {out}\n{err}");
    }
}

/// The instruction-set levels of the kernels (src/kernels/simd.rs) compute the same bits where
/// they run the same algorithms: two training steps with every convolution on im2col + GEMM
/// write byte-identical checkpoints at each level this CPU has. A `DDPM_SIMD` that names no
/// level is a clear error.
#[test]
fn simd_levels_train_to_the_same_bytes() {
    use ddpm::kernels::simd::{SimdLevel, detected};
    let dir = tempfile::tempdir().unwrap();
    let train = |level: &str| {
        let run = dir.path().join(level);
        let out = Command::new(env!("CARGO_BIN_EXE_ddpm"))
            .env("DDPM_SIMD", level)
            .args(["--threads", "1", "--kernels", "gemm", "train", "--run"])
            .arg(&run)
            .args(["--preset", "tiny", "--steps", "2", "--batch-size", "4"])
            .args(["--preview-count", "0", "--quiet"])
            .output()
            .expect("run ddpm");
        (out, run.join("checkpoints").join("step-0000002"))
    };
    let levels: Vec<&str> = [SimdLevel::Baseline, SimdLevel::Avx2, SimdLevel::Avx512]
        .into_iter()
        .filter(|&l| l <= detected())
        .map(|l| l.name())
        .collect();
    let mut first: Option<(&str, std::path::PathBuf)> = None;
    for level in levels {
        let (out, ckpt) = train(level);
        assert!(
            out.status.success(),
            "DDPM_SIMD={level}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        match &first {
            None => first = Some((level, ckpt)),
            Some((l0, c0)) => {
                for f in [
                    "model.safetensors",
                    "ema.safetensors",
                    "optimizer.safetensors",
                ] {
                    assert!(
                        std::fs::read(c0.join(f)).unwrap() == std::fs::read(ckpt.join(f)).unwrap(),
                        "{f} differs between DDPM_SIMD={l0} and DDPM_SIMD={level}"
                    );
                }
            }
        }
    }
    let (out, _) = train("avx3");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("DDPM_SIMD=\"avx3\""), "{err}");
}
