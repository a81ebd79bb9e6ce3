//! # premier-train
//!
//! Training Premier on burn. Present so far:
//! - [`prodigy`]: an exact port of prodigyopt 1.1.2 (the optimizer of Premier's stage 1 and of
//!   direct per-user training), on flattened parameters;
//! - [`clip::clip_grad_norm`]: global gradient-norm clipping as `torch.nn.utils.clip_grad_norm_`
//!   (Lightning's `gradient_clip_val`, 0.5 in the released training);
//! - [`cache`]: the encoder caches `premier encode` writes (content-hashed safetensors shards);
//! - [`data`]: the dataset formats (official pickle, per-user CSV, folders, JSONL), validation
//!   and seeded per-user splits;
//! - [`params`]: module parameters ↔ the flat vectors the optimizer works on;
//! - [`parallel`]: a batch's rows split over threads on one device (data parallel), the gradients
//!   summed;
//! - [`stage1`]: the stage-1 objective and a training step (adapters + user table through the
//!   frozen backbone);
//! - [`checkpoint`]: stage-1 checkpoints (atomic, keep the last K) that resume bit for bit;
//! - [`sampler`]: batches of distinct users, reproducible per step;
//! - [`schedule`]: the learning-rate multiplier by step (constant as released, or a cosine tail);
//! - [`memory`]: the device memory of a stage-1 step, estimated before anything is loaded;
//! - [`metrics`]: per-step JSONL metrics and the loss-curve PNG;
//! - [`encode`]: the loop of `premier encode` (images and captions through any [`encode::Encoders`]
//!   into a cache, resumable);
//! - [`batches`]: training batches read from a cache (posterior samples, text features);
//! - [`run`]: whole runs as `premier train` / `premier cold-start` do them (TOML config,
//!   checkpoints every N steps, resume, metrics, validation hook, final files);
//! - [`validate`]: every number of a run's config checked (finite, in range) before it starts;
//! - `data_parallel` (feature `collective`): stage 1 on several devices, one peer per device,
//!   stepping as one device would on the same global batch (burn-collective all-reduce), on one
//!   node or several (their sums through node 0 over burn-communication's WebSocket transport);
//! - [`samples`]: what the loops read, encoded samples grouped by user, from a cache or memory;
//! - [`seeded`]: fresh parameters drawn from a seed, whichever threads draw at the same time;
//! - [`new_user`]: the cold-start loop of new users (one, or several at once) on any samples;
//! - [`stage2`]: cold start of a new user (linear combination or direct embedding) with
//!   [`adamw`] (released) or Prodigy.
#![warn(missing_docs)]

pub mod adamw;
pub mod batches;
pub mod cache;
pub mod checkpoint;
pub mod clip;
mod config_file;
pub mod data;
#[cfg(feature = "collective")]
pub mod data_parallel;
pub mod encode;
pub mod memory;
pub mod metrics;
pub mod new_user;
pub mod parallel;
pub mod params;
pub mod prodigy;
pub mod run;
pub mod sampler;
pub mod samples;
pub mod schedule;
pub mod seeded;
pub mod stage1;
pub mod stage2;
pub mod validate;
