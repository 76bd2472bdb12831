//! `ddpm selftest`: checks that a compute device computes what the CPU computes, and that the
//! samplers running on it reproduce the exact answers of docs/math.md §20 (the same oracles as
//! `tests/samplers.rs`, with fewer samples so the whole test takes seconds on a CPU).
//!
//! Every check reports a measured value against a stated tolerance:
//! - the U-Net (the diffusers-fixture configuration of `tests/unet_reference.rs`, rebuilt in
//!   code with seeded weights) gives the same ε on the device as on the CPU within 1e-4 (1e-2
//!   on CUDA, whose f32 products run on TF32 tensor cores: [`Tolerances`]);
//! - Algorithm 2 (Ho et al. 2020) and DDIM η = 0 (Song et al. 2021) with the exact ε* of
//!   Gaussian data give the exact chain's mean and standard deviation within 5 standard errors
//!   of the sample count, and follow the CPU's trajectories sample for sample under the same
//!   host-seeded noise;
//! - classifier guidance with scale 1 and the exact mixture classifier (Dhariwal & Nichol 2021,
//!   docs/math.md §13, §20.3) gives the class-conditional distribution;
//! - one training step (Algorithm 1, then clipping, Adam and EMA: on a GPU as tensor
//!   operations on the device, `train::device_optim`; on the CPU on the host state) gives the
//!   CPU's loss, gradient and weights within float tolerance;
//! - the same seed gives the same samples twice; checkpoints move between the device and the
//!   CPU, and a resumed CPU run is bit-identical to an uninterrupted one.
//!
//! On the CPU itself the device-versus-CPU rows measure 0 and the statistical rows still test
//! the samplers, which is what CI runs.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use burn::tensor::{Device, Tensor, TensorData};
use rand::{SeedableRng, rngs::StdRng};
use rand_distr::{Distribution, StandardNormal};

use crate::diffusion::{Denoiser, DiffusionConfig, GaussianDiffusion, VarianceType};
use crate::kernels::Precision;
use crate::model::UNetConfig;
use crate::oracle::{
    GaussianMixtureOracle, GaussianOracle, exact_ancestral_moments, exact_ddim_moments,
};
use crate::sampling::{
    Ancestral, Ddim, Guidance, LoopOptions, NoiseSource, Sampler, Spacing, sample,
    sample_loop_with, timestep_subsequence,
};
use crate::train::optim::TrainState;
use crate::train::{OptimConfig, RunConfig, TrainConfig, Trainer};

/// One row of the table.
#[derive(Clone, Debug)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// The measured value, formatted.
    pub measured: String,
    /// The tolerance, formatted.
    pub tolerance: String,
    /// Whether the measured value is within the tolerance.
    pub pass: bool,
}

impl Check {
    /// A check that `value ≤ tol` (scientific notation).
    fn at_most(name: impl Into<String>, value: f64, tol: f64) -> Self {
        Check {
            name: name.into(),
            measured: format!("{value:.2e}"),
            tolerance: format!("≤ {tol:.1e}"),
            pass: value <= tol,
        }
    }

    /// A check that `|value − want| ≤ tol`.
    fn near(name: impl Into<String>, value: f64, want: f64, tol: f64) -> Self {
        Check {
            name: name.into(),
            measured: format!("{value:.4} (exact {want:.4})"),
            tolerance: format!("± {tol:.4}"),
            pass: (value - want).abs() <= tol,
        }
    }

    /// A check that two byte strings are identical.
    fn identical(name: impl Into<String>, same: bool, what: &str) -> Self {
        Check {
            name: name.into(),
            measured: if same { "identical" } else { "different" }.to_string(),
            tolerance: what.to_string(),
            pass: same,
        }
    }
}

/// Sample counts and sizes of the checks.
#[derive(Clone, Debug)]
pub struct SelftestConfig {
    /// Samples for Algorithm 2 and DDIM with the Gaussian oracle.
    pub gaussian_samples: usize,
    /// Samples for classifier guidance (the mixture oracle runs on the host).
    pub guided_samples: usize,
    /// Images per training step.
    pub batch_size: usize,
    /// The device multiplies f32 matrices on TF32 tensor cores (burn's CUDA backend on NVIDIA
    /// GPUs since Ampere: its matmul and convolution kernels round f32 operands to TF32's
    /// 10-bit mantissa, as PyTorch's cuDNN convolutions do by default). The network rows then
    /// use [`Tolerances::tf32`].
    pub tf32: bool,
}

