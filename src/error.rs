//! Errors of the [`crate::Premier`] API: each names the file, size or user at fault.

use std::fmt;
use std::path::PathBuf;

/// A size as one file has it: `file` has `name` = `size`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizeAt {
    pub file: PathBuf,
    /// The config field or tensor dimension the size comes from.
    pub name: String,
    pub size: usize,
}

impl fmt::Display for SizeAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} has {} = {}",
            self.file.display(),
            self.name,
            self.size
        )
    }
}

/// What can go wrong building a [`crate::Premier`] or generating with it.
#[derive(Debug, thiserror::Error)]
pub enum PremierError {
    /// A model part was not given, neither alone nor through a model folder.
    #[error("no {part}: give {hint}")]
    MissingPart {
        part: &'static str,
        hint: &'static str,
    },
    /// A config file that cannot be read or parsed.
    #[error("{}: {reason}", path.display())]
    Config { path: PathBuf, reason: String },
    /// Two files made for different models.
    #[error("the {what} disagree: {first}, but {second}")]
    SizeMismatch {
        what: String,
        first: Box<SizeAt>,
        second: Box<SizeAt>,
    },
    /// A user that is neither a row of the table, an id of the run, nor a user file.
    #[error("user `{user}`: {reason}")]
    UnknownUser { user: String, reason: String },
    /// A request that cannot be run (what is wrong with it is said).
    #[error("{0}")]
    Invalid(String),
    /// The autoencoder or the text encoders failed on a new user's images or captions.
    #[error("encoding the new user's {what}: {reason}")]
    Encode { what: &'static str, reason: String },
    /// Writing an image.
    #[error("{}: {reason}", path.display())]
    Write { path: PathBuf, reason: String },
    #[error(transparent)]
    Flux(#[from] premier_mmdit::LoadError),
    #[error(transparent)]
    Text(#[from] premier_text::TextError),
    #[error(transparent)]
    Vae(#[from] premier_vae::VaeError),
    #[error(transparent)]
    Adapter(#[from] premier_adapter::AdapterError),
    #[error(transparent)]
    Users(#[from] premier_users::UserError),
    #[error(transparent)]
    Run(#[from] premier_train::run::RunError),
    #[error(transparent)]
    Pipeline(#[from] premier_pipeline::PipelineError),
    #[error(transparent)]
    Train(#[from] premier_train::stage1::TrainError),
}
