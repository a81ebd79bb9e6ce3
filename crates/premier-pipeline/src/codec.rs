//! The latent space images are drawn in and the way back to pixels: one noise → denoise →
//! decode path for every model, whether its latents come from FLUX's autoencoder or from the
//! synth world's pixel patches. (Encoding for training goes through `premier_train`'s
//! `Encoders`, which keeps posteriors, not single latents.)

use burn::prelude::*;
use premier_vae::{unscale_latent, Autoencoder, AutoencoderConfig, Tiling};

use crate::error::PipelineError;

/// The shape of a latent space: channels per latent pixel, and image pixels per latent pixel
/// side. FLUX packs 2 × 2 latent pixels into a token, so an image side must be a multiple of
/// `2 · downsampling`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatentSpace {
    /// Channels of the (unpacked) latent: 16 for FLUX.1's autoencoder.
    pub channels: usize,
    /// Image pixels per latent pixel side: 8 for FLUX.1's autoencoder.
    pub downsampling: usize,
}

impl LatentSpace {
    /// The latent `(h, w)` of a `height × width` image.
    pub fn latent_hw(&self, height: usize, width: usize) -> (usize, usize) {
        (height / self.downsampling, width / self.downsampling)
    }
}

impl From<&AutoencoderConfig> for LatentSpace {
    fn from(config: &AutoencoderConfig) -> Self {
        Self {
            channels: config.latent_channels,
            downsampling: config.downsampling(),
        }
    }
}

/// Latents back to images.
pub trait LatentCodec<B: Backend> {
    /// The latent space [`LatentCodec::decode`] reads.
    fn space(&self) -> LatentSpace;

    /// Latents `[images, channels, h, w]` (as the denoiser draws them) → images
    /// `[images, 3, h · downsampling, w · downsampling]` in [-1, 1].
    fn decode(&self, latent: Tensor<B, 4>) -> Result<Tensor<B, 4>, PipelineError>;
}

/// FLUX's autoencoder as a codec: the denoiser's latents are `(z − shift) · scale`, decoded
/// whole or in `tiling`'s tiles.
pub struct VaeCodec<'a, B: Backend> {
    /// The autoencoder.
    pub vae: &'a Autoencoder<B>,
    /// Its config (latent channels, scale and shift).
    pub config: &'a AutoencoderConfig,
    /// Decode in tiles (less memory for large images; approximate near the seams); `None`:
    /// whole.
    pub tiling: Option<Tiling>,
}

impl<B: Backend> LatentCodec<B> for VaeCodec<'_, B> {
    fn space(&self) -> LatentSpace {
        self.config.into()
    }

    fn decode(&self, latent: Tensor<B, 4>) -> Result<Tensor<B, 4>, PipelineError> {
        let z = unscale_latent(latent, self.config);
        Ok(match self.tiling {
            Some(tiling) => self.vae.try_decode_tiled(z, tiling)?,
            None => self.vae.try_decode(z)?,
        })
    }
}