/// Tolerances of the rows that run the network (the sampler and determinism rows use exact
/// oracles without matrix products and keep theirs).
#[derive(Clone, Copy, Debug)]
pub struct Tolerances {
    /// U-Net ε against the CPU, max abs (|ε| is about 1).
    pub eps: f64,
    /// Training step: loss, relative.
    pub loss: f64,
    /// Training step: gradient, ‖Δg‖/‖g‖.
    pub grad: f64,
    /// Training step and cross-device resumes: weights, ‖Δw‖/‖w − w_prev‖.
    pub weights: f64,
}

impl Tolerances {
    /// f32 arithmetic throughout: only summation order differs from the CPU.
    pub fn f32() -> Self {
        Tolerances {
            eps: 1e-4,
            loss: 1e-4,
            grad: 1e-3,
            weights: 1e-2,
        }
    }

    /// TF32 products (unit roundoff 2⁻¹¹ ≈ 4.9e-4 per operand, f32 sums): about 10× the
    /// rounding of f32's summation-order differences through the 20-odd layers, and still 100×
    /// below what a wrong layer or a wrong weight gives (errors of order |ε|).
    pub fn tf32() -> Self {
        Tolerances {
            eps: 1e-2,
            loss: 1e-2,
            grad: 3e-2,
            weights: 5e-2,
        }
    }
}

impl SelftestConfig {
    /// The tolerances of the network rows on this device.
    pub fn tolerances(&self) -> Tolerances {
        if self.tf32 {
            Tolerances::tf32()
        } else {
            Tolerances::f32()
        }
    }
}

impl Default for SelftestConfig {
    fn default() -> Self {
        SelftestConfig {
            gaussian_samples: 50_000,
            guided_samples: 10_000,
            batch_size: 8,
            tf32: false,
        }
    }
}

/// Runs every check on `device` against the CPU, calling `on_check` as each row is ready.
pub fn run(
    device: &Device,
    config: &SelftestConfig,
    mut on_check: impl FnMut(&Check),
) -> Result<Vec<Check>> {
    let cpu = Device::flex();
    let mut rows = Vec::new();
    let mut push = |c: Check, rows: &mut Vec<Check>| {
        on_check(&c);
        rows.push(c);
    };
    for c in unet_checks(device, &cpu, config.tolerances()) {
        push(c, &mut rows);
    }
    for c in sampler_checks(device, &cpu, config) {
        push(c, &mut rows);
    }
    for c in determinism_checks(device) {
        push(c, &mut rows);
    }
    for c in training_checks(device, &cpu, config)? {
        push(c, &mut rows);
    }
    Ok(rows)
}

/// The table: one line per check, then a summary line.
pub fn format_table(rows: &[Check]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{}", table_header());
    for r in rows {
        let _ = writeln!(s, "{}", table_row(r));
    }
    let failed = rows.iter().filter(|r| !r.pass).count();
    let _ = writeln!(
        s,
        "{} checks, {} passed, {} failed",
        rows.len(),
        rows.len() - failed,
        failed
    );
    s
}

/// The header line of the table.
pub fn table_header() -> String {
    format!(
        "{:<58} {:<26} {:<22} result",
        "check", "measured", "tolerance"
    )
}

/// One line of the table.
pub fn table_row(r: &Check) -> String {
    format!(
        "{:<58} {:<26} {:<22} {}",
        r.name,
        r.measured,
        r.tolerance,
        if r.pass { "PASS" } else { "FAIL" }
    )
}

fn to_vec(x: Tensor<4>) -> Vec<f32> {
    x.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 tensor")
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() as f64)
        .fold(0.0, f64::max)
}

fn moments(v: &[f32]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = v.iter().map(|&x| (x as f64 - m).powi(2)).sum::<f64>() / (n - 1.0);
    (m, var.sqrt())
}

