//! # premier
//!
//! Personalized text-to-image generation on FLUX.1 (Premier, CVPR 2026) on burn. This facade
//! re-exports the member crates and hosts the `premier` command line:
//!
//! - [`mmdit`]: the FLUX.1 transformer with the per-token text-modulation hook, and its loaders;
//! - [`adapter`]: the block-shared and block-distinct preference adapters;
//! - [`users`]: user embeddings, per-user files and linear-combination cold start;
//! - [`losses`]: flow matching and dispersion losses;
//! - [`text`], [`vae`]: the T5/CLIP text encoders and the FLUX autoencoder;
//! - [`pipeline`]: schedule, sampler and personalized generation;
//! - [`train`]: Prodigy, datasets, stage-1 and cold-start trainers, checkpoints;
//! - [`synth`]: the synthetic preference world, its scorers and base model (the quickstart);
//! - [`encoders`]: FLUX.1's VAE, T5 and CLIP as `premier encode`'s [`train::encode::Encoders`];
//! - [`gpu_check`]: the prepared GPU check (parity on the device, timed FLUX.1-dev-size work);
//! - [`allocator`]: keeps freed buffers in the process (glibc `mallopt`), for binaries to opt into;
//! - [`cli`]: the `premier` command (`generate`, `encode`, `train`, `cold-start`, `synth export`).
//!
//! Backends: Flex (CPU, default feature `flex`), CUDA (`cuda`), wgpu (`wgpu`).

pub mod allocator;
pub mod cli;
pub mod encoders;
pub mod gpu_check;

pub use premier_adapter as adapter;
pub use premier_losses as losses;
pub use premier_mmdit as mmdit;
pub use premier_pipeline as pipeline;
pub use premier_synth as synth;
pub use premier_text as text;
pub use premier_train as train;
pub use premier_users as users;
pub use premier_vae as vae;
