//! One user's embedding in a file of its own.

use std::path::Path;

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::Distribution;
use premier_io::{write_safetensors, HostTensor, SafetensorsFile, SaveDtype};

use crate::error::UserError;

/// A single user's embedding `[tokens, dim]`, trained directly (SPEC §4.5) or exported from a table.
#[derive(Module, Debug)]
pub struct UserEmbedding<B: Backend> {
    /// `[tokens, dim]`.
    pub tokens: Param<Tensor<B, 2>>,
}

impl<B: Backend> UserEmbedding<B> {
    /// A new user for direct training: U(-0.001, 0.001), as the official `train_user_embedding.py`.
    pub fn init_direct(tokens: usize, dim: usize, device: &B::Device) -> Self {
        Self::from_tensor(Tensor::random(
            [tokens, dim],
            Distribution::Uniform(-0.001, 0.001),
            device,
        ))
    }

    /// tokens: `[tokens, dim]`.
    pub fn from_tensor(tokens: Tensor<B, 2>) -> Self {
        Self {
            tokens: Param::from_tensor(tokens),
        }
    }

    /// The embedding as a batch of one: `[1, tokens, dim]`.
    pub fn embedding(&self) -> Tensor<B, 3> {
        self.tokens.val().unsqueeze_dim(0)
    }

    /// Loads `user_embedding_<id>.safetensors`: key `weight` (or the file's only tensor) of shape
    /// `[1, tokens·dim]` (the official `nn.Embedding(1, …)`), `[tokens·dim]`, `[tokens, dim]` or
    /// `[1, tokens, dim]`.
    pub fn load(
        path: impl AsRef<Path>,
        tokens: usize,
        dim: usize,
        device: &B::Device,
    ) -> Result<Self, UserError> {
        let path = path.as_ref();
        let file = SafetensorsFile::open(path)?;
        let keys: Vec<&str> = file.keys().collect();
        let key = if file.shape("weight").is_some() {
            "weight".to_string()
        } else if keys.len() == 1 {
            keys[0].to_string()
        } else {
            return Err(UserError::MissingKey {
                path: path.to_path_buf(),
                key: "weight".into(),
                found: keys.join(", "),
            });
        };
        let found = file.shape(&key).unwrap_or_default().to_vec();
        let flat = tokens * dim;
        let ok = matches!(found.as_slice(), [1, w] | [w] if *w == flat)
            || matches!(found.as_slice(), [t, d] | [1, t, d] if *t == tokens && *d == dim);
        if !ok {
            return Err(UserError::WrongShape {
                path: path.to_path_buf(),
                key,
                expected: format!("[1, {flat}] ({tokens} tokens × {dim})"),
                found,
            });
        }
        let host = file.read(&key)?;
        let host = HostTensor {
            shape: vec![tokens, dim],
            data: host.data,
        };
        Ok(Self::from_tensor(host.into_tensor(device)))
    }

    /// Saves as the official direct-training file (key `weight`, `[1, tokens·dim]`), atomically.
    pub fn save(&self, path: impl AsRef<Path>, dtype: SaveDtype) -> Result<(), UserError> {
        let host = HostTensor::from_tensor(self.tokens.val());
        let flat = HostTensor {
            shape: vec![1, host.data.len()],
            data: host.data,
        };
        Ok(write_safetensors(
            path.as_ref(),
            &[("weight".into(), flat)],
            dtype,
        )?)
    }
}
