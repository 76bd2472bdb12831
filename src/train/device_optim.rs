//! The same update as [`super::optim::TrainState::update`] (global-norm clipping, Adam with bias
//! correction, the EMA), written as tensor operations on the model's own device.
//!
//! On a GPU the host update costs a round trip of every gradient and every weight per step;
//! here the moments and the EMA stay on the device and only the per-parameter squared gradient
//! norms (one small vector) come back, because the clipping factor needs the global norm. The
//! host state is refreshed only when it is needed: for a checkpoint, a preview or the end of
//! the session. The CPU keeps the host update, which sums the squared norms in f64 in a fixed
//! order whatever the thread count, and on which runs trained so far continue their exact
//! trajectory; this one sums each parameter's squares in f32 on the device, so it agrees with
//! the host update to float rounding (tests/training.rs).

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::{Device, Tensor, TensorData};

use super::optim::{OptimConfig, StepCoefficients, TrainState, UpdateStats};

/// Adam's moments and the EMA of every parameter, flat, on the device, in parameter order.
pub struct DeviceOptim {
    m: Vec<Tensor<1>>,
    v: Vec<Tensor<1>>,
    ema: Vec<Tensor<1>>,
    step: u64,
}

fn upload(values: &[Vec<f32>], device: &Device) -> Vec<Tensor<1>> {
    values
        .iter()
        .map(|v| Tensor::<1>::from_data(TensorData::new(v.clone(), [v.len()]), device))
        .collect()
}

fn download(t: &Tensor<1>) -> Vec<f32> {
    t.clone()
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 optimiser state")
}

/// Every parameter's gradient, flat, on the inner (non-autodiff) device; zeros where the loss
/// does not reach a parameter.
struct GradTensors<'a> {
    grads: &'a burn::tensor::Gradients,
    out: Vec<Tensor<1>>,
}

impl ModuleVisitor for GradTensors<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let t = param.val();
        let n = t.shape().num_elements();
        let g = match t.grad(self.grads) {
            Some(g) => g.reshape([n]),
            None => Tensor::<1>::zeros([n], &t.device().inner()),
        };
        self.out.push(g);
    }
}

/// Replaces every parameter by its Adam update and advances the moments and the EMA.
struct Apply<'a> {
    opt: &'a mut DeviceOptim,
    grads: Vec<Tensor<1>>,
    c: StepCoefficients,
    next: usize,
}

impl ModuleMapper for Apply<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, tensor, mapper): (ParamId, Tensor<D>, _) = param.consume();
        let i = self.next;
        self.next += 1;
        let shape = tensor.dims();
        let n: usize = shape.iter().product();
        let c = &self.c;
        let p = tensor.inner().reshape([n]);
        let g = self.grads[i].clone() * c.clip;
        let m = self.opt.m[i].clone() * c.b1 + g.clone() * (1.0 - c.b1);
        let v = self.opt.v[i].clone() * c.b2 + g.clone() * (1.0 - c.b2) * g;
        // Ho et al. 2020 train with Adam (Kingma & Ba 2015, Algorithm 1, bias-corrected), in
        // the same operation order as the host update.
        let p = p - m.clone() * c.step_size / (v.clone().sqrt() * c.inv_sqrt_bc2 + c.eps);
        self.opt.ema[i] = self.opt.ema[i].clone() * c.decay + p.clone() * (1.0 - c.decay);
        self.opt.m[i] = m;
        self.opt.v[i] = v;
        let p = Tensor::<D>::from_inner(p.reshape(shape)).require_grad();
        Param::from_mapped_value(id, p, mapper)
    }
}

impl DeviceOptim {
    /// The moments and the EMA of `state`, uploaded to `device` (the inner, non-autodiff one).
    pub fn new(state: &TrainState, device: &Device) -> Self {
        let device = device.clone().inner();
        DeviceOptim {
            m: upload(&state.m, &device),
            v: upload(&state.v, &device),
            ema: upload(&state.ema, &device),
            step: state.step,
        }
    }

    /// Steps taken (the same count as [`TrainState::step`]).
    pub fn step(&self) -> u64 {
        self.step
    }

    /// One update of `model` (an autodiff model whose parameters require gradients) with the
    /// gradients of its loss: the host update's formulas and coefficients.
    pub fn update<M: Module>(
        &mut self,
        model: M,
        grads: &burn::tensor::Gradients,
        cfg: &OptimConfig,
    ) -> (M, UpdateStats) {
        let mut collector = GradTensors {
            grads,
            out: Vec::new(),
        };
        model.visit(&mut collector);
        let gs = collector.out;
        assert_eq!(gs.len(), self.m.len(), "parameter count mismatch");
        // One readback per step: the squared norm of each parameter's gradient, added on the
        // host in parameter order.
        let sq: Vec<Tensor<1>> = gs.iter().map(|g| (g.clone() * g.clone()).sum()).collect();
        let grad_norm = download(&Tensor::cat(sq, 0))
            .iter()
            .map(|&x| x as f64)
            .sum::<f64>()
            .sqrt();
        self.step += 1;
        let c = StepCoefficients::new(cfg, self.step, grad_norm);
        let lr = c.lr;
        let mut apply = Apply {
            opt: self,
            grads: gs,
            c,
            next: 0,
        };
        let model = model.map(&mut apply);
        assert_eq!(apply.next, apply.grads.len(), "parameter count mismatch");
        (model, UpdateStats { grad_norm, lr })
    }

    /// Copies the device state into `state` (weights from `model`), for a checkpoint or the
    /// end of training.
    pub fn download_into<M: Module>(&self, model: &M, state: &mut TrainState) {
        state.params = crate::params::collect(model)
            .into_iter()
            .map(|p| p.values)
            .collect();
        state.m = self.m.iter().map(download).collect();
        state.v = self.v.iter().map(download).collect();
        state.ema = self.ema.iter().map(download).collect();
        state.step = self.step;
    }
}
