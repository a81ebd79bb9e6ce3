//! Errors of the [`crate::Premier`] API: each names the file, size or user at fault.

use std::fmt;
use std::path::{Path, PathBuf};

/// A size as one file has it: `file` has `name` = `size`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizeAt {
    /// The file (or folder) the size is read from.
    pub file: PathBuf,
    /// The config field or tensor dimension the size comes from.
    pub name: String,
    /// The size.
    pub size: usize,
}

impl SizeAt {
    /// `file` has `name` = `size`.
    pub fn new(file: &Path, name: &str, size: usize) -> Self {
        Self {
            file: file.to_path_buf(),
            name: name.to_string(),
            size,
        }
    }

    /// `Ok` when `other` has the same size, else the [`PremierError::SizeMismatch`] of `what`
    /// naming both.
    pub fn must_equal(self, other: SizeAt, what: &str) -> Result<(), PremierError> {
        if self.size == other.size {
            return Ok(());
        }
        Err(PremierError::SizeMismatch {
            what: what.into(),
            first: Box::new(self),
            second: Box::new(other),
        })
    }
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
        /// The part.
        part: &'static str,
        /// What would give it.
        hint: &'static str,
    },
    /// A config file that cannot be read or parsed.
    #[error("{}: {reason}", path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Two files made for different models.
    #[error("the {what} disagree: {first}, but {second}")]
    SizeMismatch {
        /// Which size (e.g. "prompt token width").
        what: String,
        /// One file's size.
        first: Box<SizeAt>,
        /// The other file's.
        second: Box<SizeAt>,
    },
    /// A user that is neither a row of the table, an id of the run, nor a user file.
    #[error("user `{user}`: {reason}")]
    UnknownUser {
        /// The user as given.
        user: String,
        /// What it could have been, and the run's users where known.
        reason: String,
    },
    /// A request that cannot be run (what is wrong with it is said).
    #[error("{0}")]
    Invalid(String),
    /// The autoencoder or the text encoders failed on a new user's images or captions.
    #[error("encoding the new user's {what}: {reason}")]
    Encode {
        /// `images` or `captions`.
        what: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// Writing an image.
    #[error("{}: {reason}", path.display())]
    Write {
        /// The file or folder.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// Reading or writing a model file: the transformer, the user table… (names the file and key).
    #[error(transparent)]
    Load(#[from] premier_io::LoadError),
    /// The text encoders or tokenizers.
    #[error(transparent)]
    Text(#[from] premier_text::TextError),
    /// The autoencoder.
    #[error(transparent)]
    Vae(#[from] premier_vae::VaeError),
    /// Loading the adapter.
    #[error(transparent)]
    Adapter(#[from] premier_adapter::AdapterError),
    /// The user table or a user file.
    #[error(transparent)]
    Users(#[from] premier_users::UserError),
    /// Reading the run's `premier.json`, or a cold start's config.
    #[error(transparent)]
    Run(#[from] premier_train::run::RunError),
    /// The generation pipeline (the request, sampling, decoding).
    #[error(transparent)]
    Pipeline(#[from] premier_pipeline::PipelineError),
    /// A cold-start step.
    #[error(transparent)]
    Train(#[from] premier_train::stage1::TrainError),
}
