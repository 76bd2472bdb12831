//! A module's float parameters as named host arrays, and back.
//!
//! Names are the module paths joined by dots (`down_blocks.1.resnets.0.conv1.weight`), the same
//! names diffusers uses, so checkpoints are plain safetensors files readable by any tool.
//! The training loop keeps the optimiser state and the EMA as host arrays in this same order.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::{Tensor, TensorData};

/// One parameter: its dotted path, shape and values.
#[derive(Clone, Debug)]
pub struct NamedParam {
    /// Dotted module path.
    pub name: String,
    /// Tensor shape.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub values: Vec<f32>,
}

struct Collector {
    path: Vec<String>,
    out: Vec<NamedParam>,
    with_values: bool,
}

impl ModuleVisitor for Collector {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let tensor = param.val();
        let shape = tensor.dims().to_vec();
        let values = if self.with_values {
            tensor
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .expect("float parameter")
        } else {
            Vec::new()
        };
        self.out.push(NamedParam {
            name: self.path.join("."),
            shape,
            values,
        });
    }
}

/// All float parameters of `module` in visiting order, with values.
pub fn collect<M: Module>(module: &M) -> Vec<NamedParam> {
    let mut c = Collector {
        path: Vec::new(),
        out: Vec::new(),
        with_values: true,
    };
    module.visit(&mut c);
    c.out
}

/// Names and shapes only (no copy of the values).
pub fn layout<M: Module>(module: &M) -> Vec<(String, Vec<usize>)> {
    let mut c = Collector {
        path: Vec::new(),
        out: Vec::new(),
        with_values: false,
    };
    module.visit(&mut c);
    c.out.into_iter().map(|p| (p.name, p.shape)).collect()
}

/// Initialises every lazily initialised parameter of `module` now, in visiting order (the
/// order in which [`collect`] would have drawn them).
pub fn materialize<M: Module>(module: &M) {
    let _ = layout(module);
}

/// Number of scalar parameters.
pub fn count<M: Module>(module: &M) -> usize {
    layout(module)
        .iter()
        .map(|(_, s)| s.iter().product::<usize>())
        .sum()
}

struct Loader<'a> {
    values: &'a [Vec<f32>],
    next: usize,
    require_grad: bool,
}

impl ModuleMapper for Loader<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, tensor, mapper): (ParamId, Tensor<D>, _) = param.consume();
        let device = tensor.device();
        let shape = tensor.dims();
        let values = &self.values[self.next];
        self.next += 1;
        let mut t = Tensor::<D>::from_data(TensorData::new(values.clone(), shape), &device);
        if self.require_grad {
            t = t.require_grad();
        }
        Param::from_mapped_value(id, t, mapper)
    }
}

/// Replaces every float parameter, in visiting order, by `values` (shapes must match the
/// module's; use [`layout`] to check). Keeps parameter ids, so optimiser bookkeeping survives.
pub fn assign<M: Module>(module: M, values: &[Vec<f32>], require_grad: bool) -> M {
    let mut loader = Loader {
        values,
        next: 0,
        require_grad,
    };
    let m = module.map(&mut loader);
    assert_eq!(loader.next, values.len(), "parameter count mismatch");
    m
}
