//! Prompt → FLUX conditioning, with a cache keyed by prompt text.

use std::collections::HashMap;

use burn::prelude::*;

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
    pub t5: T5Encoder<B>,
    pub clip: ClipTextEncoder<B>,
    pub t5_tokenizer: PromptTokenizer,
    pub clip_tokenizer: PromptTokenizer,
    cache: HashMap<String, TextConditioning<B>>,
}

impl<B: Backend> TextEncoder<B> {
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
            cache: HashMap::new(),
        }
    }

    /// Encodes prompts (batched; cached prompts are not recomputed): tokens `[batch, t5_len, d]`,
    /// pooled `[batch, clip_hidden]`. Prompts longer than the tokenizers' lengths are truncated as
    /// FLUX does, with a `tracing` warning.
    pub fn encode(
        &mut self,
        prompts: &[&str],
        device: &B::Device,
    ) -> Result<TextConditioning<B>, TextError> {
        let missing: Vec<&str> = {
            let mut seen = std::collections::HashSet::new();
            prompts
                .iter()
                .copied()
                .filter(|p| !self.cache.contains_key(*p) && seen.insert(*p))
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
                self.cache.insert(
                    prompt.to_string(),
                    TextConditioning {
                        tokens: tokens.clone().narrow(0, i, 1),
                        pooled: pooled.clone().narrow(0, i, 1),
                    },
                );
            }
        }
        Ok(TextConditioning::cat(
            prompts.iter().map(|p| self.cache[*p].clone()).collect(),
        ))
    }

    /// Number of cached prompts.
    pub fn cached(&self) -> usize {
        self.cache.len()
    }
}

/// Token ids `[rows][cols]` → an Int tensor `[rows, cols]`.
pub fn ids_tensor<B: Backend>(ids: &[Vec<i64>], device: &B::Device) -> Tensor<B, 2, Int> {
    let (rows, cols) = (ids.len(), ids.first().map_or(0, Vec::len));
    let flat: Vec<i64> = ids.iter().flatten().copied().collect();
    Tensor::from_data(TensorData::new(flat, [rows, cols]), device)
}
