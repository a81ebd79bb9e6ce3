use std::path::PathBuf;

/// Errors of the generation pipeline; model errors are wrapped with their own messages.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// A size the autoencoder and FLUX's packing cannot take.
    #[error("image size {width}×{height}: both sides must be positive multiples of 16")]
    Size {
        /// Asked width in pixels.
        width: usize,
        /// Asked height in pixels.
        height: usize,
    },
    /// A request that cannot run (what is wrong with it is said).
    #[error("{0}")]
    Request(String),
    /// An image file that cannot be read.
    #[error("{path}: cannot read image: {reason}")]
    ReadImage {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// An image file that cannot be written.
    #[error("{path}: cannot write image: {reason}")]
    WriteImage {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The text encoders.
    #[error(transparent)]
    Text(#[from] premier_text::TextError),
    /// The autoencoder.
    #[error(transparent)]
    Vae(#[from] premier_vae::VaeError),
    /// Looking up or reading a user.
    #[error(transparent)]
    User(#[from] premier_users::UserError),
    /// The transformer's forward.
    #[error(transparent)]
    Forward(#[from] premier_mmdit::ForwardError),
}
