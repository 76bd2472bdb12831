//! Every command on burn's generic ops (`--kernels burn`), the code a GPU device runs: nothing
//! here may depend on this crate's CPU kernels. Each command runs in f32 and, where it takes
//! it, with `--precision bf16` (casts around burn's ops, as on a GPU). A GPU is not needed;
//! `ddpm selftest --device cuda` and `scripts/gpu-check.sh` run the same commands there.

mod common;

use std::process::Command;

/// Runs `ddpm --kernels burn ARGS` (ARGS split at spaces; the temporary paths have none).
fn ddpm(args: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_ddpm"))
        .args(["--kernels", "burn", "--threads", "2"])
        .args(args.split_whitespace())
        .output()
        .expect("run ddpm");
    assert!(
        out.status.success(),
        "ddpm {args}:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_command_runs_on_burns_ops_in_f32_and_bf16() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    assert!(!d.to_string().contains(' '));
    for p in ["f32", "bf16"] {
        let run = format!("{d}/run-{p}");
        let cls = format!("{d}/cls-{p}");
        let png = format!("{d}/out.png");
        let lat = format!("{d}/latents.safetensors");
        // Train (class-conditional, with attention), then resume.
        ddpm(&format!(
            "--precision {p} train --run {run} --preset tiny --timesteps 100 --steps 2 \
             --batch-size 4 --preview-count 2 --class-cond --quiet"
        ));
        ddpm(&format!(
            "--precision {p} train --resume {run} --steps 3 --quiet"
        ));
        // Every sampler, the corrector and classifier-free guidance.
        for extra in [
            "--sampler ddpm",
            "--sampler ddim --steps 4 --eta 1 --corrector-steps 1",
            "--sampler dpm-solver++ --steps 4 --cfg-scale 2",
            "--sampler heun --steps 3 --class 3",
        ] {
            ddpm(&format!(
                "--precision {p} sample --run {run} --n 2 --out {png} {extra}"
            ));
        }
        // Latents.
        ddpm(&format!(
            "--precision {p} encode --run {run} --n 2 --steps 4 --out {lat}"
        ));
        ddpm(&format!(
            "--precision {p} interpolate --run {run} --a 0 --b 1 --frames 3 --steps 4 --out {png}"
        ));
        // A noisy classifier, then classifier guidance with it.
        ddpm(&format!(
            "--precision {p} classifier train --run {cls} --timesteps 100 --steps 2 \
             --batch-size 4 --quiet"
        ));
        ddpm(&format!(
            "--precision {p} sample --run {run} --n 2 --sampler ddim --steps 3 \
             --classifier {cls} --guidance-scale 2 --out {png}"
        ));
        // The bound, and the benchmark.
        ddpm(&format!(
            "--precision {p} eval nll --run {run} --n 1 --batch-size 1"
        ));
        ddpm(&format!(
            "--precision {p} bench --preset tiny --batch-size 2 --iters 1"
        ));
    }
    // FID with the Inception network on burn's ops (f32 always).
    match common::fixture("fid-inception/fid_inception_v3_tf2015_pool3.safetensors") {
        Some(weights) => ddpm(&format!(
            "eval fid --run {d}/run-f32 --n 4 --steps 3 --split train --inception {}",
            weights.display()
        )),
        None => println!("no FID Inception weights among the fixtures: eval fid not run here"),
    }
}
