use premier_text::TextError;

/// Errors of the metrics.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// Loading or running CLIP (names the file, key or what is wrong with an image).
    #[error(transparent)]
    Clip(#[from] TextError),
    /// Reading a weights file (names the file and key).
    #[error(transparent)]
    Weights(#[from] premier_io::LoadError),
    /// A user the scorer has no liked images of.
    #[error("no liked images of user {0:?} to score against")]
    UnknownUser(String),
    /// Inputs that do not pair up (what is wrong is said).
    #[error("{0}")]
    Mismatch(String),
}
