//! Exact noise predictors for data whose distribution is known (docs/math.md §20), used to test
//! samplers and the likelihood bound without a network.

use burn::tensor::{Tensor, TensorData};

use crate::diffusion::{Denoiser, GaussianDiffusion};

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

impl Denoiser for GaussianOracle {
    fn forward(&self, x_t: Tensor<4>, t: &[usize], _y: Option<&[usize]>) -> Tensor<4> {
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

/// Exact mean and std of Algorithm 2's output from x_T ~ N(0, 1) when ε is this oracle's affine
/// ε* (docs/math.md §20.1), computed in f64 independently of the samplers' code path:
/// every step is x_{t−1} = A x_t + B + σ_t z (Ho et al. eq. 11).
pub fn exact_ancestral_moments(d: &GaussianDiffusion, oracle: &GaussianOracle) -> (f64, f64) {
    let s = &d.schedule;
    let (mut m, mut v) = (0.0f64, 1.0f64);
    for t in (0..s.num_timesteps).rev() {
        let (a, b) = oracle.affine(t);
        let k = s.betas[t] / s.sqrt_one_minus_alphas_cumprod[t];
        let big_a = (1.0 - k * a) / s.alphas[t].sqrt();
        let big_b = -k * b / s.alphas[t].sqrt();
        m = big_a * m + big_b;
        v = big_a * big_a * v + if t > 0 { d.model_variance[t] } else { 0.0 };
    }
    (m, v.sqrt())
}

/// Exact mean and std of DDIM η = 0 (no clipping) with an affine ε: each step
/// x' = √ᾱ' x̂₀ + √(1−ᾱ') ε with x̂₀ = (x − √(1−ᾱ) ε)/√ᾱ (Song et al. eq. 12), ᾱ' = 1 at the end.
pub fn exact_ddim_moments(
    d: &GaussianDiffusion,
    oracle: &GaussianOracle,
    ts: &[usize],
) -> (f64, f64) {
    exact_ddim_moments_with_noise(d, oracle, ts, &vec![0.0; ts.len()])
}

/// Exact mean and std of DDIM (no clipping) with an affine ε and step variances `sigma2[k]`:
/// x' = √ᾱ' x̂₀ + √(1−ᾱ'−σ_k²) ε + σ_k z (Song et al. eq. 12), ᾱ' = 1 at the end.
pub fn exact_ddim_moments_with_noise(
    d: &GaussianDiffusion,
    oracle: &GaussianOracle,
    ts: &[usize],
    sigma2: &[f64],
) -> (f64, f64) {
    assert_eq!(ts.len(), sigma2.len());
    let ac = &d.schedule.alphas_cumprod;
    let (mut m, mut var) = (0.0f64, 1.0f64);
    for (k, &t) in ts.iter().enumerate() {
        let (a, b) = oracle.affine(t);
        let (at, an) = (ac[t], ts.get(k + 1).map_or(1.0, |&n| ac[n]));
        // x̂₀ = c1 x + c0, then x' = √an x̂₀ + dir (a x + b) + σ z.
        let dir = (1.0 - an - sigma2[k]).max(0.0).sqrt();
        let c1 = (1.0 - (1.0 - at).sqrt() * a) / at.sqrt();
        let c0 = -(1.0 - at).sqrt() * b / at.sqrt();
        let big_a = an.sqrt() * c1 + dir * a;
        let big_b = an.sqrt() * c0 + dir * b;
        m = big_a * m + big_b;
        var = big_a * big_a * var + sigma2[k];
    }
    (m, var.sqrt())
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

impl Denoiser for FiniteSetOracle {
    fn forward(&self, x_t: Tensor<4>, t: &[usize], _y: Option<&[usize]>) -> Tensor<4> {
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

/// Labelled data from a mixture of isotropic Gaussians: class y has weight π_y and
/// x_0 | y ~ N(μ_y, s_y² I). Then q_t(x_t | y) = N(√ᾱ_t μ_y, (ᾱ_t s_y² + 1 − ᾱ_t) I), and both
/// the optimal ε* = −√(1−ᾱ_t) ∇ log q_t(x_t) and the exact classifier gradient
/// ∇ log p(y | x_t) = ∇ log q_t(x_t | y) − ∇ log q_t(x_t) have closed forms (docs/math.md §20.3).
pub struct GaussianMixtureOracle {
    /// (π_y, μ_y, s_y) per class.
    pub components: Vec<(f64, f64, f64)>,
    /// ᾱ_t per index.
    pub alphas_cumprod: Vec<f64>,
}

impl GaussianMixtureOracle {
    /// The oracle for `diffusion`'s schedule.
    pub fn new(diffusion: &GaussianDiffusion, components: Vec<(f64, f64, f64)>) -> Self {
        GaussianMixtureOracle {
            components,
            alphas_cumprod: diffusion.schedule.alphas_cumprod.clone(),
        }
    }

    /// For one sample: the class posteriors p(y | x_t) and each class's ∇ log q_t(x_t | y).
    fn posterior_and_grads(&self, x: &[f32], t: usize) -> (Vec<f64>, Vec<Vec<f64>>) {
        let ab = self.alphas_cumprod[t];
        let mut logw = Vec::new();
        let mut grads = Vec::new();
        for &(pi, mu, s) in &self.components {
            let v = ab * s * s + 1.0 - ab;
            let m = ab.sqrt() * mu;
            let mut lp = pi.ln();
            let mut g = Vec::with_capacity(x.len());
            for &xd in x {
                let r = xd as f64 - m;
                lp += -0.5 * r * r / v - 0.5 * (2.0 * std::f64::consts::PI * v).ln();
                g.push(-r / v);
            }
            logw.push(lp);
            grads.push(g);
        }
        let mx = logw.iter().cloned().fold(f64::MIN, f64::max);
        let w: Vec<f64> = logw.iter().map(|l| (l - mx).exp()).collect();
        let z: f64 = w.iter().sum();
        (w.into_iter().map(|x| x / z).collect(), grads)
    }

    /// Applies `f(sample, posteriors, class gradients, pixel)` to every pixel of a batch.
    fn map(
        &self,
        x_t: Tensor<4>,
        t: &[usize],
        f: impl Fn(usize, &[f64], &[Vec<f64>], usize) -> f64,
    ) -> Tensor<4> {
        let dims = x_t.dims();
        let device = x_t.device();
        let d = dims[1] * dims[2] * dims[3];
        let x: Vec<f32> = x_t.into_data().convert::<f32>().try_into_vec().unwrap();
        let mut out = vec![0f32; x.len()];
        for b in 0..dims[0] {
            let (post, grads) = self.posterior_and_grads(&x[b * d..(b + 1) * d], t[b]);
            for j in 0..d {
                out[b * d + j] = f(b, &post, &grads, j) as f32;
            }
        }
        Tensor::from_data(TensorData::new(out, dims), &device)
    }
}

/// The exact ε* of the mixture, or, for a sample with label y < K, of class y alone
/// (ε* = −√(1−ᾱ_t) ∇ log q_t(x_t | y)); a label ≥ K is the null label ∅ (the mixture), as for a
/// class-conditional network trained with label dropout.
impl Denoiser for GaussianMixtureOracle {
    fn forward(&self, x_t: Tensor<4>, t: &[usize], y: Option<&[usize]>) -> Tensor<4> {
        let ac = &self.alphas_cumprod;
        let k = self.components.len();
        self.map(x_t, t, |b, post, grads, j| {
            let score: f64 = match y.map(|y| y[b]) {
                Some(c) if c < k => grads[c][j],
                _ => post.iter().zip(grads).map(|(p, g)| p * g[j]).sum(),
            };
            -(1.0 - ac[t[b]]).sqrt() * score
        })
    }
}

/// An oracle (or any ε-model) asked for another parameterisation: its ε converted to the
/// `diffusion`'s [`crate::diffusion::Prediction`] (x₀ or v), so tests can check that every
/// sampler gives the same result whatever the network predicts.
pub struct Reparameterised<'a> {
    /// The ε-predicting model.
    pub eps_model: &'a dyn Denoiser,
    /// The diffusion whose prediction type the output follows.
    pub diffusion: &'a GaussianDiffusion,
}

impl Denoiser for Reparameterised<'_> {
    fn forward(&self, x_t: Tensor<4>, t: &[usize], y: Option<&[usize]>) -> Tensor<4> {
        let eps = self.eps_model.forward(x_t.clone(), t, y);
        self.diffusion.output_from_eps(x_t, t, eps)
    }
}

impl crate::sampling::ClassifierGrad for GaussianMixtureOracle {
    fn grad_log_prob(&self, x_t: Tensor<4>, t: &[usize], y: &[usize]) -> Tensor<4> {
        self.map(x_t, t, |b, post, grads, j| {
            let score: f64 = post.iter().zip(grads).map(|(p, g)| p * g[j]).sum();
            grads[y[b]][j] - score
        })
    }
}
