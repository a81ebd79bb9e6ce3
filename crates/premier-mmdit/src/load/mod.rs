//! Loading FLUX.1 transformer checkpoints: BFL single files and diffusers folders.
//!
//! Accepted inputs (detected from the path and the keys, never from file names alone):
//! - a BFL file (`flux1-dev.safetensors`), keys as the module tree, optionally under a prefix such
//!   as `model.diffusion_model.` (ComfyUI-style files: keys outside the prefix are ignored);
//! - a diffusers transformer: one `diffusion_pytorch_model.safetensors`, or shards listed by
//!   `diffusion_pytorch_model.safetensors.index.json`, or a pipeline folder with `transformer/`;
//! - tensors in f32, f16, bf16 or f64, converted to the backend's float type.
//!
//! Files are memory-mapped and read tensor by tensor.

mod atomic;
mod layout;
mod safetensors_file;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::nn::Linear;
use burn::prelude::*;

pub use atomic::write_via_temp;
pub use layout::{diffusers_recipe, Recipe};
pub use safetensors_file::{write_safetensors, HostTensor, SafetensorsFile, SaveDtype};

use crate::config::FluxConfig;
use crate::error::LoadError;
use crate::model::Flux;
pub use crate::params::{ParamSource, RandomInit};
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

/// One or more safetensors files seen as one set of named tensors.
pub struct Checkpoint {
    /// The path the user gave (named in errors about the whole checkpoint).
    pub path: PathBuf,
    /// Which key names the files use.
    pub layout: Layout,
    files: Vec<SafetensorsFile>,
    /// key → index into `files`.
    index: HashMap<String, usize>,
    used: HashSet<String>,
}

impl Checkpoint {
    /// Opens a FLUX transformer: a file, a shard index, or a folder holding either (or a
    /// `transformer/` folder); the key layout (BFL with any prefix, or diffusers) is detected.
    pub fn open(path: &Path) -> Result<Self, LoadError> {
        let mut checkpoint = Self::open_plain(path)?;
        checkpoint.layout =
            detect_layout(&checkpoint.index).ok_or_else(|| LoadError::UnknownLayout {
                path: path.to_path_buf(),
            })?;
        Ok(checkpoint)
    }

    /// Opens a file, shard index or folder of any model, keys used as stored (T5, CLIP, VAE…).
    pub fn open_plain(path: &Path) -> Result<Self, LoadError> {
        let files = resolve_files(path)?
            .iter()
            .map(|f| SafetensorsFile::open(f))
            .collect::<Result<Vec<_>, _>>()?;
        let mut index = HashMap::new();
        for (i, file) in files.iter().enumerate() {
            for key in file.keys() {
                index.insert(key.to_string(), i);
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            layout: Layout::Bfl {
                prefix: String::new(),
            },
            files,
            index,
            used: HashSet::new(),
        })
    }

    /// Elements of every stored tensor: the parameter count of the model the files hold.
    pub fn stored_elements(&self) -> u64 {
        let numel = |file: &SafetensorsFile, key: &str| {
            file.shape(key)
                .map_or(0, |s| s.iter().product::<usize>() as u64)
        };
        self.index
            .iter()
            .map(|(key, &i)| numel(&self.files[i], key))
            .sum()
    }

