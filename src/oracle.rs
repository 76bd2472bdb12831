//! Exact noise predictors for data whose distribution is known (theory.md §8), used to test
//! samplers and the likelihood bound without a network.

use burn::tensor::{Tensor, TensorData};

use crate::diffusion::{EpsModel, GaussianDiffusion};

/// Data x_0 ~ N(m, s²) per dimension: the optimal predictor is
/// `ε*(x_t, t) = √(1−ᾱ_t)(x_t − √ᾱ_t m)/(ᾱ_t s² + 1 − ᾱ_t)`.
pub struct GaussianOracle {
    /// Data mean m.
    pub mean: f64,
    /// Data standard deviation s.
    pub std: f64,
    /// ᾱ_t per index.
    pub alphas_cumprod: Vec<f64>,
}

impl GaussianOracle {
    /// The oracle for `diffusion`'s schedule.
    pub fn new(diffusion: &GaussianDiffusion, mean: f64, std: f64) -> Self {
        GaussianOracle {
            mean,
            std,
            alphas_cumprod: diffusion.schedule.alphas_cumprod.clone(),
        }
    }

    /// ε* as an affine map of x_t: (scale, shift) with ε* = scale·x_t + shift.
    pub fn affine(&self, t: usize) -> (f64, f64) {
        let ab = self.alphas_cumprod[t];
        let denom = ab * self.std * self.std + 1.0 - ab;
        let scale = (1.0 - ab).sqrt() / denom;
        (scale, -scale * ab.sqrt() * self.mean)
    }
}

impl EpsModel for GaussianOracle {
    fn predict_eps(&self, x_t: Tensor<4>, t: &[usize]) -> Tensor<4> {
        let device = x_t.device();
        let (scale, shift): (Vec<f32>, Vec<f32>) = t
            .iter()
            .map(|&i| {
                let (a, b) = self.affine(i);
                (a as f32, b as f32)
            })
            .unzip();
        let n = t.len();
        let scale = Tensor::from_data(TensorData::new(scale, [n, 1, 1, 1]), &device);
        let shift = Tensor::from_data(TensorData::new(shift, [n, 1, 1, 1]), &device);
        x_t * scale + shift
    }
}

/// Data drawn uniformly from a finite set {x^i}: the optimal x̂₀ is the posterior mean
/// `Σ w_i x^i`, `w ∝ exp(−‖x_t − √ᾱ_t x^i‖² / (2(1−ᾱ_t)))`, and ε* follows from it.
pub struct FiniteSetOracle {
    /// The data points, each of `dim` values.
    pub points: Vec<Vec<f64>>,
    /// ᾱ_t per index.
    pub alphas_cumprod: Vec<f64>,
}

impl FiniteSetOracle {
    /// The oracle for `diffusion`'s schedule.
    pub fn new(diffusion: &GaussianDiffusion, points: Vec<Vec<f64>>) -> Self {
        FiniteSetOracle {
            points,
            alphas_cumprod: diffusion.schedule.alphas_cumprod.clone(),
        }
    }
}

impl EpsModel for FiniteSetOracle {
    fn predict_eps(&self, x_t: Tensor<4>, t: &[usize]) -> Tensor<4> {
        let dims = x_t.dims();
        let device = x_t.device();
        let dim = dims[1] * dims[2] * dims[3];
        let x: Vec<f32> = x_t.into_data().convert::<f32>().try_into_vec().unwrap();
        let mut out = vec![0f32; x.len()];
        for (b, &ti) in t.iter().enumerate() {
            let ab = self.alphas_cumprod[ti];
            let xb = &x[b * dim..(b + 1) * dim];
            let logw: Vec<f64> = self
                .points
                .iter()
                .map(|p| {
                    let d2: f64 = p
                        .iter()
                        .zip(xb)
                        .map(|(pi, &xi)| (xi as f64 - ab.sqrt() * pi).powi(2))
                        .sum();
                    -d2 / (2.0 * (1.0 - ab))
                })
                .collect();
            let mx = logw.iter().cloned().fold(f64::MIN, f64::max);
            let w: Vec<f64> = logw.iter().map(|l| (l - mx).exp()).collect();
            let z: f64 = w.iter().sum();
            for d in 0..dim {
                let x0: f64 = self
                    .points
                    .iter()
                    .zip(&w)
                    .map(|(p, wi)| p[d] * wi)
                    .sum::<f64>()
                    / z;
                out[b * dim + d] = ((xb[d] as f64 - ab.sqrt() * x0) / (1.0 - ab).sqrt()) as f32;
            }
        }
        Tensor::from_data(TensorData::new(out, dims), &device)
    }
}
