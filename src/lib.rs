//! # premier
//!
//! Personalized text-to-image generation on FLUX.1 (Premier, CVPR 2026) on burn.
//!
//! [`Premier`] loads FLUX.1 (a diffusers folder or single files), its text encoders and
//! autoencoder, and Premier's adapter and user table, checking every size against every other
//! before it loads; then it draws every prompt for every user and seed:
//!
//! ```no_run
//! use premier::{Premier, User};
//!
//! fn main() -> Result<(), premier::PremierError> {
//!     let mut premier = Premier::<burn::backend::Flex>::builder()
//!         .model_dir("FLUX.1-dev")
//!         .adapter("run/mod_adapter.safetensors")
//!         .user_table("run/user_embedding.safetensors")
//!         .build()?;
//!     let request = premier
//!         .request(["a cabin in the woods", "a bowl of fruit"])
//!         .users([User::Base, User::Row(17), User::Id("alice".into())])
//!         .seeds([0, 1]);
//!     let images = premier.generate(&request)?;
//!     images.save("out".as_ref())?; // user{u}_prompt{p}_seed{s}.png and grid.png
//!     Ok(())
//! }
//! ```
//!
//! The member crates are re-exported (the `premier` command line is the `premier-cli` crate):
//!
//! - [`mmdit`]: the FLUX.1 transformer with the per-token text-modulation hook, and its loaders;
//! - [`adapter`]: the block-shared and block-distinct preference adapters;
//! - [`users`]: user embeddings, per-user files and linear-combination cold start;
//! - [`losses`]: flow matching and dispersion losses;
//! - [`text`], [`vae`]: the T5/CLIP text encoders and the FLUX autoencoder;
//! - [`pipeline`]: schedule, sampler and personalized generation;
//! - [`train`]: Prodigy, datasets, stage-1 and cold-start trainers, checkpoints;
//! - [`synth`]: the synthetic preference world, its scorers and base model (the quickstart);
//! - [`eval`]: metrics on real images: CLIP-T2I, a CLIP preference proxy, win rates;
//! - [`model_files`]: the files of a FLUX.1 model, their configs, size checks and loaders;
//! - [`encoders`]: FLUX.1's VAE, T5 and CLIP as `premier encode`'s [`train::encode::Encoders`];
//! - [`gpu_check`]: the prepared GPU check (parity on the device, timed FLUX.1-dev-size work);
//! - [`allocator`]: keeps freed buffers in the process (glibc `mallopt`), for binaries to opt into;
//!
//! Backends: Flex (CPU, default feature `flex`), CUDA (`cuda`), wgpu (`wgpu`).
#![warn(missing_docs)]

pub mod allocator;
pub mod encoders;
mod error;
pub mod gpu_check;
mod images;
pub mod model_files;
pub mod personalized;

pub use error::{PremierError, SizeAt};
pub use images::{ImageRequest, Images};
pub use model_files::{ModelConfigs, ModelFiles, ModelPaths, Variant};
pub use personalized::{
    personalization_sizes, resolve_user, LikedImages, Personalization, Premier, PremierBuilder,
    User, RELEASED_USERS, RELEASED_USER_TOKENS,
};

pub use premier_adapter as adapter;
pub use premier_eval as eval;
pub use premier_io as io;
pub use premier_losses as losses;
pub use premier_mmdit as mmdit;
pub use premier_pipeline as pipeline;
pub use premier_synth as synth;
pub use premier_text as text;
pub use premier_train as train;
pub use premier_users as users;
pub use premier_vae as vae;
