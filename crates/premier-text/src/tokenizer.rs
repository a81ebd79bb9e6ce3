//! The real T5 and CLIP tokenizers, padded and truncated as FLUX's pipeline calls them.

use std::path::{Path, PathBuf};

use tokenizers::{PaddingDirection, PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::error::TextError;

/// Token ids of a batch of prompts, all padded to the same length.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizedBatch {
    /// `[batch][max_length]`.
    pub ids: Vec<Vec<i64>>,
    /// Prompts that were cut to fit `max_length` (index into the batch), as FLUX silently does.
    pub truncated: Vec<usize>,
}

/// A `tokenizer.json` with fixed-length padding and truncation.
#[derive(Clone)]
pub struct PromptTokenizer {
    tokenizer: Tokenizer,
    max_length: usize,
}

/// The tokenizers shipped with this crate (see `tokenizers/*/LICENSE-NOTE.md`).
fn shipped(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tokenizers")
        .join(name)
        .join("tokenizer.json")
}

fn fail(path: &Path, reason: String) -> TextError {
    TextError::Tokenizer {
        path: path.to_path_buf(),
        reason,
    }
}

/// Reads a `tokenizer.json`.
fn open(path: &Path) -> Result<Tokenizer, TextError> {
    if !path.is_file() {
        return Err(fail(path, "no such file".into()));
    }
    Tokenizer::from_file(path).map_err(|e| fail(path, e.to_string()))
}

impl PromptTokenizer {
    /// Loads `tokenizer.json` padding with `pad_id` to `max_length` and truncating to it.
    pub fn from_file(
        path: impl AsRef<Path>,
        max_length: usize,
        pad_id: u32,
        pad_token: &str,
    ) -> Result<Self, TextError> {
        let path = path.as_ref();
        Self::padded(open(path)?, path, max_length, pad_id, pad_token)
    }

    /// `tokenizer` (read from `path`) padding with `pad_id` to `max_length` and truncating to it.
    fn padded(
        mut tokenizer: Tokenizer,
        path: &Path,
        max_length: usize,
        pad_id: u32,
        pad_token: &str,
    ) -> Result<Self, TextError> {
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length,
                ..Default::default()
            }))
            .map_err(|e| fail(path, e.to_string()))?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(max_length),
            direction: PaddingDirection::Right,
            pad_id,
            pad_token: pad_token.into(),
            ..Default::default()
        }));
        Ok(Self {
            tokenizer,
            max_length,
        })
    }

    /// FLUX's T5 tokenizer (`google/t5-v1_1-xxl`): pad id 0, `</s>` appended; `max_length` 512 for
    /// dev, 256 for schnell.
    pub fn t5(path: impl AsRef<Path>, max_length: usize) -> Result<Self, TextError> {
        Self::from_file(path, max_length, 0, "<pad>")
    }

    /// FLUX's CLIP tokenizer (`openai/clip-vit-large-patch14`): BOS/EOS added, padded with EOS to
    /// 77. The EOS is `<|endoftext|>` (49407 in CLIP-L), or `</s>` in tokenizers that name it so.
    pub fn clip(path: impl AsRef<Path>) -> Result<Self, TextError> {
        let path = path.as_ref();
        let tokenizer = open(path)?;
        let (token, id) = ["<|endoftext|>", "</s>"]
            .into_iter()
            .find_map(|t| tokenizer.token_to_id(t).map(|id| (t, id)))
            .ok_or_else(|| {
                fail(
                    path,
                    "no end-of-text token (`<|endoftext|>` or `</s>`) to pad with".into(),
                )
            })?;
        Self::padded(tokenizer, path, 77, id, token)
    }

    /// The T5 tokenizer shipped with this crate.
    pub fn shipped_t5(max_length: usize) -> Result<Self, TextError> {
        Self::t5(shipped("t5-v1_1-xxl"), max_length)
    }

    /// The CLIP tokenizer shipped with this crate.
    pub fn shipped_clip() -> Result<Self, TextError> {
        Self::clip(shipped("clip-vit-large-patch14"))
    }

    /// Tokens every prompt is padded or truncated to.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// Ids of each prompt, padded (and if need be truncated) to `max_length`.
    pub fn encode(&self, prompts: &[&str]) -> Result<TokenizedBatch, TextError> {
        let mut ids = Vec::with_capacity(prompts.len());
        let mut truncated = Vec::new();
        for (i, prompt) in prompts.iter().enumerate() {
            let encoding = self
                .tokenizer
                .encode(*prompt, true)
                .map_err(|e| TextError::Encode {
                    prompt: prompt.to_string(),
                    reason: e.to_string(),
                })?;
            if !encoding.get_overflowing().is_empty() {
                truncated.push(i);
            }
            ids.push(encoding.get_ids().iter().map(|&id| id as i64).collect());
        }
        Ok(TokenizedBatch { ids, truncated })
    }
}
