use std::path::PathBuf;

use premier_io::LoadError;

/// Errors of loading or running the text encoders and tokenizers.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    /// A `tokenizer.json` that cannot be read or used.
    #[error("{path}: cannot load tokenizer: {reason}")]
    Tokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A prompt the tokenizer fails on.
    #[error("tokenizing {prompt:?}: {reason}")]
    Encode {
        /// The prompt.
        prompt: String,
        /// What went wrong.
        reason: String,
    },
    /// A `config.json` that is not the model's.
    #[error("{path}: not a {model} config: {reason}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// Which model's config it was read as (T5 or CLIP).
        model: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A token id the embedding table has no row for.
    #[error("token id {id} is outside the vocabulary of {vocab} entries")]
    TokenOutOfRange {
        /// The id.
        id: i64,
        /// The vocabulary's size.
        vocab: usize,
    },
    /// Pixels the vision tower cannot take (what is wrong with them is said).
    #[error("image: {reason}")]
    Image {
        /// What is wrong.
        reason: String,
    },
    /// Reading the weights (names the file and key).
    #[error(transparent)]
    File(#[from] LoadError),
}