/// Five standard errors of a sample mean and a sample standard deviation of `n` draws from a
/// normal distribution with standard deviation `s`: s/√n and s/√(2n).
fn five_se(s: f64, n: usize) -> (f64, f64) {
    let n = n as f64;
    (5.0 * s / n.sqrt(), 5.0 * s / (2.0 * n).sqrt())
}

/// The diffusers `UNet2DModel` fixture's configuration (tests/unet_reference.rs: two levels of
/// 32 and 64 channels, one block per level, attention at 8×8, 8 groups, 16×16×3 inputs).
pub fn diffusers_fixture_config() -> UNetConfig {
    UNetConfig {
        image_size: 16,
        in_channels: 3,
        base_channels: 32,
        channel_mult: vec![1, 2],
        num_res_blocks: 1,
        attention_resolutions: vec![8],
        dropout: 0.0,
        norm_groups: 8,
        norm_eps: 1e-6,
        out_channels: None,
        num_class_embeds: None,
    }
}

/// Seeded weights for every parameter of `config`: the initialiser's values plus noise of the
/// same scale, so that no layer is zero (the output convolution starts at zero) and the output
/// depends on every layer.
fn seeded_weights(config: &UNetConfig, seed: u64) -> Vec<Vec<f32>> {
    let cpu = Device::flex();
    let init = {
        let _rng = crate::device::rng_guard();
        cpu.seed(seed);
        config.init(&cpu)
    };
    let mut rng = StdRng::seed_from_u64(seed);
    crate::params::collect(&init)
        .into_iter()
        .map(|p| {
            let n = p.values.len() as f64;
            let rms = (p.values.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / n).sqrt();
            let scale = if rms > 0.0 { 0.5 * rms } else { 0.05 } as f32;
            p.values
                .iter()
                .map(|&x| {
                    let z: f32 = StandardNormal.sample(&mut rng);
                    x + scale * z
                })
                .collect()
        })
        .collect()
}

fn unet_checks(device: &Device, cpu: &Device, tol: Tolerances) -> Vec<Check> {
    let config = diffusers_fixture_config();
    let weights = seeded_weights(&config, 7);
    let count: usize = weights.iter().map(Vec::len).sum();
    let mut rows = vec![Check {
        name: "U-Net: diffusers fixture config rebuilt, parameters".into(),
        measured: count.to_string(),
        tolerance: "= 702499".into(),
        pass: count == 702_499,
    }];
    let x = NoiseSource::new(8).normal_vec(4 * 3 * 16 * 16);
    let t = [0usize, 250, 500, 999];
    let eps = |d: &Device| {
        let model = crate::params::assign(config.init(d), &weights, false);
        let x = Tensor::<4>::from_data(TensorData::new(x.clone(), [4, 3, 16, 16]), d);
        to_vec(Denoiser::forward(&model, x, &t, None))
    };
    let reference = eps(cpu);
    let on_device = eps(device);
    let scale = reference.iter().map(|v| v.abs() as f64).fold(0.0, f64::max);
    rows.push(Check::at_most(
        format!("U-Net ε vs CPU, max |Δε| (max |ε| = {scale:.2})"),
        max_abs_diff(&on_device, &reference),
        tol.eps,
    ));
    // `--precision bf16` where the device runs it: the CPU's AVX512_BF16 kernels, or bf16
    // operands through burn's ops on a GPU.
    match crate::kernels::check_precision(Precision::Bf16, device) {
        Ok(()) => {
            let bf16 = crate::kernels::with_precision(Precision::Bf16, || eps(device));
            rows.push(Check::at_most(
                "U-Net ε in bf16 (--precision bf16) vs CPU f32, max |Δε|",
                max_abs_diff(&bf16, &reference),
                BF16_EPS,
            ));
            // The bf16 path must really have run: f32 arithmetic lands within `tol.eps`.
            let (apart, floor) = (max_abs_diff(&bf16, &on_device), tol.eps.min(1e-3));
            rows.push(Check {
                name: "U-Net ε in bf16 differs from f32 (bf16 in effect)".into(),
                measured: format!("{apart:.2e}"),
                tolerance: format!("> {floor:.1e}"),
                pass: apart > floor,
            });
        }
        Err(why) => println!("(bf16 rows skipped: {why})"),
    }
    rows
}

