//! Prompt → FLUX conditioning, with a cache keyed by prompt text.

use std::collections::HashMap;

use burn::prelude::*;

use crate::bounded_cache::{tensor_bytes, BoundedCache};
use crate::clip::ClipTextEncoder;
use crate::error::TextError;
use crate::t5::T5Encoder;
use crate::tokenizer::PromptTokenizer;

/// What FLUX needs from the text: per-token features and the pooled vector.
#[derive(Debug, Clone)]
pub struct TextConditioning<B: Backend> {
    /// T5 tokens: `[batch, txt_tokens, 4096]`.
    pub tokens: Tensor<B, 3>,
    /// CLIP pooled: `[batch, 768]`.
    pub pooled: Tensor<B, 2>,
}

impl<B: Backend> TextConditioning<B> {
    /// Concatenates conditionings along the batch.
    pub fn cat(parts: Vec<Self>) -> Self {
        let (tokens, pooled): (Vec<_>, Vec<_>) =
            parts.into_iter().map(|p| (p.tokens, p.pooled)).unzip();
        Self {
            tokens: Tensor::cat(tokens, 0),
            pooled: Tensor::cat(pooled, 0),
        }
    }
}

/// T5 + CLIP with their tokenizers, caching each prompt's conditioning.
pub struct TextEncoder<B: Backend> {
    /// Per-token features (FLUX's `txt`).
    pub t5: T5Encoder<B>,
    /// The pooled vector (FLUX's `y`).
    pub clip: ClipTextEncoder<B>,
    /// T5's tokenizer, at the variant's length (dev: 512, schnell: 256).
    pub t5_tokenizer: PromptTokenizer,
    /// CLIP's tokenizer (77 tokens).
    pub clip_tokenizer: PromptTokenizer,
    cache: BoundedCache<String, TextConditioning<B>>,
}

/// The text cache's default budget: 32 prompts of FLUX.1-dev's f32 T5 tokens (512 × 4096).
pub const DEFAULT_TEXT_CACHE_BYTES: usize = 256 << 20;

impl<B: Backend> TextEncoder<B> {
    /// Both encoders and their tokenizers, with an empty prompt cache of
    /// [`DEFAULT_TEXT_CACHE_BYTES`].
    pub fn new(
        t5: T5Encoder<B>,
        clip: ClipTextEncoder<B>,
        t5_tokenizer: PromptTokenizer,
        clip_tokenizer: PromptTokenizer,
    ) -> Self {
        Self {
            t5,
            clip,
            t5_tokenizer,
            clip_tokenizer,
            cache: BoundedCache::new(DEFAULT_TEXT_CACHE_BYTES),
        }
    }

    /// Bounds the prompt cache to `bytes` (0: no cache), evicting the least recently used.
    pub fn set_cache_budget(&mut self, bytes: usize) {
        self.cache.set_budget(bytes);
    }

    /// Encodes prompts (batched; cached prompts are not recomputed): tokens `[batch, t5_len, d]`,
    /// pooled `[batch, clip_hidden]`. Prompts longer than the tokenizers' lengths are truncated as
    /// FLUX does, with a `tracing` warning.
    pub fn encode(
        &mut self,
        prompts: &[&str],
        device: &B::Device,
    ) -> Result<TextConditioning<B>, TextError> {
        let mut found: HashMap<&str, TextConditioning<B>> = HashMap::new();
        for &p in prompts {
            if !found.contains_key(p) {
                if let Some(c) = self.cache.get(&p.to_string()) {
                    found.insert(p, c);
                }
            }
        }
        let missing: Vec<&str> = {
            let mut seen = std::collections::HashSet::new();
            prompts
                .iter()
                .copied()
                .filter(|p| !found.contains_key(*p) && seen.insert(*p))
                .collect()
        };
        if !missing.is_empty() {
            let t5_ids = self.t5_tokenizer.encode(&missing)?;
            let clip_ids = self.clip_tokenizer.encode(&missing)?;
            for &i in t5_ids.truncated.iter().chain(&clip_ids.truncated) {
                tracing::warn!(
                    prompt = missing[i],
                    "prompt truncated to the text encoders' length"
                );
            }
            let tokens = self.t5.try_forward(ids_tensor(&t5_ids.ids, device))?;
            let (_, pooled) = self.clip.try_forward(ids_tensor(&clip_ids.ids, device))?;
            for (i, prompt) in missing.iter().enumerate() {
                let c = TextConditioning {
                    tokens: tokens.clone().narrow(0, i, 1),
                    pooled: pooled.clone().narrow(0, i, 1),
                };
                let bytes = tensor_bytes(&c.tokens) + tensor_bytes(&c.pooled);
                self.cache.insert(prompt.to_string(), c.clone(), bytes);
                found.insert(prompt, c);
            }
        }
        Ok(TextConditioning::cat(
            prompts.iter().map(|p| found[*p].clone()).collect(),
        ))
    }

    /// Number of cached prompts.
    pub fn cached(&self) -> usize {
        self.cache.len()
    }

    /// Bytes the prompt cache holds.
    pub fn cached_bytes(&self) -> usize {
        self.cache.bytes()
    }
}

/// Token ids `[rows][cols]` → an Int tensor `[rows, cols]`.
pub fn ids_tensor<B: Backend>(ids: &[Vec<i64>], device: &B::Device) -> Tensor<B, 2, Int> {
    let (rows, cols) = (ids.len(), ids.first().map_or(0, Vec::len));
    let flat: Vec<i64> = ids.iter().flatten().copied().collect();
    Tensor::from_data(TensorData::new(flat, [rows, cols]), device)
}
