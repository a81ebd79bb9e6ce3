//! Drawing images from the base model, with or without Premier's Δ: the pipeline's one
//! noise → denoise → decode path, on the synth world's [`PatchCodec`].

use image::RgbImage;
use premier_mmdit::{Flux, FluxOps, TextModulation};
use premier_pipeline::image_io::tensor_to_rgb;
use premier_pipeline::{denoise_latents, LatentCodec, PipelineError, Sampling};
use premier_text::TextConditioning;

use crate::codec::PatchCodec;
use crate::world::IMAGE_SIZE;

/// Euler sampling steps used by the experiments.
pub const SAMPLING_STEPS: usize = 12;

/// How the synth world draws: `IMAGE_SIZE`² images, unshifted schedule (like schnell, no
/// guidance embedding).
pub fn sampling(seeds: &[u64], steps: usize) -> Sampling<'_> {
    Sampling {
        seeds,
        width: IMAGE_SIZE,
        height: IMAGE_SIZE,
        steps,
        guidance: 0.0,
        shift: false,
    }
}

/// One image per row of `text` (and of `delta`), starting from the noise of `seeds[i]`, in
/// `steps` Euler steps on the unshifted schedule.
pub fn sample<B: FluxOps>(
    flux: &Flux<B>,
    text: &TextConditioning<B>,
    delta: Option<&TextModulation<B>>,
    seeds: &[u64],
    steps: usize,
) -> Result<Vec<RgbImage>, PipelineError> {
    let latent = denoise_latents(
        flux,
        &sampling(seeds, steps),
        PatchCodec::SPACE,
        text,
        delta,
        &mut (),
    )?;
    Ok(tensor_to_rgb(PatchCodec.decode(latent)?))
}
