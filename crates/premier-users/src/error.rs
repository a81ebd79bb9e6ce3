use std::path::PathBuf;

use premier_mmdit::LoadError;

/// Errors of looking up, loading or saving user embeddings.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("unknown user {id}: the table has users 0..{users}")]
    UnknownUser { id: usize, users: usize },
    #[error("{path}: tensor `{key}` has shape {found:?}, expected {expected}")]
    WrongShape {
        path: PathBuf,
        key: String,
        expected: String,
        found: Vec<usize>,
    },
    #[error("{path}: no tensor `{key}` (the file has: {found})")]
    MissingKey {
        path: PathBuf,
        key: String,
        found: String,
    },
    #[error(transparent)]
    File(#[from] LoadError),
}
