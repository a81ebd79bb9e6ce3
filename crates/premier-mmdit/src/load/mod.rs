//! Loading FLUX.1 transformer checkpoints: BFL single files and diffusers folders.
//!
//! Accepted inputs (detected from the path and the keys, never from file names alone):
//! - a BFL file (`flux1-dev.safetensors`), keys as the module tree, optionally under a prefix such
//!   as `model.diffusion_model.` (ComfyUI-style files: keys outside the prefix are ignored);
//! - a diffusers transformer: one `diffusion_pytorch_model.safetensors`, or shards listed by
//!   `diffusion_pytorch_model.safetensors.index.json`, or a pipeline folder with `transformer/`;
//! - tensors in f32, f16, bf16 or f64, converted to the backend's float type.
//!
//! Files are memory-mapped and read tensor by tensor ([`premier_io`]); this module adds what is
//! FLUX's own: the key layouts, the diffusers renames, and the sizes checked against the config.

mod layout;

use std::collections::HashSet;
use std::path::Path;

use burn::prelude::*;
use premier_io::{Checkpoint, DeviceSource, HostTensor, LoadError, TensorReader};

pub use layout::{diffusers_recipe, Recipe};

use crate::config::FluxConfig;
use crate::model::Flux;
use layout::{DOUBLE_PREFIXES, SINGLE_PREFIXES};

/// How strictly a checkpoint must match the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    /// Refuse files with tensors the model does not use (default true).
    pub strict: bool,
    /// Store the weights in this float type (e.g. bf16 for a frozen backbone), each tensor cast
    /// as it arrives so no full-precision copy of the model is ever held; `None`: the backend's
    /// default float type.
    pub dtype: Option<burn::tensor::FloatDType>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            strict: true,
            dtype: None,
        }
    }
}

/// The key layout of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// BFL names, each key starting with `prefix` (often empty).
    Bfl {
        /// What every key starts with (`model.diffusion_model.` in some single files).
        prefix: String,
    },
    /// diffusers `FluxTransformer2DModel` names.
    Diffusers,
}

/// A FLUX transformer's files, read by BFL key whatever layout they are stored in.
pub struct FluxCheckpoint {
    /// The files, keys as stored (private: their own unused-key checks would ignore the prefix).
    files: Checkpoint,
    /// Which key names the files use.
    pub layout: Layout,
}

impl FluxCheckpoint {
    /// Opens a FLUX transformer: a file, a shard index, or a folder holding either (or a
    /// `transformer/` folder); the key layout (BFL with any prefix, or diffusers) is detected.
    pub fn open(path: &Path) -> Result<Self, LoadError> {
        let files = Checkpoint::open_in(path, Some("transformer"))?;
        let layout = detect_layout(&files).ok_or_else(|| LoadError::UnknownLayout {
            path: path.to_path_buf(),
            reason: "no FLUX transformer found (neither BFL `img_in.weight` nor diffusers \
                     `x_embedder.weight`)"
                .into(),
        })?;
        Ok(Self { files, layout })
    }

    /// The path the user gave.
    pub fn path(&self) -> &Path {
        &self.files.path
    }

    /// Reads the tensor with BFL key `bfl_key`, which must have shape `expected`.
    pub fn read(&mut self, bfl_key: &str, expected: &[usize]) -> Result<HostTensor, LoadError> {
        match self.layout.clone() {
            Layout::Bfl { prefix } => self
                .files
                .read_tensor(&format!("{prefix}{bfl_key}"), expected),
            Layout::Diffusers => {
                let hidden = self
                    .files
                    .shape_of("x_embedder.weight")
                    .map(|s| s[0])
                    .unwrap_or(0);
                let recipe =
                    diffusers_recipe(bfl_key, hidden).ok_or_else(|| LoadError::MissingKey {
                        path: self.files.path.clone(),
                        key: format!("{bfl_key} (no diffusers equivalent)"),
                    })?;
                match recipe {
                    Recipe::Rename(key) => self.files.read_tensor(&key, expected),
                    Recipe::SwapHalves(key) => {
                        Ok(self.files.read_tensor(&key, expected)?.swap_halves())
                    }
                    Recipe::Concat(parts) => {
                        let mut rows_left = expected[0];
                        let mut tensors = Vec::with_capacity(parts.len());
                        for (key, rows) in parts {
                            let rows = rows.min(rows_left);
                            rows_left -= rows;
                            let mut part_shape = expected.to_vec();
                            part_shape[0] = rows;
                            tensors.push(self.files.read_tensor(&key, &part_shape)?);
                        }
                        Ok(HostTensor::concat_rows(tensors))
                    }
                }
            }
        }
    }

    /// Keys under the model's prefix that no parameter used, sorted.
    pub fn unused_keys(&self) -> Vec<String> {
        match &self.layout {
            Layout::Bfl { prefix } => self.files.unused_keys_under(prefix),
            Layout::Diffusers => self.files.unused_keys_under(""),
        }
    }

