//! # premier-text
//!
//! The two text encoders FLUX.1 conditions on, loaded from the Hugging Face files:
//! - [`T5Encoder`] (T5-v1.1-XXL encoder): per-token features `[batch, 512, 4096]`, called **without**
//!   an attention mask, padding included, as FLUX does;
//! - [`ClipTextEncoder`] (CLIP ViT-L/14 text tower): the pooled vector `[batch, 768]` at the EOS token;
//! - [`ClipVisionEncoder`] and [`ClipModel`] (both CLIP towers and their projections): image and
//!   text features in CLIP's shared space, for the evaluation metrics, with CLIP's image
//!   preprocessing ([`ClipImageProcessor`], transformers' PIL backend);
//! - [`PromptTokenizer`]: the real tokenizers (shipped in this crate, see `tokenizers/`), padded and
//!   truncated as FLUX's pipeline does;
//! - [`TextEncoder`]: both, with a cache keyed by prompt (bounded in bytes, least recently
//!   used evicted first: [`bounded_cache`]), giving [`TextConditioning`].
#![warn(missing_docs)]

pub mod bounded_cache;
mod clip;
mod clip_image;
mod clip_vision;
mod encoder;
mod error;
mod t5;
mod tokenizer;

pub use clip::{ClipTextConfig, ClipTextEncoder};
pub use clip_image::{ClipImageProcessor, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD};
pub use clip_vision::{ClipConfig, ClipModel, ClipVisionConfig, ClipVisionEncoder};
pub use encoder::{ids_tensor, TextConditioning, TextEncoder, DEFAULT_TEXT_CACHE_BYTES};
pub use error::TextError;
pub use t5::{relative_position_bucket, T5Config, T5Encoder};
pub use tokenizer::{PromptTokenizer, TokenizedBatch};
