//! Moving a module's parameters to and from the flat vectors [`crate::prodigy::Prodigy`] works on.
//!
//! Order is burn's visiting order (field order, recursively), the same for every call on modules of
//! the same structure, so optimizer state stays matched to its parameter.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

/// The first value of a one-element tensor as f64 (read in the tensor's own precision; NaN if
/// empty).
pub fn scalar<B: Backend>(t: Tensor<B, 1>) -> f64 {
    t.into_data()
        .convert::<f64>()
        .into_vec::<f64>()
        .ok()
        .and_then(|v| v.first().copied())
        .unwrap_or(f64::NAN)
}

struct Values<B: Backend> {
    out: Vec<Tensor<B, 1>>,
}

impl<B: Backend> ModuleVisitor<B> for Values<B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let n = param.val().shape().num_elements();
        self.out.push(param.val().reshape([n]));
    }
}

/// Every float parameter of `module`, flattened: `[n_i]` each, in visiting order.
pub fn flat_values<B: Backend, M: Module<B>>(module: &M) -> Vec<Tensor<B, 1>> {
    let mut v = Values { out: Vec::new() };
    module.visit(&mut v);
    v.out
}

/// Collects each float parameter's path, `field.field.…` as the module derive names them.
struct Names {
    path: Vec<String>,
    out: Vec<String>,
}

impl<B: Backend> ModuleVisitor<B> for Names {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, _param: &Param<Tensor<B, D>>) {
        self.out.push(self.path.join("."));
    }
}

/// The name of every float parameter of `module` (its path of fields, e.g.
/// `adapter.net.proj_in.weight`), in [`flat_values`] order: what optimizer state is keyed by,
/// so that a checkpoint is read by name, not by position.
pub fn param_names<B: Backend, M: Module<B>>(module: &M) -> Vec<String> {
    let mut v = Names {
        path: Vec::new(),
        out: Vec::new(),
    };
    module.visit(&mut v);
    v.out
}

struct Grads<'a, B: AutodiffBackend> {
    grads: &'a B::Gradients,
    out: Vec<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Grads<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let value = param.val();
        let n = value.shape().num_elements();
        let grad = value
            .grad(self.grads)
            .unwrap_or_else(|| value.inner().zeros_like());
        self.out.push(grad.reshape([n]));
    }
}

/// The gradient of every float parameter of `module` (zeros where none flowed), flattened, on the
/// inner backend: `[n_i]` each, in visiting order.
pub fn flat_grads<B: AutodiffBackend, M: Module<B>>(
    module: &M,
    grads: &B::Gradients,
) -> Vec<Tensor<B::InnerBackend, 1>> {
    let mut v = Grads {
        grads,
        out: Vec::new(),
    };
    module.visit(&mut v);
    v.out
}

struct Assign<B: Backend> {
    values: std::vec::IntoIter<Tensor<B, 1>>,
}

impl<B: Backend> ModuleMapper<B> for Assign<B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, old, mapper) = param.consume();
        let dims = old.dims();
        let value = self
            .values
            .next()
            .expect("one value per parameter, as returned by flat_values")
            .reshape(dims);
        // New values start a fresh graph: they are leaves, tracked if the old parameter was.
        let value = value.detach();
        let value = if old.is_require_grad() {
            value.require_grad()
        } else {
            value
        };
        Param::from_mapped_value(id, value, mapper)
    }
}

/// `module` with its float parameters replaced by `values` (as [`flat_values`] orders them), keeping
/// parameter ids and whether each requires a gradient.
///
/// # Panics
/// If `values` has fewer entries than the module has parameters.
pub fn assign_flat<B: Backend, M: Module<B>>(module: M, values: Vec<Tensor<B, 1>>) -> M {
    module.map(&mut Assign {
        values: values.into_iter(),
    })
}

struct Register<B: AutodiffBackend> {
    grads: std::vec::IntoIter<Tensor<B::InnerBackend, 1>>,
    out: burn::optim::GradientsParams,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Register<B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(grad) = self.grads.next() {
            let dims = param.val().dims();
            self.out
                .register::<B::InnerBackend, D>(param.id, grad.reshape(dims));
        }
    }
}

/// Flat gradients (as [`flat_grads`] orders them) as burn's `GradientsParams` for `module`, for
/// burn's optimizers: every parameter gets its entry (zeros where none flowed).
pub fn gradients_params<B: AutodiffBackend, M: Module<B>>(
    module: &M,
    grads: Vec<Tensor<B::InnerBackend, 1>>,
) -> burn::optim::GradientsParams {
    let mut v = Register::<B> {
        grads: grads.into_iter(),
        out: burn::optim::GradientsParams::new(),
    };
    module.visit(&mut v);
    v.out
}

/// The flat gradients of `loss` wrt `module`'s parameters (see [`flat_grads`]).
pub fn gradients<B: AutodiffBackend, M: Module<B>>(
    module: &M,
    loss: Tensor<B, 1>,
) -> Vec<Tensor<B::InnerBackend, 1>> {
    flat_grads(module, &loss.backward())
}

/// One optimizer update of `module` with flat `grads`: optional global-norm clipping, the
/// optimizer's `step` on flat values, and the new values assigned back.
/// Returns the updated module and the gradient norm before clipping, or — when that norm is NaN
/// or infinite — the norm as the error, before the optimizer has seen anything.
pub fn apply<B: AutodiffBackend, M: Module<B>>(
    module: M,
    grads: Vec<Tensor<B::InnerBackend, 1>>,
    clip_norm: Option<f64>,
    step: impl FnOnce(
        Vec<Tensor<B::InnerBackend, 1>>,
        Vec<Tensor<B::InnerBackend, 1>>,
    ) -> Vec<Tensor<B::InnerBackend, 1>>,
) -> Result<(M, f64), f64> {
    // With no limit the coefficient clamps to 1: only the norm is computed.
    let (grads, norm) = crate::clip::clip_grad_norm(grads, clip_norm.unwrap_or(f64::INFINITY));
    if !norm.is_finite() {
        return Err(norm);
    }
    let values = flat_values(&module)
        .into_iter()
        .map(|p| p.inner())
        .collect();
    let updated = step(values, grads);
    Ok((
        assign_flat(
            module,
            updated.into_iter().map(Tensor::from_inner).collect(),
        ),
        norm,
    ))
}
