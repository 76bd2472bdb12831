//! Helpers shared by the integration tests: where the reference fixtures are, the
//! discretised Gaussian data of the likelihood tests, and a training run's final state.

use std::path::{Path, PathBuf};

use ddpm::likelihood::standard_normal_cdf;

/// Mean and (n − 1) standard deviation of a sample.
#[allow(dead_code)]
pub fn moments(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0);
    (m, var.sqrt())
}

/// The fixtures folder: `$DDPM_FIXTURES` (what scripts/make-fixtures.sh writes), else the
/// project's `../shared/data`.
#[allow(dead_code)]
pub fn fixtures_root() -> PathBuf {
    match std::env::var_os("DDPM_FIXTURES") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data"),
    }
}

/// `ROOT/sub`, or None with a printed reason when it is absent.
#[allow(dead_code)]
pub fn fixture(sub: &str) -> Option<PathBuf> {
    let p = fixtures_root().join(sub);
    if p.exists() {
        Some(p)
    } else {
        println!(
            "SKIP: {} is absent (scripts/make-fixtures.sh OUT writes it; then set DDPM_FIXTURES=OUT)",
            p.display()
        );
        None
    }
}

/// Bin masses of N(m, s²) on the 256-level grid of [−1, 1], edge bins open.
#[allow(dead_code)]
pub fn discretised_gaussian(m: f64, s: f64) -> Vec<f64> {
    (0..256)
        .map(|k| {
            let x = k as f64 / 127.5 - 1.0;
            let hi = if k == 255 {
                1.0
            } else {
                standard_normal_cdf((x + 1.0 / 255.0 - m) / s)
            };
            let lo = if k == 0 {
                0.0
            } else {
                standard_normal_cdf((x - 1.0 / 255.0 - m) / s)
            };
            hi - lo
        })
        .collect()
}

/// The state in a training run's newest checkpoint (weights, EMA, Adam moments, step).
#[allow(dead_code)]
pub fn final_state(run: &Path) -> ddpm::train::optim::TrainState {
    use ddpm::train::checkpoint::{latest_checkpoint, load_checkpoint};
    let cfg = ddpm::train::RunConfig::load(run).unwrap();
    let layout = ddpm::params::layout(&cfg.model.init(&burn::tensor::Device::flex()));
    load_checkpoint(&latest_checkpoint(run).unwrap().unwrap(), &layout)
        .unwrap()
        .0
}
