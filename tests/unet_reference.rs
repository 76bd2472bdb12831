//! The U-Net against diffusers' UNet2DModel: parameter counts and a forward pass with the
//! reference weights and outputs in diffusers-unet/ of the fixtures (../shared/data, or
//! $DDPM_FIXTURES from scripts/make-fixtures.sh).

use std::path::PathBuf;

use burn::tensor::{Device, Tensor, TensorData};
use ddpm::diffusers::load_diffusers_unet;
use ddpm::model::UNetConfig;
use ddpm::{params, tensorfile};

mod common;

fn fixture_dir() -> Option<PathBuf> {
    common::fixture("diffusers-unet/reference_io.safetensors")
        .map(|p| p.parent().unwrap().to_path_buf())
}

/// The fixture's input x, timesteps t and diffusers' output ε.
fn reference_io(dir: &std::path::Path, device: &Device) -> (Tensor<4>, Vec<f32>, Vec<f32>) {
    let io = tensorfile::read_f32_tensors(&dir.join("reference_io.safetensors")).unwrap();
    let get = |n: &str| io.iter().find(|(k, _, _)| k == n).unwrap().clone();
    let (_, xs, x) = get("x");
    let (_, _, t) = get("t");
    let (_, _, eps) = get("eps");
    let x = Tensor::<4>::from_data(TensorData::new(x, [xs[0], xs[1], xs[2], xs[3]]), device);
    (x, t, eps)
}

#[test]
fn cifar10_preset_has_the_papers_parameter_count() {
    // Built lazily: counting parameters needs shapes only.
    let model = UNetConfig::cifar10().init(&Device::flex());
    assert_eq!(params::count(&model), 35_746_307);
}

#[test]
fn small28_preset_parameter_count() {
    let model = UNetConfig::small28().init(&Device::flex());
    assert_eq!(params::count(&model), 1_623_169);
}

#[test]
fn diffusers_fixture_reproduces_reference_eps() {
    let Some(dir) = fixture_dir() else { return };
    let device = Device::flex();
    let (config, model) = load_diffusers_unet(&dir, &device).expect("load fixture");
    assert_eq!(config.attention_resolutions, vec![8]);
    // facts.json: small_config_params.
    assert_eq!(params::count(&model), 702_499);
    let (x, t, eps) = reference_io(&dir, &device);
    let out = model.forward(x, &t, false);
    let out: Vec<f32> = out.into_data().try_into_vec().unwrap();
    let max_err = out
        .iter()
        .zip(&eps)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    println!("diffusers fixture: t = {t:?}, max |eps - eps_ref| = {max_err:.3e}");
    assert!(max_err <= 1e-4, "max abs error {max_err}");
}

/// The same fixture with the convolutions in bf16 (f32 sums): within 2⁻⁸-relative rounding of
/// every operand, compounded over the network's depth, of diffusers' f32 ε.
#[test]
fn diffusers_fixture_in_bf16_stays_close() {
    use ddpm::kernels::{Precision, with_precision};
    let Some(dir) = fixture_dir() else { return };
    if Precision::Bf16.check_cpu().is_err() {
        println!("no AVX512_BF16 here: the bf16 U-Net is not tested");
        return;
    }
    let device = Device::flex();
    let (_, model) = load_diffusers_unet(&dir, &device).expect("load fixture");
    let (x, t, eps) = reference_io(&dir, &device);
    let out = with_precision(Precision::Bf16, || model.forward(x, &t, false));
    let out: Vec<f32> = out.into_data().try_into_vec().unwrap();
    let err: Vec<f32> = out.iter().zip(&eps).map(|(a, b)| (a - b).abs()).collect();
    let max_err = err.iter().copied().fold(0f32, f32::max);
    let rms = (err.iter().map(|e| e * e).sum::<f32>() / err.len() as f32).sqrt();
    let scale = (eps.iter().map(|e| e * e).sum::<f32>() / eps.len() as f32).sqrt();
    println!(
        "diffusers fixture in bf16: max |eps - eps_ref| = {max_err:.3e}, rms {rms:.3e} (rms of eps {scale:.3})"
    );
    assert!(rms <= 1e-2 * scale, "bf16 rms error {rms}");
    // bf16 really ran: f32 gets 2.6e-6.
    assert!(max_err > 1e-4, "bf16 not in effect: {max_err}");
}