    /// Whether the checkpoint stores `key`.
    pub fn contains(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    /// Marks `key` as used without reading it (e.g. a tied copy of another tensor).
    pub fn mark_used(&mut self, key: &str) {
        self.used.insert(key.to_string());
    }

    /// Shape of a stored tensor, if present.
    pub fn shape_of(&self, key: &str) -> Option<Vec<usize>> {
        self.stored_shape(key).map(<[usize]>::to_vec)
    }

    /// Fails with [`LoadError::UnexpectedKey`] if a stored tensor was never read.
    pub fn ensure_all_used(&self) -> Result<(), LoadError> {
        let unused = self.unused_keys();
        match unused.first() {
            Some(first) => Err(LoadError::UnexpectedKey {
                path: self.path.clone(),
                key: first.clone(),
                count: unused.len(),
            }),
            None => Ok(()),
        }
    }

    fn file_of(&self, key: &str) -> Result<&SafetensorsFile, LoadError> {
        self.index
            .get(key)
            .map(|&i| &self.files[i])
            .ok_or_else(|| LoadError::MissingKey {
                path: self.path.clone(),
                key: key.to_string(),
            })
    }

    /// Reads the stored tensor `key` (a name in the file), checking its shape if `expected` is
    /// given, and marks it used.
    fn read_stored(
        &mut self,
        key: &str,
        expected: Option<&[usize]>,
    ) -> Result<HostTensor, LoadError> {
        let file = self.file_of(key)?;
        let found = file.shape(key).unwrap_or_default().to_vec();
        if let Some(expected) = expected {
            if found != expected {
                return Err(LoadError::ShapeMismatch {
                    path: file.path.clone(),
                    key: key.to_string(),
                    expected: expected.to_vec(),
                    found,
                });
            }
        }
        let tensor = file.read(key)?;
        self.used.insert(key.to_string());
        Ok(tensor)
    }

    /// Shape of a stored tensor.
    fn stored_shape(&self, key: &str) -> Option<&[usize]> {
        self.file_of(key).ok().and_then(|f| f.shape(key))
    }

    /// Reads the tensor with BFL key `bfl_key`, which must have shape `expected`.
    pub fn read(&mut self, bfl_key: &str, expected: &[usize]) -> Result<HostTensor, LoadError> {
        match self.layout.clone() {
            Layout::Bfl { prefix } => {
                self.read_stored(&format!("{prefix}{bfl_key}"), Some(expected))
            }
            Layout::Diffusers => {
                let hidden = self
                    .stored_shape("x_embedder.weight")
                    .map(|s| s[0])
                    .unwrap_or(0);
                let recipe =
                    diffusers_recipe(bfl_key, hidden).ok_or_else(|| LoadError::MissingKey {
                        path: self.path.clone(),
                        key: format!("{bfl_key} (no diffusers equivalent)"),
                    })?;
                match recipe {
                    Recipe::Rename(key) => self.read_stored(&key, Some(expected)),
                    Recipe::SwapHalves(key) => {
                        Ok(self.read_stored(&key, Some(expected))?.swap_halves())
                    }
                    Recipe::Concat(parts) => {
                        let mut rows_left = expected[0];
                        let mut tensors = Vec::with_capacity(parts.len());
                        for (key, rows) in parts {
                            let rows = rows.min(rows_left);
                            rows_left -= rows;
                            let mut part_shape = expected.to_vec();
                            part_shape[0] = rows;
                            tensors.push(self.read_stored(&key, Some(&part_shape))?);
                        }
                        Ok(HostTensor::concat_rows(tensors))
                    }
                }
            }
        }
    }

    /// Keys under the model's prefix that no parameter used, sorted.
    pub fn unused_keys(&self) -> Vec<String> {
        let prefix = match &self.layout {
            Layout::Bfl { prefix } => prefix.as_str(),
            Layout::Diffusers => "",
        };
        let unused: BTreeSet<_> = self
            .index
            .keys()
            .filter(|k| k.starts_with(prefix) && !self.used.contains(*k))
            .cloned()
            .collect();
        unused.into_iter().collect()
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
                    path: self.path.clone(),
                    field,
                    key,
                    in_config,
                    in_file,
                })
            }
        };
        let dims = |key: &str| self.stored_shape(key).map(<[usize]>::to_vec);

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
        let has_guidance = self.index.contains_key(&guidance);
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
        self.index
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

