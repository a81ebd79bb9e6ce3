//! Typed errors of loading and running the transformer.

use std::path::PathBuf;

/// Why a checkpoint could not be loaded. Every variant names the file, and the key where one is
/// involved (the key as stored in the file).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a valid safetensors file: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{path}: bad shard index: {reason}")]
    BadIndex { path: PathBuf, reason: String },
    #[error("{path}: no FLUX transformer found (neither BFL `img_in.weight` nor diffusers `x_embedder.weight`; looked for a .safetensors file, a diffusers index or a `transformer/` folder)")]
    UnknownLayout { path: PathBuf },
    #[error("{path}: missing tensor `{key}`")]
    MissingKey { path: PathBuf, key: String },
    #[error("{path}: unexpected tensor `{key}` ({count} unused in all; pass LoadOptions {{ strict: false, .. }} to ignore them)")]
    UnexpectedKey {
        path: PathBuf,
        key: String,
        count: usize,
    },
    #[error("{path}: tensor `{key}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        path: PathBuf,
        key: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("{path}: tensor `{key}` has dtype {dtype}; supported are F32, F16, BF16 and F64")]
    UnsupportedDtype {
        path: PathBuf,
        key: String,
        dtype: String,
    },
    #[error("{path}: tensor `{key}` holds NaN or infinite values")]
    NonFinite { path: PathBuf, key: String },
    #[error("{path}: cannot write: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error(
        "{path}: the file has {field} = {in_file} (from `{key}`), the config says {in_config}"
    )]
    ConfigMismatch {
        path: PathBuf,
        field: &'static str,
        key: String,
        in_config: usize,
        in_file: usize,
    },
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
}

/// Inputs that a forward pass cannot take.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("input `{input}` has shape {found:?}, expected {expected:?}")]
    Shape {
        input: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("this model embeds guidance (guidance_embed = true) but FluxInput.guidance is None")]
    MissingGuidance,
    #[error("{0}")]
    Modulation(String),
    /// A sampler asked to run no step (it would return its noise as the image).
    #[error("sampling needs at least 1 step (got a schedule of {timesteps} time(s))")]
    NoSteps { timesteps: usize },
    /// The sampler's result holds NaN or infinite values: nothing may be decoded or written.
    #[error("the sampled latents hold NaN or infinite values after {steps} steps (diverged: check the weights, α and the guidance); nothing was decoded")]
    NonFiniteSample { steps: usize },
}