/// Max |Δε| of the U-Net in bf16 against f32. bf16 keeps 8 significant bits (unit roundoff
/// 2⁻⁹ ≈ 2e-3 per operand and per rounded result), through about 20 layers on |ε| up to 2.7;
/// measured 2.9e-2 with the CPU's kernels and 3.3e-2 through burn's ops on the CPU, so the bound
/// leaves 3× for a device's other summation order. A wrong layer or weight gives errors of
/// order |ε|.
const BF16_EPS: f64 = 1e-1;

fn sampler_checks(device: &Device, cpu: &Device, cfg: &SelftestConfig) -> Vec<Check> {
    let same = device == cpu;
    let mut rows = Vec::new();
    let n = cfg.gaussian_samples;
    // docs/math.md §20: data N(0.3, 0.5²).
    let d = GaussianDiffusion::new(DiffusionConfig {
        variance: VarianceType::Small,
        ..Default::default()
    });
    let oracle = GaussianOracle::new(&d, 0.3, 0.5);
    let run = |s: &dyn Sampler, on: &Device, seed: u64| {
        let mut noise = NoiseSource::new(seed);
        to_vec(sample(
            &d,
            s,
            &oracle,
            [n, 1, 1, 1],
            on,
            &mut noise,
            |_, _| {},
        ))
    };
    // Algorithm 2, σ² = β̃, no clipping.
    let ancestral = Ancestral::new(&d, false);
    let x = run(&ancestral, device, 42);
    let (m, s) = moments(&x);
    let (em, es) = exact_ancestral_moments(&d, &oracle);
    let (tm, ts) = five_se(es, n);
    rows.push(Check::near(
        format!("Algorithm 2 (σ²=β̃), exact ε*, N={n}: mean"),
        m,
        em,
        tm,
    ));
    rows.push(Check::near(
        format!("Algorithm 2 (σ²=β̃), exact ε*, N={n}: std"),
        s,
        es,
        ts,
    ));
    if !same {
        let r = run(&ancestral, cpu, 42);
        rows.push(Check::at_most(
            "Algorithm 2 vs CPU, same noise: max |Δx₀|",
            max_abs_diff(&x, &r),
            1e-3,
        ));
    }
    // DDIM η = 0, 50 linear steps.
    let steps = timestep_subsequence(&d.schedule, 50, Spacing::Linear);
    let ddim = Ddim::new(steps.clone(), 0.0, false);
    let x = run(&ddim, device, 11);
    let (m, s) = moments(&x);
    let (em, es) = exact_ddim_moments(&d, &oracle, &steps);
    let (tm, ts) = five_se(es, n);
    rows.push(Check::near(
        format!("DDIM-50 η=0, exact ε*, N={n}: mean"),
        m,
        em,
        tm,
    ));
    rows.push(Check::near(
        format!("DDIM-50 η=0, exact ε*, N={n}: std"),
        s,
        es,
        ts,
    ));
    if !same {
        let r = run(&ddim, cpu, 11);
        rows.push(Check::at_most(
            "DDIM-50 vs CPU, same noise: max |Δx₀|",
            max_abs_diff(&x, &r),
            1e-3,
        ));
    }
    // Classifier guidance, s = 1, exact mixture classifier: class 1 of
    // ½N(−0.5, 0.2²) + ½N(0.4, 0.3²) must come out as N(0.4, 0.3²) (docs/math.md §13, §20.3).
    let ng = cfg.guided_samples;
    let comps = vec![(0.5, -0.5, 0.2), (0.5, 0.4, 0.3)];
    let mix = GaussianMixtureOracle::new(&d, comps);
    let guided = |on: &Device| {
        let guidance = Guidance {
            classifier: &mix,
            labels: vec![1; ng],
            scale: 1.0,
        };
        let opts = LoopOptions {
            guidance: Some(&guidance),
            ..Default::default()
        };
        let mut noise = NoiseSource::new(31);
        let x = noise.normal([ng, 1, 1, 1], on);
        to_vec(sample_loop_with(
            &d,
            &ancestral,
            &mix,
            x,
            &mut noise,
            &opts,
            |_, _| {},
        ))
    };
    let x = guided(device);
    let (m, s) = moments(&x);
    // 5 standard errors plus the 1000-step chain's own discretisation bias (tests/samplers.rs
    // measures 0.0034 in the mean and 0.0015 in the std at N = 20,000), allowed as 0.005.
    let (tm, ts) = five_se(0.3, ng);
    rows.push(Check::near(
        format!("guidance s=1, exact classifier, N={ng}: mean"),
        m,
        0.4,
        tm + 0.005,
    ));
    rows.push(Check::near(
        format!("guidance s=1, exact classifier, N={ng}: std"),
        s,
        0.3,
        ts + 0.005,
    ));
    if !same {
        let r = guided(cpu);
        rows.push(Check::at_most(
            "guidance vs CPU, same noise: max |Δx₀|",
            max_abs_diff(&x, &r),
            1e-3,
        ));
    }
    rows
}

