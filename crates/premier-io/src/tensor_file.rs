//! One safetensors file read by plain key, refusing non-finite values.

use std::collections::HashSet;
use std::path::Path;

use crate::error::LoadError;
use crate::safetensors_file::{HostTensor, SafetensorsFile};
use crate::source::TensorReader;

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
