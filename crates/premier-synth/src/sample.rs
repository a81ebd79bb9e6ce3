//! Drawing images from the base model, with or without Premier's Δ.

use image::RgbImage;
use premier_mmdit::{img_ids, txt_ids, Flux, FluxOps, ForwardError, TextModulation};
use premier_pipeline::{denoise, schedule, seeded_noise};
use premier_text::TextConditioning;

use crate::codec::{decode, LATENT_HW, TOKENS, TOKEN_CHANNELS};

/// Euler sampling steps used by the experiments.
pub const SAMPLING_STEPS: usize = 12;

/// One image per row of `text` (and of `delta`), starting from the noise of `seeds[i]`, in
/// `steps` Euler steps on the unshifted schedule.
pub fn sample<B: FluxOps>(
    flux: &Flux<B>,
    text: &TextConditioning<B>,
    delta: Option<&TextModulation<B>>,
    seeds: &[u64],
    steps: usize,
) -> Result<Vec<RgbImage>, ForwardError> {
    let device = text.tokens.device();
    let n = seeds.len();
    let noise = seeded_noise::<B>(seeds, TOKEN_CHANNELS, TOKENS, 1, &device)
        .reshape([n, TOKEN_CHANNELS, TOKENS])
        .swap_dims(1, 2);
    let (h, w) = LATENT_HW;
    let x0 = denoise(
        flux,
        noise,
        img_ids(n, h, w, &device),
        text.tokens.clone(),
        txt_ids(n, text.tokens.dims()[1], &device),
        text.pooled.clone(),
        None,
        &schedule(steps, TOKENS, false),
        delta,
        &mut (),
    )?;
    Ok(decode(x0))
}
