//! Global gradient-norm clipping.

use burn::prelude::*;

/// Scales all gradients together so their global L2 norm is at most `max_norm`, exactly as
/// `torch.nn.utils.clip_grad_norm_`: the norm of the per-tensor norms, then the coefficient
/// `max_norm / (norm + 1e-6)` clamped at 1, both in f32. Returns the clipped gradients and the
/// norm before clipping. grads: any number of `[n_i]`.
pub fn clip_grad_norm<B: Backend>(
    grads: Vec<Tensor<B, 1>>,
    max_norm: f64,
) -> (Vec<Tensor<B, 1>>, f64) {
    if grads.is_empty() {
        return (grads, 0.0);
    }
    let norms: Vec<Tensor<B, 1>> = grads
        .iter()
        .map(|g| g.clone().powi_scalar(2).sum().sqrt())
        .collect();
    let total = Tensor::cat(norms, 0).powi_scalar(2).sum().sqrt();
    let total = total
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .unwrap_or_default()[0];
    let coef = (max_norm as f32 / (total + 1e-6)).min(1.0);
    (grads.into_iter().map(|g| g * coef).collect(), total as f64)
}
