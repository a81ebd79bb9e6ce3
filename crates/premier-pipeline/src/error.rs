use std::path::PathBuf;

/// Errors of the generation pipeline; model errors are wrapped with their own messages.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("image size {width}×{height}: both sides must be positive multiples of 16")]
    Size { width: usize, height: usize },
    #[error("{0}")]
    Request(String),
    #[error("{path}: cannot read image: {reason}")]
    ReadImage { path: PathBuf, reason: String },
    #[error("{path}: cannot write image: {reason}")]
    WriteImage { path: PathBuf, reason: String },
    #[error(transparent)]
    Text(#[from] premier_text::TextError),
    #[error(transparent)]
    Vae(#[from] premier_vae::VaeError),
    #[error(transparent)]
    User(#[from] premier_users::UserError),
    #[error(transparent)]
    Forward(#[from] premier_mmdit::ForwardError),
}
