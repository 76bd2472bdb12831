//! `ddpm selftest`: the device checks of `ddpm::selftest`, as a table; fails on any FAIL.

use super::prelude::*;

#[derive(Args)]
pub(crate) struct SelftestArgs {
    /// Samples for the Algorithm 2 and DDIM checks (exact ε* of Gaussian data, docs/math.md §20);
    /// the tolerances are 5 standard errors of this count.
    #[arg(long, default_value_t = 50_000)]
    pub(crate) samples: usize,
    /// Samples for the classifier-guidance check (the exact mixture classifier, docs/math.md §13, §20.3).
    #[arg(long, default_value_t = 10_000)]
    pub(crate) guided_samples: usize,
}

pub(crate) fn cmd_selftest(a: SelftestArgs, device: &Device, name: &str) -> Result<()> {
    if a.samples < 100 || a.guided_samples < 100 {
        bail!("--samples and --guided-samples must be at least 100 (the tolerances assume many)");
    }
    println!("selftest: device `{name}` ({device:?}) against the CPU");
    if uses_tf32(name) {
        println!(
            "(f32 products on this device run on TF32 tensor cores: the network rows use the \
             TF32 tolerances, docs in ddpm::selftest::Tolerances)"
        );
    }
    let config = ddpm::selftest::SelftestConfig {
        gaussian_samples: a.samples,
        guided_samples: a.guided_samples,
        tf32: uses_tf32(name),
        ..Default::default()
    };
    let (rows, secs) = ddpm::selftest::run_and_print(device, &config)?;
    let failed = rows.iter().filter(|r| !r.pass).count();
    println!(
        "{} checks, {} passed, {} failed ({secs:.1} s)",
        rows.len(),
        rows.len() - failed,
        failed
    );
    if failed > 0 {
        bail!("selftest: {failed} check(s) failed on device `{name}`");
    }
    Ok(())
}

/// Whether `name` is a CUDA device, whose f32 matrix products burn runs on TF32 tensor cores.
fn uses_tf32(name: &str) -> bool {
    matches!(
        name.parse::<ddpm::device::DeviceSpec>(),
        Ok(ddpm::device::DeviceSpec::Cuda(_))
    )
}
