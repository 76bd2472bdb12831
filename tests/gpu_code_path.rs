//! Every command on burn's generic ops (`--kernels burn`), the code a GPU device runs: nothing
//! here may depend on this crate's CPU kernels. Each command runs in f32 and, where it takes
//! it, with `--precision bf16` (casts around burn's ops, as on a GPU). A GPU is not needed;
//! `ddpm selftest --device cuda` and `scripts/gpu-check.sh` run the same commands there.

mod common;

use std::path::Path;
use std::process::Command;

fn ddpm(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_ddpm"))
        .args(["--kernels", "burn", "--threads", "2"])
        .args(args)
        .output()
        .expect("run ddpm");
    assert!(
        out.status.success(),
        "ddpm {}:\n{}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn every_command_runs_on_burns_ops_in_f32_and_bf16() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let png = d.join("out.png");
    for precision in ["f32", "bf16"] {
        let run = d.join(format!("run-{precision}"));
        let p = ["--precision", precision];
        // Train (class-conditional, with attention), then resume.
        let train = [
            "train",
            "--run",
            s(&run),
            "--preset",
            "tiny",
            "--timesteps",
            "100",
            "--steps",
            "2",
            "--batch-size",
            "4",
            "--preview-count",
            "2",
            "--class-cond",
            "--quiet",
        ];
        ddpm(&[&p[..], &train[..]].concat());
        ddpm(
            &[
                &p[..],
                &["train", "--resume", s(&run), "--steps", "3", "--quiet"],
            ]
            .concat(),
        );
        // Every sampler, the corrector and classifier-free guidance.
        for extra in [
            &["--sampler", "ddpm"][..],
            &[
                "--sampler",
                "ddim",
                "--steps",
                "4",
                "--eta",
                "1",
                "--corrector-steps",
                "1",
            ],
            &[
                "--sampler",
                "dpm-solver++",
                "--steps",
                "4",
                "--cfg-scale",
                "2",
            ],
            &["--sampler", "heun", "--steps", "3", "--class", "3"],
        ] {
            let args = ["sample", "--run", s(&run), "--n", "2", "--out", s(&png)];
            ddpm(&[&p[..], &args[..], extra].concat());
        }
        // Latents.
        let lat = d.join("latents.safetensors");
        let enc = [
            "encode",
            "--run",
            s(&run),
            "--n",
            "2",
            "--steps",
            "4",
            "--out",
            s(&lat),
        ];
        ddpm(&[&p[..], &enc[..]].concat());
        let interp = [
            "interpolate",
            "--run",
            s(&run),
            "--a",
            "0",
            "--b",
            "1",
            "--frames",
            "3",
            "--steps",
            "4",
            "--out",
            s(&png),
        ];
        ddpm(&[&p[..], &interp[..]].concat());
        // A noisy classifier, then classifier guidance with it.
        let cls = d.join(format!("cls-{precision}"));
        let ctrain = [
            "classifier",
            "train",
            "--run",
            s(&cls),
            "--timesteps",
            "100",
            "--steps",
            "2",
            "--batch-size",
            "4",
            "--quiet",
        ];
        ddpm(&[&p[..], &ctrain[..]].concat());
        let guided = [
            "sample",
            "--run",
            s(&run),
            "--n",
            "2",
            "--sampler",
            "ddim",
            "--steps",
            "3",
            "--classifier",
            s(&cls),
            "--guidance-scale",
            "2",
            "--out",
            s(&png),
        ];
        ddpm(&[&p[..], &guided[..]].concat());
        // The bound, and the benchmark.
        let nll = [
            "eval",
            "nll",
            "--run",
            s(&run),
            "--n",
            "1",
            "--batch-size",
            "1",
        ];
        ddpm(&[&p[..], &nll[..]].concat());
        let bench = [
            "bench",
            "--preset",
            "tiny",
            "--batch-size",
            "2",
            "--iters",
            "1",
        ];
        ddpm(&[&p[..], &bench[..]].concat());
    }
    // FID with the Inception network on burn's ops (f32 always).
    match common::fixture("fid-inception/fid_inception_v3_tf2015_pool3.safetensors") {
        Some(weights) => {
            let run = d.join("run-f32");
            ddpm(&[
                "eval",
                "fid",
                "--run",
                s(&run),
                "--n",
                "4",
                "--steps",
                "3",
                "--split",
                "train",
                "--inception",
                s(&weights),
            ]);
        }
        None => println!("no FID Inception weights among the fixtures: eval fid not run here"),
    }
}
