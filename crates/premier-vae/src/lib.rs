//! # premier-vae
//!
//! The FLUX.1 autoencoder (BFL `modules/autoencoder.py`; diffusers `AutoencoderKL` with the FLUX
//! config): an LDM encoder to a diagonal Gaussian over 16 latent channels at 1/8 resolution, and
//! the decoder back to RGB in [-1, 1]. Loads BFL `ae.safetensors` and the diffusers `vae/` folder.
//!
//! FLUX works on *scaled* latents: [`scale_latent`] after encoding, [`unscale_latent`] before
//! decoding (scale 0.3611, shift 0.1159 for FLUX.1).
#![warn(missing_docs)]

mod config;
mod error;
mod layout;
mod model;
mod tiled;

pub use config::AutoencoderConfig;
pub use error::VaeError;
pub use model::{scale_latent, unscale_latent, Autoencoder, LatentDistribution};
pub use tiled::Tiling;