fn determinism_checks(device: &Device) -> Vec<Check> {
    // The tiny U-Net with seeded weights, DDIM η = 0.5 (noise at every step) twice per seed.
    let config = UNetConfig::tiny(28, 1);
    let weights = seeded_weights(&config, 3);
    let model = crate::params::assign(config.init(device), &weights, false);
    let d = GaussianDiffusion::new(DiffusionConfig::default());
    let ddim = Ddim::new(
        timestep_subsequence(&d.schedule, 10, Spacing::Quadratic),
        0.5,
        true,
    );
    let run = |seed| {
        let mut noise = NoiseSource::new(seed);
        to_vec(sample(
            &d,
            &ddim,
            &model,
            [4, 1, 28, 28],
            device,
            &mut noise,
            |_, _| {},
        ))
    };
    // One run first, not compared. On burn's GPU backends the first passes through new shapes
    // are autotuned, and operation fusion compiles its fused kernels only once it has seen a
    // sequence of operations, so the first run's kernels can differ from every later run's
    // (and a fused a·b + c may round once where separate kernels round twice). The lavapipe
    // run in README "GPUs" found exactly that without this warm-up.
    let _ = run(8);
    let (a, b, c) = (run(9), run(9), run(10));
    let same = |x: &[f32], y: &[f32]| x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits());
    let twice = same(&a, &b);
    vec![
        Check {
            name: "tiny U-Net, DDIM-10 η=0.5: seed 9 twice".into(),
            measured: if twice {
                "identical".into()
            } else {
                format!("max |Δ| {:.2e}", max_abs_diff(&a, &b))
            },
            tolerance: "bit-identical".into(),
            pass: twice,
        },
        Check {
            name: "tiny U-Net, DDIM-10 η=0.5: seed 9 vs seed 10".into(),
            measured: if same(&a, &c) {
                "identical"
            } else {
                "different"
            }
            .into(),
            tolerance: "different".into(),
            pass: !same(&a, &c),
        },
    ]
}

/// A folder under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let p = std::env::temp_dir().join(format!("ddpm-selftest-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let target = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &target)?;
        } else {
            std::fs::copy(e.path(), &target)?;
        }
    }
    Ok(())
}

