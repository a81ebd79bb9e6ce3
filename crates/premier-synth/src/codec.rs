//! The world's "autoencoder": lossless pixel patches. A 32×32 RGB image in [-1, 1] becomes 8×8
//! tokens of 4×4×3 = 48 channels, the same packed-token layout FLUX sees from its VAE
//! (`latent_hw` 16×16, packed 2×2), so the pipeline and trainers run unchanged.

use burn::prelude::*;
use image::RgbImage;
use premier_pipeline::image_io::{rgb_to_tensor, tensor_to_rgb};

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
    let batch = tokens.dims()[0];
    let (n, p) = (TOKENS_PER_SIDE, PATCH);
    tensor_to_rgb(
        tokens
            .reshape([batch, n, n, 3, p, p])
            .permute([0, 3, 1, 4, 2, 5])
            .reshape([batch, 3, IMAGE_SIZE, IMAGE_SIZE]),
    )
}
