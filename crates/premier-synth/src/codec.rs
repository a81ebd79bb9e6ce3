//! The world's "autoencoder": lossless pixel patches. A 32×32 RGB image in [-1, 1] becomes 8×8
//! tokens of 4×4×3 = 48 channels, the same packed-token layout FLUX sees from its VAE
//! (`latent_hw` 16×16, packed 2×2), so the pipeline and trainers run unchanged: as a
//! [`LatentCodec`] ([`PatchCodec`]) its latent is the unpacked `[12, 16, 16]` that FLUX's `pack`
//! turns into these tokens.

use burn::prelude::*;
use image::RgbImage;
use premier_mmdit::pack;
use premier_pipeline::image_io::{rgb_to_tensor, tensor_to_rgb};
use premier_pipeline::{LatentCodec, LatentSpace, PipelineError};

use crate::world::IMAGE_SIZE;

/// Pixels per token side.
pub const PATCH: usize = 4;
/// Channels per token: `PATCH² · 3`.
pub const TOKEN_CHANNELS: usize = PATCH * PATCH * 3;
/// Tokens per image side.
pub const TOKENS_PER_SIDE: usize = IMAGE_SIZE / PATCH;
/// Tokens per image.
pub const TOKENS: usize = TOKENS_PER_SIDE * TOKENS_PER_SIDE;
/// The unpacked "latent" size FLUX's position ids are built from (packing halves each side).
pub const LATENT_HW: (usize, usize) = (2 * TOKENS_PER_SIDE, 2 * TOKENS_PER_SIDE);

/// Images → tokens `[batch, TOKENS, TOKEN_CHANNELS]`, values in [-1, 1]; channel
/// `c · PATCH² + dy · PATCH + dx` of token `(ty, tx)` is pixel `(ty·PATCH + dy, tx·PATCH + dx)`.
pub fn encode<B: Backend>(images: &[&RgbImage], device: &B::Device) -> Tensor<B, 3> {
    let pixels = Tensor::cat(
        images
            .iter()
            .map(|rgb| rgb_to_tensor(rgb, device))
            .collect(),
        0,
    ); // [batch, 3, IMAGE_SIZE, IMAGE_SIZE]
    let (n, p) = (TOKENS_PER_SIDE, PATCH);
    pixels
        .reshape([images.len(), 3, n, p, n, p])
        .permute([0, 2, 4, 1, 3, 5])
        .reshape([images.len(), TOKENS, TOKEN_CHANNELS])
}

/// Tokens `[batch, TOKENS, TOKEN_CHANNELS]` → images (values clamped to [-1, 1]).
pub fn decode<B: Backend>(tokens: Tensor<B, 3>) -> Vec<RgbImage> {
    tensor_to_rgb(pixels(tokens))
}

/// Tokens `[batch, TOKENS, TOKEN_CHANNELS]` → pixels `[batch, 3, IMAGE_SIZE, IMAGE_SIZE]`.
fn pixels<B: Backend>(tokens: Tensor<B, 3>) -> Tensor<B, 4> {
    let batch = tokens.dims()[0];
    let (n, p) = (TOKENS_PER_SIDE, PATCH);
    tokens
        .reshape([batch, n, n, 3, p, p])
        .permute([0, 3, 1, 4, 2, 5])
        .reshape([batch, 3, IMAGE_SIZE, IMAGE_SIZE])
}

/// The patches as a [`LatentCodec`]: latents `[batch, TOKEN_CHANNELS / 4, 16, 16]`, which FLUX's
/// `pack` turns into the tokens [`encode`] makes.
#[derive(Debug, Clone, Copy, Default)]
pub struct PatchCodec;

impl PatchCodec {
    /// The latent space: 12 channels, 2 image pixels per latent pixel side.
    pub const SPACE: LatentSpace = LatentSpace {
        channels: TOKEN_CHANNELS / 4,
        downsampling: IMAGE_SIZE / LATENT_HW.0,
    };
}

impl<B: Backend> LatentCodec<B> for PatchCodec {
    fn space(&self) -> LatentSpace {
        Self::SPACE
    }

    fn decode(&self, latent: Tensor<B, 4>) -> Result<Tensor<B, 4>, PipelineError> {
        let dims = latent.dims();
        let (c, (h, w)) = (Self::SPACE.channels, LATENT_HW);
        if dims[1..] != [c, h, w] {
            return Err(PipelineError::Request(format!(
                "the synth world's patches decode latents of [{c}, {h}, {w}], not {:?}",
                &dims[1..]
            )));
        }
        Ok(pixels(pack(latent)))
    }
}
