//! `ddpm selftest --device cpu` end to end: every row passes and the table names each check.

use std::process::Command;

#[test]
fn selftest_on_the_cpu_passes_and_prints_the_table() {
    selftest_passes(&[]);
}

/// Under `--kernels burn` every operation goes through burn's ops, as on a GPU, including the
/// bf16 rows (casts around the convolutions and products), which need no AVX512_BF16 there.
#[test]
fn selftest_on_burn_ops_passes_with_the_bf16_rows() {
    let stdout = selftest_passes(&["--kernels", "burn"]);
    for row in ["U-Net ε in bf16", "bf16 in effect"] {
        let line = stdout
            .lines()
            .find(|l| l.contains(row))
            .unwrap_or_else(|| panic!("no row `{row}` in\n{stdout}"));
        assert!(line.ends_with("PASS"), "{line}");
    }
}

fn selftest_passes(flags: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ddpm"))
        .args(flags)
        .args(["selftest", "--device", "cpu"])
        .output()
        .expect("run ddpm");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "selftest failed:\n{stdout}\n{stderr}");
    println!("{stdout}");
    assert!(
        stdout.contains("check") && stdout.contains("tolerance"),
        "{stdout}"
    );
    for row in [
        "U-Net ε vs CPU",
        "Algorithm 2 (σ²=β̃), exact ε*",
        "DDIM-50 η=0, exact ε*",
        "guidance s=1, exact classifier",
        "seed 9 twice",
        "train step",
        "checkpoint written on device, loaded on CPU",
        "checkpoint written on CPU, loaded on device",
        "CPU: resumed run vs uninterrupted run",
    ] {
        let line = stdout
            .lines()
            .find(|l| l.contains(row))
            .unwrap_or_else(|| panic!("no row `{row}` in\n{stdout}"));
        assert!(line.ends_with("PASS"), "{line}");
    }
    assert!(!stdout.contains("FAIL"), "{stdout}");
    let summary = stdout.lines().find(|l| l.contains("checks,")).unwrap();
    assert!(summary.contains(", 0 failed"), "{summary}");
    stdout.into_owned()
}

#[test]
fn selftest_rejects_a_device_missing_from_the_build_with_a_clear_error() {
    // The default build has no GPU backend: the error must name the cargo feature.
    if cfg!(feature = "cuda") {
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_ddpm"))
        .args(["selftest", "--device", "cuda:0"])
        .output()
        .expect("run ddpm");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--features cuda") && !stderr.contains("panicked"),
        "{stderr}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_ddpm"))
        .args(["selftest", "--device", "tpu"])
        .output()
        .expect("run ddpm");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("unknown device `tpu`"),
        "{stderr}"
    );
}
