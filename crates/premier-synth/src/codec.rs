//! The world's "autoencoder": lossless pixel patches. A 32×32 RGB image in [-1, 1] becomes 8×8
//! tokens of 4×4×3 = 48 channels, the same packed-token layout FLUX sees from its VAE
//! (`latent_hw` 16×16, packed 2×2), so the pipeline and trainers run unchanged.

use burn::prelude::*;
use image::{Rgb, RgbImage};

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
    let mut data = Vec::with_capacity(images.len() * TOKENS * TOKEN_CHANNELS);
    for image in images {
        for ty in 0..TOKENS_PER_SIDE {
            for tx in 0..TOKENS_PER_SIDE {
                for c in 0..3 {
                    for dy in 0..PATCH {
                        for dx in 0..PATCH {
                            let (x, y) = ((tx * PATCH + dx) as u32, (ty * PATCH + dy) as u32);
                            let v = image.get_pixel(x, y).0[c] as f32 / 127.5 - 1.0;
                            data.push(v);
                        }
                    }
                }
            }
        }
    }
    Tensor::from_data(
        TensorData::new(data, [images.len(), TOKENS, TOKEN_CHANNELS]),
        device,
    )
}

/// Tokens `[batch, TOKENS, TOKEN_CHANNELS]` → images (values clamped to [-1, 1]).
pub fn decode<B: Backend>(tokens: Tensor<B, 3>) -> Vec<RgbImage> {
    let batch = tokens.dims()[0];
    let data: Vec<f32> = tokens
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .unwrap_or_default();
    (0..batch)
        .map(|b| {
            let n = IMAGE_SIZE as u32;
            RgbImage::from_fn(n, n, |x, y| {
                let (x, y) = (x as usize, y as usize);
                let token = (y / PATCH) * TOKENS_PER_SIDE + x / PATCH;
                Rgb(std::array::from_fn(|c| {
                    let ch = c * PATCH * PATCH + (y % PATCH) * PATCH + x % PATCH;
                    let v = data[(b * TOKENS + token) * TOKEN_CHANNELS + ch];
                    ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8
                }))
            })
        })
        .collect()
}
