//! # premier-synth
//!
//! A small world where the truth is known, so Premier can be seen working end to end on a CPU:
//! - [`world`]: prompts that name only content (shape, size, position) and users whose tacit
//!   taste decides the style (palette, background and texture, which have words, and the
//!   background pattern, which has none);
//! - [`render`]: the procedural images;
//! - [`score`]: scorers that read only pixels (preference, win rate, prompt fidelity, distance);
//! - [`evaluate`], [`experiment`], [`report`]: the quickstart: every method on the same prompts
//!   and noise, paired with the base, user-clustered standard errors, the paper's claims;
//! - [`codec`]: pixels ↔ FLUX's packed tokens (lossless 4×4 patches);
//! - [`text`]: a word-level tokenizer and learned embeddings giving FLUX's text conditioning;
//! - [`base`]: the base model (a small FLUX.1-shaped transformer + text encoder), shipped in
//!   `base/`, [`pretrain`] that reproduces it and [`quality`] that measures what it can draw.
#![warn(missing_docs)]

pub mod base;
pub mod codec;
pub mod encoders;
pub mod evaluate;
pub mod experiment;
pub mod export;
pub mod pretrain;
pub mod quality;
pub mod render;
pub mod report;
pub mod sample;
pub mod score;
pub mod text;
pub mod world;
