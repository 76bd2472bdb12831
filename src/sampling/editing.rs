//! Editing existing images with any sampler: SDEdit (Meng et al. 2022) starts the reverse
//! process part-way from a noised image; RePaint (Lugmayr et al. 2022, Algorithm 1) fills the
//! unknown pixels of an image while the known ones follow the forward process (docs/math.md §18).

use burn::tensor::Tensor;

use super::{Sampler, StepContext, StepOutput};
use crate::diffusion::GaussianDiffusion;
use crate::noise::NoiseSource;

/// SDEdit: the inner sampler's steps from the first timestep ≤ `strength·T` on. Start it from
/// [`SdEdit::start`], `x_{t₀} ~ q(x_{t₀} | x_guide)`.
pub struct SdEdit {
    inner: Box<dyn Sampler>,
    skip: usize,
}

impl SdEdit {
    /// Wraps `inner`; `strength` ∈ (0, 1] is the fraction of the noise range re-generated
    /// (1 = sample from scratch, small = stay close to the guide image).
    pub fn new(inner: Box<dyn Sampler>, diffusion: &GaussianDiffusion, strength: f64) -> Self {
        let t0 = ((strength.clamp(0.0, 1.0) * diffusion.num_timesteps() as f64).round() as usize)
            .clamp(1, diffusion.num_timesteps())
            - 1;
        let ts = inner.timesteps();
        let skip = ts.iter().position(|&t| t <= t0).unwrap_or(ts.len() - 1);
        SdEdit { inner, skip }
    }

    /// x_{t₀} = √ᾱ_{t₀} x_guide + √(1−ᾱ_{t₀}) ε (Ho et al. eq. 4), with t₀ the first index
    /// the wrapped sampler visits (`timesteps()[0]`).
    pub fn start(
        diffusion: &GaussianDiffusion,
        t0: usize,
        guide: Tensor<4>,
        noise: &mut NoiseSource,
    ) -> Tensor<4> {
        let dims = guide.dims();
        let z = noise.normal(dims, &guide.device());
        diffusion.q_sample(guide, &vec![t0; dims[0]], z)
    }
}

impl Sampler for SdEdit {
    fn timesteps(&self) -> &[usize] {
        &self.inner.timesteps()[self.skip..]
    }

    fn step(&self, ctx: &mut StepContext<'_>, x_t: Tensor<4>, k: usize) -> StepOutput {
        self.inner.step(ctx, x_t, k + self.skip)
    }
}

/// RePaint inpainting around any single-step sampler (ancestral or DDIM): after each step the
/// known pixels are replaced by a forward-process sample of the known image at the new level,
/// `x_{t'} = m ⊙ q(x_{t'} | x₀^known) + (1 − m) ⊙ p_θ(x_{t'} | x_t)`, and the step is
/// repeated `resample` times, going back with `x_t ~ q(x_t | x_{t'})` in between. On the last
/// step the known pixels are x₀^known exactly.
pub struct Inpaint {
    inner: Box<dyn Sampler>,
    known: Tensor<4>,
    mask: Tensor<4>,
    /// RePaint's U: how often each step is taken (1 = no resampling).
    pub resample: usize,
}

impl Inpaint {
    /// `known`: the image (values in [−1, 1]); `mask`: 1 where a pixel is known, 0 where it is to
    /// be generated; both broadcast against the batch.
    pub fn new(
        inner: Box<dyn Sampler>,
        known: Tensor<4>,
        mask: Tensor<4>,
        resample: usize,
    ) -> Self {
        Inpaint {
            inner,
            known,
            mask,
            resample: resample.max(1),
        }
    }
}

impl Sampler for Inpaint {
    fn timesteps(&self) -> &[usize] {
        self.inner.timesteps()
    }

    fn step(&self, ctx: &mut StepContext<'_>, x_t: Tensor<4>, k: usize) -> StepOutput {
        let ts = self.inner.timesteps();
        let next = ts.get(k + 1).copied();
        // A copy of the shared reference, so the tables stay readable while `ctx` is borrowed.
        let diffusion = ctx.diffusion;
        let dims = x_t.dims();
        let device = x_t.device();
        let known = self.known.clone().expand(dims);
        let mask = self.mask.clone().expand(dims);
        let mut x = x_t;
        let mut round = 0;
        loop {
            let out = self.inner.step(ctx, x, k);
            let known_prev = match next {
                Some(tn) => {
                    let z = ctx.noise.normal(dims, &device);
                    diffusion.q_sample(known.clone(), &vec![tn; dims[0]], z)
                }
                None => known.clone(),
            };
            let prev = known_prev * mask.clone() + out.prev * (mask.clone().neg() + 1.0);
            round += 1;
            match next {
                Some(tn) if round < self.resample => {
                    // q(x_t | x_{t'}) = N(√(ᾱ_t/ᾱ_{t'}) x_{t'}, (1 − ᾱ_t/ᾱ_{t'}) I).
                    let ac = &diffusion.schedule.alphas_cumprod;
                    let r = ac[ts[k]] / ac[tn];
                    let z = ctx.noise.normal(dims, &device);
                    x = prev.mul_scalar(r.sqrt()) + z.mul_scalar((1.0 - r).sqrt());
                }
                _ => {
                    return StepOutput {
                        prev,
                        pred_x0: out.pred_x0,
                    };
                }
            }
        }
    }
}
