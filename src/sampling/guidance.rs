//! Classifier guidance (Dhariwal & Nichol 2021; docs/math.md §13): steer sampling towards class y
//! with the gradient of a noisy-image classifier, `∇_{x_t} log p_φ(y | x_t)`.
//!
//! The samplers apply it: ancestral sampling shifts the mean by `s·σ_t²·∇`, DDIM replaces ε by
//! `ε − s·√(1−ᾱ_t)·∇` (see [`super::Sampler::step`]).

use burn::tensor::Tensor;

/// Anything that gives `∇_{x_t} log p(y | x_t)`: a trained classifier or an exact oracle.
pub trait ClassifierGrad {
    /// The gradient for each sample's target label `y[b]` at table index `t[b]`.
    fn grad_log_prob(&self, x_t: Tensor<4>, t: &[usize], y: &[usize]) -> Tensor<4>;
}

/// A classifier, the requested labels and the guidance scale s.
pub struct Guidance<'a> {
    /// The classifier.
    pub classifier: &'a dyn ClassifierGrad,
    /// Target class per sample.
    pub labels: Vec<usize>,
    /// Guidance scale s (0 = unguided, 1 = the class-conditional model in theory).
    pub scale: f64,
}

impl Guidance<'_> {
    /// `s·∇_{x_t} log p_φ(y | x_t)`.
    pub fn gradient(&self, x_t: Tensor<4>, t: &[usize]) -> Tensor<4> {
        self.classifier
            .grad_log_prob(x_t, t, &self.labels)
            .mul_scalar(self.scale)
    }
}
