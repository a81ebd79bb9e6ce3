//! # premier-adapter
//!
//! Premier's two preference adapters (SPEC §3), exactly as the official `CLIPModAdapter_2`:
//! a block-shared net (`net`) whose output Δ_shared `[batch, txt_tokens, hidden]` is added in every
//! double block, and a block-distinct net (`net2`) whose output Δ_distinct
//! `[batch, txt_tokens, blocks, hidden]` has one direction per double block. Both are
//! cross-attention resamplers with the prompt's T5 tokens as queries and the user's embedding
//! tokens as keys and values.
//!
//! The adapters do not see the timestep: compute Δ once per (prompt, user) and reuse it for every
//! sampling step.
//!
//! ```
//! use burn::backend::Flex;
//! use burn::prelude::*;
//! use premier_adapter::{AdapterConfig, PreferenceAdapter};
//!
//! let device = Default::default();
//! let config = AdapterConfig::small(32, 8, 16, 2); // text dim, user dim, hidden, blocks
//! let adapter = PreferenceAdapter::<Flex>::init(&config, &device).unwrap();
//! let text = Tensor::<Flex, 3>::zeros([1, 5, 32], &device); // T5 tokens
//! let user = Tensor::<Flex, 3>::zeros([1, 4, 8], &device); // user embedding tokens
//! let delta = adapter.forward(text, user);
//! assert_eq!(delta.distinct.unwrap().dims(), [1, 5, 2, 16]);
//! ```
#![warn(missing_docs)]

mod adapter;
mod config;
mod init;
mod resampler;

pub use adapter::{AdapterError, PreferenceAdapter};
pub use config::AdapterConfig;
pub use init::{AdapterInit, SmallStdInit, UnknownAdapterInit};
pub use resampler::{AdaLayerNorm, MultiheadAttention, PerceiverBlock, TextImageResampler};
