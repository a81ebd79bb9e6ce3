//! # premier-pipeline
//!
//! From prompt and user to pixels with FLUX.1 and Premier:
//! - [`schedule`]: BFL `get_schedule` (resolution-dependent shift for dev, unshifted for schnell);
//! - [`denoise`]: the Euler flow sampler, with an optional per-token text modulation that is
//!   computed once and reused at every step;
//! - [`codec`]: the latent space images are drawn in and the decoder back to pixels, one
//!   [`denoise_latents`] → [`LatentCodec::decode`] path for FLUX's autoencoder and the synth world;
//! - [`Generator`]: prompts + users + size + steps + guidance + seed → images, with a preference
//!   strength α (0 = plain FLUX, 1 = the paper);
//! - [`image_io`]: decode to tensors, save PNGs, and grids (rows = users, columns = prompts).
#![warn(missing_docs)]

pub mod codec;
mod error;
mod generator;
pub mod image_io;
pub mod memory;
mod noise;
mod sampler;
mod schedule;

pub use codec::{LatentCodec, LatentSpace, VaeCodec};
pub use error::PipelineError;
pub use generator::{
    check_request, denoise_latents, request_modulation, DeltaCache, GenerateRequest, Generated,
    Generator, Sampling, Timings, UserChoice, DEFAULT_DELTA_CACHE_BYTES, MAX_SIDE, MAX_STEPS,
};
pub use noise::seeded_noise;
pub use sampler::{denoise, StepObserver};
pub use schedule::{schedule, time_shift_mu};
