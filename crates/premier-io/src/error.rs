//! Why a model file could not be read or written, for any model: every variant names the file,
//! and the key where one is involved.

use std::path::PathBuf;

/// Why a checkpoint could not be loaded or saved. Every variant names the file, and the key where
/// one is involved (the key as stored in the file).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file cannot be read.
    #[error("{path}: cannot read: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// Not a safetensors file, or one whose header or offsets are inconsistent.
    #[error("{path}: not a valid safetensors file: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the tensor where one is at fault.
        reason: String,
    },
    /// A `*.safetensors.index.json` that cannot be used.
    #[error("{path}: bad shard index: {reason}")]
    BadIndex {
        /// The index file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A folder holding no `.safetensors` file nor shard index (nor the model's sub-folder).
    #[error("{path}: no .safetensors file or `*.safetensors.index.json` found{hint}")]
    NoSafetensors {
        /// The folder given.
        path: PathBuf,
        /// What else was looked for (a sub-folder, say), or empty.
        hint: String,
    },
    /// Files whose keys are in no layout the model knows.
    #[error("{path}: {reason}")]
    UnknownLayout {
        /// The file or folder given.
        path: PathBuf,
        /// Which layouts were looked for, by the keys that mark them.
        reason: String,
    },
    /// A tensor the model needs is not in the file.
    #[error("{path}: missing tensor `{key}`")]
    MissingKey {
        /// The file.
        path: PathBuf,
        /// The key, as the file would store it.
        key: String,
    },
    /// A tensor under the model's prefix that the model does not use (strict loading).
    #[error("{path}: unexpected tensor `{key}` ({count} unused in all; the file holds another model, or a later version of this one)")]
    UnexpectedKey {
        /// The file.
        path: PathBuf,
        /// The first unused key.
        key: String,
        /// How many keys were unused.
        count: usize,
    },
    /// A tensor of another shape than the config calls for.
    #[error("{path}: tensor `{key}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        /// The file.
        path: PathBuf,
        /// The tensor's key.
        key: String,
        /// The shape the config calls for.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },
    /// A tensor stored in a type the loader does not convert.
    #[error("{path}: tensor `{key}` has dtype {dtype}; supported are F32, F16, BF16 and F64")]
    UnsupportedDtype {
        /// The file.
        path: PathBuf,
        /// The tensor's key.
        key: String,
        /// The stored type.
        dtype: String,
    },
    /// A tensor with NaN or infinite values, refused where it enters.
    #[error("{path}: tensor `{key}` holds NaN or infinite values")]
    NonFinite {
        /// The file.
        path: PathBuf,
        /// The tensor's key.
        key: String,
    },
    /// Writing a file failed (the earlier file, if any, is kept).
    #[error("{path}: cannot write: {reason}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A size the file's tensors imply differs from the config's.
    #[error(
        "{path}: the file has {field} = {in_file} (from `{key}`), the config says {in_config}"
    )]
    ConfigMismatch {
        /// The file.
        path: PathBuf,
        /// The config field.
        field: &'static str,
        /// The tensor the file's size is read from.
        key: String,
        /// The config's value.
        in_config: usize,
        /// The file's value.
        in_file: usize,
    },
    /// An invalid config (the model's own config error, boxed).
    #[error("{0}")]
    Config(#[source] Box<dyn std::error::Error + Send + Sync>),
}
