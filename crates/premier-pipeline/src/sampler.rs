//! The Euler flow sampler (BFL `sampling.py denoise`).

use burn::prelude::*;
use premier_mmdit::{Flux, FluxInput, FluxOps, ForwardError, TextModulation};

/// Called after every step with (step index, number of steps).
pub trait StepObserver {
    /// `done` of `total` steps are finished.
    fn step(&mut self, done: usize, total: usize);
}

impl StepObserver for () {
    fn step(&mut self, _: usize, _: usize) {}
}

impl<F: FnMut(usize, usize)> StepObserver for F {
    fn step(&mut self, done: usize, total: usize) {
        self(done, total)
    }
}

/// Integrates the flow from `timesteps[0]` to the last entry: at each step
/// `img ← img + (t_next − t)·v(img, t)`. `modulation` (Premier's Δ) is the same at every step.
///
/// img: `[batch, img_tokens, in_channels]` (packed), other inputs as [`FluxInput`];
/// guidance: `[batch]` or `None` for schnell → the final packed latent.
#[allow(clippy::too_many_arguments)]
pub fn denoise<B: FluxOps>(
    flux: &Flux<B>,
    mut img: Tensor<B, 3>,
    img_ids: Tensor<B, 3>,
    txt: Tensor<B, 3>,
    txt_ids: Tensor<B, 3>,
    y: Tensor<B, 2>,
    guidance: Option<Tensor<B, 1>>,
    timesteps: &[f32],
    modulation: Option<&TextModulation<B>>,
    observer: &mut impl StepObserver,
) -> Result<Tensor<B, 3>, ForwardError> {
    let batch = img.dims()[0];
    let device = img.device();
    if timesteps.len() < 2 {
        return Err(ForwardError::NoSteps {
            timesteps: timesteps.len(),
        });
    }
    let total = timesteps.len() - 1;
    for (i, pair) in timesteps.windows(2).enumerate() {
        let (t_curr, t_prev) = (pair[0], pair[1]);
        let input = FluxInput {
            img: img.clone(),
            img_ids: img_ids.clone(),
            txt: txt.clone(),
            txt_ids: txt_ids.clone(),
            timesteps: Tensor::full([batch], t_curr, &device),
            y: y.clone(),
            guidance: guidance.clone(),
        };
        let pred = flux.try_forward(input, modulation)?;
        img = img + pred * (t_prev as f64 - t_curr as f64);
        observer.step(i + 1, total);
    }
    // NaN propagates, so one check of the result covers every step.
    let finite = img
        .clone()
        .is_finite()
        .int()
        .min()
        .into_scalar()
        .elem::<i64>()
        == 1;
    if !finite {
        return Err(ForwardError::NonFiniteSample { steps: total });
    }
    Ok(img)
}
