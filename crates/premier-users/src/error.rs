use std::path::PathBuf;

use premier_io::LoadError;

/// Errors of looking up, loading or saving user embeddings.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// A row past the table's users.
    #[error("unknown user {id}: the table has users 0..{users}")]
    UnknownUser {
        /// The row asked for.
        id: usize,
        /// The table's users.
        users: usize,
    },
    /// A tensor of another shape than the table's or the user's sizes call for.
    #[error("{path}: tensor `{key}` has shape {found:?}, expected {expected}")]
    WrongShape {
        /// The file.
        path: PathBuf,
        /// The tensor's key.
        key: String,
        /// The shape expected, worded with the sizes it comes from.
        expected: String,
        /// The shape in the file.
        found: Vec<usize>,
    },
    /// A user file without the tensor its kind keeps.
    #[error("{path}: no tensor `{key}` (the file has: {found})")]
    MissingKey {
        /// The file.
        path: PathBuf,
        /// The key looked for.
        key: String,
        /// The keys the file has, comma-separated.
        found: String,
    },
    /// Reading or writing the file (names the file and key).
    #[error(transparent)]
    File(#[from] LoadError),
}