/// Files to open for `path`.
fn resolve_files(path: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let io = |source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.is_file() {
        if path.extension().is_some_and(|e| e == "json") {
            return shard_files(path);
        }
        return Ok(vec![path.to_path_buf()]);
    }
    let mut indexes = Vec::new();
    let mut singles = Vec::new();
    for entry in std::fs::read_dir(path).map_err(io)? {
        let p = entry.map_err(io)?.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.ends_with(".safetensors.index.json") {
            indexes.push(p);
        } else if name.ends_with(".safetensors") {
            singles.push(p);
        }
    }
    indexes.sort();
    singles.sort();
    if let Some(index) = indexes.first() {
        return shard_files(index);
    }
    if singles.len() == 1 {
        return Ok(singles);
    }
    let transformer = path.join("transformer");
    if transformer.is_dir() {
        return resolve_files(&transformer);
    }
    if singles.is_empty() {
        return Err(LoadError::UnknownLayout {
            path: path.to_path_buf(),
        });
    }
    // Several unindexed files: read them all as one checkpoint.
    Ok(singles)
}

/// The shard files named by a diffusers/transformers `*.safetensors.index.json`.
fn shard_files(index: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let bad = |reason: String| LoadError::BadIndex {
        path: index.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(index).map_err(|source| LoadError::Io {
        path: index.to_path_buf(),
        source,
    })?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("no `weight_map` object".into()))?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut names = BTreeSet::new();
    for (key, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| bad(format!("`{key}` maps to a non-string")))?;
        names.insert(file.to_string());
    }
    Ok(names.into_iter().map(|n| dir.join(n)).collect())
}

fn detect_layout(index: &HashMap<String, usize>) -> Option<Layout> {
    if index.contains_key("x_embedder.weight") {
        return Some(Layout::Diffusers);
    }
    index
        .keys()
        .filter_map(|k| k.strip_suffix("img_in.weight"))
        .filter(|p| p.is_empty() || p.ends_with('.'))
        .min_by_key(|p| p.len())
        .map(|p| Layout::Bfl {
            prefix: p.to_string(),
        })
}

/// Something that hands out stored tensors by key, checking their shape.
pub trait TensorReader {
    /// The tensor `key` (in the reader's naming), which must have shape `expected`.
    fn read_tensor(&mut self, key: &str, expected: &[usize]) -> Result<HostTensor, LoadError>;
}

impl TensorReader for Checkpoint {
    fn read_tensor(&mut self, key: &str, expected: &[usize]) -> Result<HostTensor, LoadError> {
        self.read(key, expected)
    }
}

/// One safetensors file read by plain key (adapters, embeddings, optimizer state), refusing
/// NaN/inf values and remembering which keys were used.
pub struct TensorFile {
    /// The file.
    pub file: SafetensorsFile,
    used: HashSet<String>,
}

impl TensorFile {
    /// Opens `path` (memory-mapped).
    pub fn open(path: &Path) -> Result<Self, LoadError> {
        Ok(Self {
            file: SafetensorsFile::open(path)?,
            used: HashSet::new(),
        })
    }

    /// Keys that no read has asked for, sorted.
    pub fn unused_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .file
            .keys()
            .filter(|k| !self.used.contains(*k))
            .map(str::to_string)
            .collect();
        keys.sort();
        keys
    }

    /// Fails with [`LoadError::UnexpectedKey`] if any key was not used.
    pub fn ensure_all_used(&self) -> Result<(), LoadError> {
        let unused = self.unused_keys();
        match unused.first() {
            Some(first) => Err(LoadError::UnexpectedKey {
                path: self.file.path.clone(),
                key: first.clone(),
                count: unused.len(),
            }),
            None => Ok(()),
        }
    }
}

