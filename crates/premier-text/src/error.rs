use std::path::PathBuf;

use premier_mmdit::LoadError;

/// Errors of loading or running the text encoders and tokenizers.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    #[error("{path}: cannot load tokenizer: {reason}")]
    Tokenizer { path: PathBuf, reason: String },
    #[error("tokenizing {prompt:?}: {reason}")]
    Encode { prompt: String, reason: String },
    #[error("{path}: not a {model} config: {reason}")]
    Config {
        path: PathBuf,
        model: &'static str,
        reason: String,
    },
    #[error("token id {id} is outside the vocabulary of {vocab} entries")]
    TokenOutOfRange { id: i64, vocab: usize },
    #[error(transparent)]
    File(#[from] LoadError),
}