    /// Compares the sizes visible in the file with `config`, so a dev file loaded with a schnell or
    /// tiny config fails with the field that differs rather than a list of missing keys.
    pub fn check_config(&self, config: &FluxConfig) -> Result<(), LoadError> {
        let (prefix, bfl) = match &self.layout {
            Layout::Bfl { prefix } => (prefix.clone(), true),
            Layout::Diffusers => (String::new(), false),
        };
        let name = |bfl_name: &str, diffusers_name: &str| {
            if bfl {
                format!("{prefix}{bfl_name}")
            } else {
                diffusers_name.to_string()
            }
        };
        let mismatch = |field: &'static str, key: String, in_config: usize, in_file: usize| {
            if in_config == in_file {
                Ok(())
            } else {
                Err(LoadError::ConfigMismatch {
                    path: self.files.path.clone(),
                    field,
                    key,
                    in_config,
                    in_file,
                })
            }
        };
        let dims = |key: &str| self.files.shape_of(key).map(<[usize]>::to_vec);

        let img_in = name("img_in.weight", "x_embedder.weight");
        if let Some(s) = dims(&img_in).filter(|s| s.len() == 2) {
            mismatch("hidden_size", img_in.clone(), config.hidden_size, s[0])?;
            mismatch("in_channels", img_in, config.in_channels, s[1])?;
        }
        let txt_in = name("txt_in.weight", "context_embedder.weight");
        if let Some(s) = dims(&txt_in).filter(|s| s.len() == 2) {
            mismatch("context_in_dim", txt_in, config.context_in_dim, s[1])?;
        }
        let vector_in = name(
            "vector_in.in_layer.weight",
            "time_text_embed.text_embedder.linear_1.weight",
        );
        if let Some(s) = dims(&vector_in).filter(|s| s.len() == 2) {
            mismatch("vec_in_dim", vector_in, config.vec_in_dim, s[1])?;
        }
        let guidance = name(
            "guidance_in.in_layer.weight",
            "time_text_embed.guidance_embedder.linear_1.weight",
        );
        let has_guidance = self.files.contains(&guidance);
        mismatch(
            "guidance_embed",
            guidance,
            config.guidance_embed as usize,
            has_guidance as usize,
        )?;
        for (field, (bfl_p, diff_p), in_config) in [
            ("depth", DOUBLE_PREFIXES, config.depth),
            (
                "depth_single_blocks",
                SINGLE_PREFIXES,
                config.depth_single_blocks,
            ),
        ] {
            let block_prefix = name(bfl_p, diff_p);
            let in_file = self.count_blocks(&block_prefix);
            mismatch(field, format!("{block_prefix}*"), in_config, in_file)?;
        }
        Ok(())
    }

    /// Number of distinct block indices `N` in keys `{prefix}N.…`.
    fn count_blocks(&self, prefix: &str) -> usize {
        self.files
            .keys()
            .filter_map(|k| {
                k.strip_prefix(prefix)?
                    .split('.')
                    .next()?
                    .parse::<usize>()
                    .ok()
            })
            .collect::<HashSet<_>>()
            .len()
    }
}

/// The layout the keys are in: diffusers if `x_embedder.weight` is there, else BFL under the
/// shortest prefix of an `img_in.weight`.
fn detect_layout(files: &Checkpoint) -> Option<Layout> {
    if files.contains("x_embedder.weight") {
        return Some(Layout::Diffusers);
    }
    files
        .keys()
        .filter_map(|k| k.strip_suffix("img_in.weight"))
        .filter(|p| p.is_empty() || p.ends_with('.'))
        .min_by_key(|p| p.len())
        .map(|p| Layout::Bfl {
            prefix: p.to_string(),
        })
}

impl TensorReader for FluxCheckpoint {
    fn read_tensor(&mut self, key: &str, expected: &[usize]) -> Result<HostTensor, LoadError> {
        self.read(key, expected)
    }
}

impl<B: Backend> Flux<B> {
    /// Loads a FLUX.1 transformer (see the [module docs](crate::load) for accepted layouts),
    /// strictly: tensors the model does not use are an error.
    pub fn load(
        path: impl AsRef<Path>,
        config: &FluxConfig,
        device: &B::Device,
    ) -> Result<Self, LoadError> {
        Self::load_with(path, config, device, LoadOptions::default())
    }

    /// [`Flux::load`] with options.
    pub fn load_with(
        path: impl AsRef<Path>,
        config: &FluxConfig,
        device: &B::Device,
        options: LoadOptions,
    ) -> Result<Self, LoadError> {
        config
            .validate()
            .map_err(|e| LoadError::Config(Box::new(e)))?;
        let mut checkpoint = FluxCheckpoint::open(path.as_ref())?;
        checkpoint.check_config(config)?;
        tracing::debug!(path = %checkpoint.path().display(), layout = ?checkpoint.layout, "loading FLUX transformer");
        let model = Self::build(
            &mut DeviceSource {
                reader: &mut checkpoint,
                device,
                prefix: String::new(),
                dtype: options.dtype,
            },
            config,
        )?;
        let unused = checkpoint.unused_keys();
        if options.strict {
            if let Some(first) = unused.first() {
                return Err(LoadError::UnexpectedKey {
                    path: checkpoint.path().to_path_buf(),
                    key: first.clone(),
                    count: unused.len(),
                });
            }
        } else if !unused.is_empty() {
            tracing::warn!(count = unused.len(), first = %unused[0], "ignored tensors the model does not use");
        }
        Ok(model)
    }
}
