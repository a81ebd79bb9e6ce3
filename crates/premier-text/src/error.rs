use std::path::{Path, PathBuf};

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

/// What makes a [`TextError::Config`] for the config file `path` read as `model`'s.
pub(crate) fn config_error<'a>(
    path: &'a Path,
    model: &'static str,
) -> impl Fn(String) -> TextError + 'a {
    move |reason| TextError::Config {
        path: path.to_path_buf(),
        model,
        reason,
    }
}

/// The JSON file `path` as a `T`; a file that cannot be read or parsed is a
/// [`TextError::Config`] naming it and `model`.
pub(crate) fn read_json_config<T: serde::de::DeserializeOwned>(
    path: &Path,
    model: &'static str,
) -> Result<T, TextError> {
    let fail = config_error(path, model);
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| fail(e.to_string()))
}
