//! One or more safetensors files seen as one set of named tensors (a model's single file, its
//! shards, or a folder), read by the keys as stored.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::error::LoadError;
use crate::safetensors_file::{HostTensor, SafetensorsFile};
use crate::source::TensorReader;

/// One or more safetensors files seen as one set of named tensors, remembering which keys were
/// read (so a loader can refuse files holding tensors its model does not use).
pub struct Checkpoint {
    /// The path the user gave (named in errors about the whole checkpoint).
    pub path: PathBuf,
    files: Vec<SafetensorsFile>,
    /// key → index into `files`.
    index: HashMap<String, usize>,
    used: HashSet<String>,
}

impl Checkpoint {
    /// Opens a file, a shard index (`*.safetensors.index.json`), or a folder holding either.
    pub fn open(path: &Path) -> Result<Self, LoadError> {
        Self::open_in(path, None)
    }

    /// [`Checkpoint::open`] that also looks in `subfolder` of a folder holding no single file or
    /// index (a diffusers pipeline's `transformer/`, say).
    pub fn open_in(path: &Path, subfolder: Option<&str>) -> Result<Self, LoadError> {
        let files = resolve_files(path, subfolder)?
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
            files,
            index,
            used: HashSet::new(),
        })
    }

    /// Every stored key, in no particular order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
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
    pub fn shape_of(&self, key: &str) -> Option<&[usize]> {
        self.file_of(key).ok().and_then(|f| f.shape(key))
    }

    /// Keys starting with `prefix` that no read has used, sorted.
    pub fn unused_keys_under(&self, prefix: &str) -> Vec<String> {
        let unused: BTreeSet<_> = self
            .index
            .keys()
            .filter(|k| k.starts_with(prefix) && !self.used.contains(*k))
            .cloned()
            .collect();
        unused.into_iter().collect()
    }

    /// Keys that no read has used, sorted.
    pub fn unused_keys(&self) -> Vec<String> {
        self.unused_keys_under("")
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
}

impl TensorReader for Checkpoint {
    /// Reads the stored tensor `key` (a name in the file), which must have shape `expected`, and
    /// marks it used.
    fn read_tensor(&mut self, key: &str, expected: &[usize]) -> Result<HostTensor, LoadError> {
        let file = self.file_of(key)?;
        let found = file.shape(key).unwrap_or_default().to_vec();
        if found != expected {
            return Err(LoadError::ShapeMismatch {
                path: file.path.clone(),
                key: key.to_string(),
                expected: expected.to_vec(),
                found,
            });
        }
        let tensor = file.read(key)?;
        self.used.insert(key.to_string());
        Ok(tensor)
    }
}

/// Files to open for `path`: the file; the shards an index names; or in a folder its index, its
/// one file, or (when it has neither) what `subfolder` resolves to, or all its files.
fn resolve_files(path: &Path, subfolder: Option<&str>) -> Result<Vec<PathBuf>, LoadError> {
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
    if let Some(sub) = subfolder.map(|s| path.join(s)).filter(|s| s.is_dir()) {
        return resolve_files(&sub, None);
    }
    if singles.is_empty() {
        return Err(LoadError::NoSafetensors {
            path: path.to_path_buf(),
            hint: subfolder.map_or(String::new(), |s| format!(" (nor a `{s}/` folder)")),
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
