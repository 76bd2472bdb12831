//! Which implementation runs the model's convolutions, normalisations and pools: chosen once
//! by the caller ([`set_policy`]; the CLI's `--kernels`), not read from the environment.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};

/// The kernels [`super::conv2d`], [`super::group_norm`] and the pools run on the CPU backend.
/// Other devices (wgpu) always use burn's ops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KernelPolicy {
    /// This crate's kernels; each stride-1 convolution runs on the fastest of im2col + GEMM,
    /// the direct kernel (AVX-512) and Winograd F(4×4, 3×3) (3×3 kernels), measured per shape
    /// on this machine once the tuner is on (`kernels::tune`; the CLI turns it on), by
    /// [`KernelPolicy::Rule`]'s limits before that.
    #[default]
    Auto,
    /// This crate's kernels, the direct kernel for stride-1 layers within a fixed size limit
    /// (≤ 64 output channels, C_in·k·k ≤ 576; tuned on a Zen 5 EPYC, BENCHMARKS.md), im2col +
    /// GEMM otherwise.
    Rule,
    /// This crate's kernels, every convolution as im2col + GEMM.
    Gemm,
    /// This crate's kernels, the direct kernel for every stride-1 convolution whatever its
    /// size (where AVX-512 is available; GEMM otherwise).
    Direct,
    /// This crate's kernels, Winograd F(4×4, 3×3) (Lavin & Gray 2016) for every stride-1 3×3
    /// convolution and its input gradient, [`KernelPolicy::Rule`] for the others.
    Winograd,
    /// burn's own ops everywhere (the "before" of BENCHMARKS.md).
    Burn,
}

impl KernelPolicy {
    /// Every policy, in the order of [`KernelPolicy::name`]'s documentation.
    pub const ALL: [KernelPolicy; 6] = [
        KernelPolicy::Auto,
        KernelPolicy::Rule,
        KernelPolicy::Gemm,
        KernelPolicy::Direct,
        KernelPolicy::Winograd,
        KernelPolicy::Burn,
    ];

    /// `auto`, `rule`, `gemm`, `direct`, `winograd` or `burn`.
    pub fn name(self) -> &'static str {
        match self {
            KernelPolicy::Auto => "auto",
            KernelPolicy::Rule => "rule",
            KernelPolicy::Gemm => "gemm",
            KernelPolicy::Direct => "direct",
            KernelPolicy::Winograd => "winograd",
            KernelPolicy::Burn => "burn",
        }
    }
}

impl fmt::Display for KernelPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for KernelPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        KernelPolicy::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                format!("unknown kernel policy `{s}` (auto, rule, gemm, direct, winograd or burn)")
            })
    }
}

static POLICY: AtomicU8 = AtomicU8::new(0);

/// Sets the kernel policy for the whole process (default [`KernelPolicy::Auto`]). Set it once
/// at start-up: tensors computed before and after a change used different kernels.
pub fn set_policy(policy: KernelPolicy) {
    let i = KernelPolicy::ALL.iter().position(|p| *p == policy).unwrap();
    POLICY.store(i as u8, Ordering::Relaxed);
}

/// The kernel policy in force.
pub fn policy() -> KernelPolicy {
    KernelPolicy::ALL[POLICY.load(Ordering::Relaxed) as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for p in KernelPolicy::ALL {
            assert_eq!(p.name().parse::<KernelPolicy>(), Ok(p));
        }
        let err = "fast".parse::<KernelPolicy>().unwrap_err();
        assert!(err.contains("fast") && err.contains("burn"), "{err}");
        assert_eq!(KernelPolicy::default(), KernelPolicy::Auto);
    }
}
