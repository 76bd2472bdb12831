//! DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2): a second-order multistep
//! solver of the probability-flow ODE in the data-prediction form (docs/math.md §16).
//!
//! With α_t = √ᾱ_t, σ_t = √(1−ᾱ_t) and λ_t = log(α_t/σ_t), one step from t_{i−1} to t_i with
//! h_i = λ_{t_i} − λ_{t_{i−1}} is
//! `x_{t_i} = (σ_{t_i}/σ_{t_{i−1}}) x_{t_{i−1}} − α_{t_i}(e^{−h_i} − 1) D_i`, where
//! D_i = x̂₀ of the previous point for the first step (first order, = DDIM) and
//! `D_i = (1 + 1/(2r_i)) x̂₀_{i−1} − (1/(2r_i)) x̂₀_{i−2}`, r_i = h_{i−1}/h_i, after it.
//! The last step goes to σ = 0 (x = D, taken first order as diffusers' `lower_order_final`).

use burn::tensor::Tensor;

use super::ddim::clipped_x0_eps;
use super::{Sampler, StepContext, StepOutput};

/// DPM-Solver++(2M) over decreasing `timesteps`.
pub struct DpmSolverPP {
    timesteps: Vec<usize>,
    /// Clip x̂₀ to [−1, 1] (the "thresholding" of the data-prediction form, at level 1).
    pub clip_x0: bool,
}

impl DpmSolverPP {
    /// The solver over explicit decreasing `timesteps`.
    pub fn new(timesteps: Vec<usize>, clip_x0: bool) -> Self {
        assert!(
            timesteps.windows(2).all(|w| w[0] > w[1]),
            "timesteps must decrease"
        );
        DpmSolverPP { timesteps, clip_x0 }
    }
}

/// λ = log(α/σ) = ½ log(ᾱ/(1−ᾱ)).
fn lambda(ab: f64) -> f64 {
    0.5 * (ab / (1.0 - ab)).ln()
}

impl Sampler for DpmSolverPP {
    fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    fn step(&self, ctx: &mut StepContext<'_>, x_t: Tensor<4>, k: usize) -> StepOutput {
        let ac = &ctx.diffusion.schedule.alphas_cumprod;
        let t = self.timesteps[k];
        let a_t = ac[t];
        let out = ctx.predict_guided_eps(x_t.clone(), t);
        let (x0, _) = clipped_x0_eps(&x_t, out.pred_x0, out.eps, a_t, self.clip_x0);
        let prev = match self.timesteps.get(k + 1) {
            // The last step lands on σ = 0: x = x̂₀.
            None => x0.clone(),
            Some(&tn) => {
                let a_n = ac[tn];
                let h = lambda(a_n) - lambda(a_t);
                let d = match (k, ctx.history.last()) {
                    (1.., Some(x0_prev)) => {
                        let h_prev = lambda(a_t) - lambda(ac[self.timesteps[k - 1]]);
                        let r = h_prev / h;
                        x0.clone().mul_scalar(1.0 + 0.5 / r) - x0_prev.clone().mul_scalar(0.5 / r)
                    }
                    _ => x0.clone(),
                };
                let ratio = ((1.0 - a_n) / (1.0 - a_t)).sqrt();
                x_t.mul_scalar(ratio) - d.mul_scalar(a_n.sqrt() * ((-h).exp() - 1.0))
            }
        };
        ctx.history.push(x0.clone());
        StepOutput { prev, pred_x0: x0 }
    }
}