impl TensorReader for TensorFile {
    fn read_tensor(&mut self, key: &str, expected: &[usize]) -> Result<HostTensor, LoadError> {
        let found = self
            .file
            .shape(key)
            .ok_or_else(|| LoadError::MissingKey {
                path: self.file.path.clone(),
                key: key.to_string(),
            })?
            .to_vec();
        if found != expected {
            return Err(LoadError::ShapeMismatch {
                path: self.file.path.clone(),
                key: key.to_string(),
                expected: expected.to_vec(),
                found,
            });
        }
        let tensor = self.file.read(key)?;
        self.used.insert(key.to_string());
        Ok(tensor)
    }
}

/// [`ParamSource`] that reads from a [`TensorReader`] onto a device, keys prefixed by `prefix`.
pub struct DeviceSource<'a, R: TensorReader, B: Backend> {
    /// Where the tensors come from.
    pub reader: &'a mut R,
    /// Where they go.
    pub device: &'a B::Device,
    /// Prepended to every key asked for.
    pub prefix: String,
    /// Float type the tensors are stored in (`None`: the backend's default).
    pub dtype: Option<burn::tensor::FloatDType>,
}

impl<R: TensorReader, B: Backend> DeviceSource<'_, R, B> {
    fn tensor<const D: usize>(&self, host: HostTensor) -> Tensor<B, D> {
        let tensor = host.into_tensor(self.device);
        match self.dtype {
            Some(dtype) => tensor.cast(dtype),
            None => tensor,
        }
    }
}

impl<R: TensorReader, B: Backend> ParamSource<B> for DeviceSource<'_, R, B> {
    fn linear_with_keys(
        &mut self,
        weight_key: &str,
        bias_key: Option<&str>,
        d_in: usize,
        d_out: usize,
    ) -> Result<Linear<B>, LoadError> {
        let weight = self
            .reader
            .read_tensor(&format!("{}{weight_key}", self.prefix), &[d_out, d_in])?
            .transposed();
        let bias = match bias_key {
            Some(key) => {
                let b = self
                    .reader
                    .read_tensor(&format!("{}{key}", self.prefix), &[d_out])?;
                Some(Param::from_tensor(self.tensor::<1>(b)))
            }
            None => None,
        };
        Ok(Linear {
            weight: Param::from_tensor(self.tensor::<2>(weight)),
            bias,
        })
    }

    fn linear_split_rows(
        &mut self,
        key: &str,
        d_in: usize,
        rows: &[usize],
        bias: bool,
    ) -> Result<Vec<Linear<B>>, LoadError> {
        let total: usize = rows.iter().sum();
        let weight = self
            .reader
            .read_tensor(&format!("{}{key}.weight", self.prefix), &[total, d_in])?;
        let bias = if bias {
            Some(
                self.reader
                    .read_tensor(&format!("{}{key}.bias", self.prefix), &[total])?,
            )
        } else {
            None
        };
        let mut start = 0;
        let mut parts = Vec::with_capacity(rows.len());
        for &n in rows {
            let w = HostTensor {
                shape: vec![n, d_in],
                data: weight.data[start * d_in..(start + n) * d_in].to_vec(),
            };
            let b = bias.as_ref().map(|b| HostTensor {
                shape: vec![n],
                data: b.data[start..start + n].to_vec(),
            });
            parts.push(Linear {
                weight: Param::from_tensor(self.tensor::<2>(w.transposed())),
                bias: b.map(|b| Param::from_tensor(self.tensor::<1>(b))),
            });
            start += n;
        }
        Ok(parts)
    }

    fn vector(
        &mut self,
        key: &str,
        len: usize,
        _init: f32,
    ) -> Result<Param<Tensor<B, 1>>, LoadError> {
        let v = self
            .reader
            .read_tensor(&format!("{}{key}", self.prefix), &[len])?;
        Ok(Param::from_tensor(self.tensor::<1>(v)))
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
        config.validate()?;
        let mut checkpoint = Checkpoint::open(path.as_ref())?;
        checkpoint.check_config(config)?;
        tracing::debug!(path = %checkpoint.path.display(), layout = ?checkpoint.layout, "loading FLUX transformer");
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
                    path: checkpoint.path.clone(),
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
