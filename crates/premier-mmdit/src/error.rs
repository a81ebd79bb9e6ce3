//! Typed errors of loading and running the transformer.

use std::path::PathBuf;

/// Why a checkpoint could not be loaded. Every variant names the file, and the key where one is
/// involved (the key as stored in the file).
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
    /// No transformer in either known key layout.
    #[error("{path}: no FLUX transformer found (neither BFL `img_in.weight` nor diffusers `x_embedder.weight`; looked for a .safetensors file, a diffusers index or a `transformer/` folder)")]
    UnknownLayout {
        /// The file or folder given.
        path: PathBuf,
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
    #[error("{path}: unexpected tensor `{key}` ({count} unused in all; pass LoadOptions {{ strict: false, .. }} to ignore them)")]
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
    /// An invalid config.
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
}

/// Inputs that a forward pass cannot take.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// An input of another shape than the model and the other inputs call for.
    #[error("input `{input}` has shape {found:?}, expected {expected:?}")]
    Shape {
        /// Which input (`img`, `txt`, …).
        input: String,
        /// The shape called for.
        expected: Vec<usize>,
        /// The shape given.
        found: Vec<usize>,
    },
    /// A guidance-distilled model (dev) run without a guidance value.
    #[error("this model embeds guidance (guidance_embed = true) but FluxInput.guidance is None")]
    MissingGuidance,
    /// A Δ that does not fit the text tokens or the blocks (what is wrong is said).
    #[error("{0}")]
    Modulation(String),
    /// A sampler asked to run no step (it would return its noise as the image).
    #[error("sampling needs at least 1 step (got a schedule of {timesteps} time(s))")]
    NoSteps {
        /// Times in the schedule (at least 2 make a step).
        timesteps: usize,
    },
    /// The sampler's result holds NaN or infinite values: nothing may be decoded or written.
    #[error("the sampled latents hold NaN or infinite values after {steps} steps (diverged: check the weights, α and the guidance); nothing was decoded")]
    NonFiniteSample {
        /// Steps run.
        steps: usize,
    },
}