/// ‖a − b‖ / ‖b − base‖ over all parameter arrays: a difference relative to how far training
/// moved the values from the common starting point.
fn rel_diff(a: &[Vec<f32>], b: &[Vec<f32>], base: &[Vec<f32>]) -> f64 {
    let mut num = 0.0f64;
    let mut den = 0.0f64;
    for ((a, b), c) in a.iter().zip(b).zip(base) {
        for ((&x, &y), &z) in a.iter().zip(b).zip(c) {
            num += (x as f64 - y as f64).powi(2);
            den += (y as f64 - z as f64).powi(2);
        }
    }
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

fn same_bits(a: &TrainState, b: &TrainState) -> bool {
    let eq = |x: &[Vec<f32>], y: &[Vec<f32>]| {
        x.len() == y.len()
            && x.iter().zip(y).all(|(p, q)| {
                p.len() == q.len() && p.iter().zip(q).all(|(u, v)| u.to_bits() == v.to_bits())
            })
    };
    a.step == b.step
        && eq(&a.params, &b.params)
        && eq(&a.ema, &b.ema)
        && eq(&a.m, &b.m)
        && eq(&a.v, &b.v)
}

/// Resumes `run` on `device` for one more step; returns the trainer (its state) and the step's
/// loss, recovered from the smoothed loss the trainer keeps (0.98·previous + 0.02·loss).
fn one_more_step(run: &Path, device: &Device) -> Result<(Trainer, f64)> {
    let mut t = Trainer::resume(run, device, |_| {})?;
    let target = t.state.step + 1;
    let smoothed_before = crate::train::checkpoint::latest_checkpoint(run)?
        .map(|c| -> Result<f64> {
            let meta: crate::train::checkpoint::CheckpointMeta =
                serde_json::from_str(&std::fs::read_to_string(c.join("state.json"))?)?;
            Ok(meta.loss)
        })
        .transpose()?
        .unwrap_or(f64::NAN);
    t.task.config.train.max_steps = Some(target);
    let summary = t.train()?;
    let loss = if smoothed_before.is_finite() {
        (summary.loss - 0.98 * smoothed_before) / 0.02
    } else {
        summary.loss
    };
    Ok((t, loss))
}

fn training_checks(device: &Device, cpu: &Device, cfg: &SelftestConfig) -> Result<Vec<Check>> {
    let tol = cfg.tolerances();
    let tmp = TempDir::new()?;
    let dir = |name: &str| tmp.0.join(name);
    let optim = OptimConfig {
        warmup_steps: 0,
        ..Default::default()
    };
    let config = RunConfig {
        model: UNetConfig::tiny(28, 1),
        diffusion: DiffusionConfig::default(),
        train: TrainConfig {
            data: "mnist5k".into(),
            batch_size: cfg.batch_size,
            max_steps: Some(1),
            seed: 5,
            optim,
            sample_every: 0,
            checkpoint_every: 0,
            checkpoint_minutes: 1e9,
            keep_checkpoints: 2,
            preview_count: 0,
            log_every: 1,
            ..Default::default()
        },
    };
    // The common start: one step on the CPU (so Adam's moments are not zero).
    Trainer::create(&dir("base"), config.clone(), cpu)?.train()?;
    let base = Trainer::resume(&dir("base"), cpu, |_| {})?.state;
    copy_dir(&dir("base"), &dir("dev"))?;
    copy_dir(&dir("base"), &dir("cpu"))?;
    // Step 2 on the device and on the CPU.
    let (dev2, dev_loss) = one_more_step(&dir("dev"), device)?;
    let (cpu2, cpu_loss) = one_more_step(&dir("cpu"), cpu)?;
    let mut rows = vec![Check::at_most(
        format!(
            "train step (tiny, batch {}) vs CPU: loss, relative",
            cfg.batch_size
        ),
        (dev_loss - cpu_loss).abs() / cpu_loss.abs(),
        tol.loss,
    )];
    // Adam's m after the step is β1·m_prev + (1−β1)·g: its difference is (1−β1)·Δg.
    let b1 = config.train.optim.beta1 as f32;
    let prev_m: Vec<Vec<f32>> = base
        .m
        .iter()
        .map(|m| m.iter().map(|&x| b1 * x).collect())
        .collect();
    rows.push(Check::at_most(
        "train step vs CPU: gradient, ‖Δg‖/‖g‖",
        rel_diff(&dev2.state.m, &cpu2.state.m, &prev_m),
        tol.grad,
    ));
    // Adam divides by √v, which can enlarge a gradient's relative error in single weights.
    rows.push(Check::at_most(
        "train step vs CPU: weights, ‖Δw‖/‖w − w_prev‖",
        rel_diff(&dev2.state.params, &cpu2.state.params, &base.params),
        tol.weights,
    ));
    // Checkpoints across devices: the device's checkpoint on the CPU and the CPU's on the
    // device must load bit for bit and train on.
    copy_dir(&dir("cpu"), &dir("cpu-to-dev"))?;
    let dev_on_cpu = Trainer::resume(&dir("dev"), cpu, |_| {})?;
    let cpu_on_dev = Trainer::resume(&dir("cpu-to-dev"), device, |_| {})?;
    rows.push(Check::identical(
        "checkpoint written on device, loaded on CPU",
        same_bits(&dev_on_cpu.state, &dev2.state),
        "bit-identical state",
    ));
    rows.push(Check::identical(
        "checkpoint written on CPU, loaded on device",
        same_bits(&cpu_on_dev.state, &cpu2.state),
        "bit-identical state",
    ));
    drop((dev_on_cpu, cpu_on_dev));
    let (dev3_cpu, _) = one_more_step(&dir("dev"), cpu)?;
    let (cpu3_dev, _) = one_more_step(&dir("cpu-to-dev"), device)?;
    let (cpu3, _) = one_more_step(&dir("cpu"), cpu)?;
    rows.push(Check::at_most(
        "device checkpoint resumed on CPU: weights vs CPU run",
        rel_diff(&dev3_cpu.state.params, &cpu3.state.params, &base.params),
        tol.weights,
    ));
    rows.push(Check::at_most(
        "CPU checkpoint resumed on device: weights vs CPU run",
        rel_diff(&cpu3_dev.state.params, &cpu3.state.params, &base.params),
        tol.weights,
    ));
    // CPU: 1 step + resume + 2 steps ≡ 3 uninterrupted steps, bit for bit.
    let mut straight = config.clone();
    straight.train.max_steps = Some(3);
    let mut whole = Trainer::create(&dir("straight"), straight, cpu)?;
    whole.train()?;
    rows.push(Check::identical(
        "CPU: resumed run vs uninterrupted run (3 steps)",
        same_bits(&whole.state, &cpu3.state),
        "bit-identical state",
    ));
    Ok(rows)
}

/// Runs the checks, printing the table as rows finish; returns the rows and the seconds taken.
pub fn run_and_print(device: &Device, config: &SelftestConfig) -> Result<(Vec<Check>, f64)> {
    let start = Instant::now();
    // Each row with the seconds since the start: on a GPU the first rows include autotuning
    // and kernel compilation, and a run stopped by a time limit still shows where it was.
    println!("{:>8}  {}", "at", table_header());
    let rows = run(device, config, |c| {
        println!("{:>7.1}s  {}", start.elapsed().as_secs_f64(), table_row(c))
    })?;
    Ok((rows, start.elapsed().as_secs_f64()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_moments_match_docs_math() {
        // docs/math.md §20 (data N(0.3, 0.5²)): the exact Algorithm 2 chain with σ² = β̃ has std
        // 0.4961 (README), and DDIM η = 0 with 50 linear steps std 0.472.
        let d = GaussianDiffusion::new(DiffusionConfig {
            variance: VarianceType::Small,
            ..Default::default()
        });
        let oracle = GaussianOracle::new(&d, 0.3, 0.5);
        let (m, s) = exact_ancestral_moments(&d, &oracle);
        assert!(
            (m - 0.3).abs() < 2e-3 && (s - 0.4961).abs() < 1e-4,
            "{m} {s}"
        );
        let ts = timestep_subsequence(&d.schedule, 50, Spacing::Linear);
        let (m, s) = exact_ddim_moments(&d, &oracle, &ts);
        assert!(
            (m - 0.3).abs() < 2e-3 && (s - 0.472).abs() < 5e-4,
            "{m} {s}"
        );
        // All 1000 steps of the ODE land on the data distribution itself.
        let all: Vec<usize> = (0..1000).rev().collect();
        let (m, s) = exact_ddim_moments(&d, &oracle, &all);
        assert!((m - 0.3).abs() < 2e-3 && (s - 0.5).abs() < 5e-3, "{m} {s}");
    }

    #[test]
    fn a_table_row_fails_outside_its_tolerance() {
        assert!(Check::at_most("x", 1e-5, 1e-4).pass);
        assert!(!Check::at_most("x", 2e-4, 1e-4).pass);
        assert!(Check::near("x", 0.31, 0.3, 0.02).pass);
        assert!(!Check::near("x", 0.33, 0.3, 0.02).pass);
        assert!(!Check::at_most("x", f64::NAN, 1e-4).pass);
        let t = format_table(&[Check::identical("y", false, "bit-identical")]);
        assert!(t.contains("FAIL") && t.contains("1 failed"), "{t}");
    }
}
