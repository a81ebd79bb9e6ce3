//! The table of trained users.

use std::path::Path;

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::Distribution;
use premier_io::{write_safetensors, HostTensor, SafetensorsFile, SaveDtype};

use crate::error::UserError;

/// Number of users and the shape of one user's embedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UserShape {
    /// Trained users (released: 1000).
    pub users: usize,
    /// Tokens per user (released: 30).
    pub tokens: usize,
    /// Width of a token (released: 1024).
    pub dim: usize,
}

impl UserShape {
    /// The released table: 1000 users × 30 tokens × 1024.
    pub fn released() -> Self {
        Self {
            users: 1000,
            tokens: 30,
            dim: 1024,
        }
    }
}

/// How many rows the stored table has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum TableRows {
    /// One row per user (the released `user_embedding.safetensors`).
    Users,
    /// One row per user plus a trailing unused row, as the official stage-1 code saves
    /// (`nn.Embedding(user_num + 1, …)`). Kept so the file saves back unchanged.
    UsersPlusOne,
}

/// `users` trained embeddings, stored flat as the official `nn.Embedding`:
/// weight `[rows, tokens·dim]`.
#[derive(Module, Debug)]
pub struct UserTable<B: Backend> {
    /// `[rows, tokens·dim]`; rows = users (+1, see [`TableRows`]).
    pub weight: Param<Tensor<B, 2>>,
    shape: UserShape,
    rows: TableRows,
}

impl<B: Backend> UserTable<B> {
    /// A fresh table, U(-0.1, 0.1) as the official stage 1.
    pub fn init(shape: UserShape, device: &B::Device) -> Self {
        let weight = Tensor::random(
            [shape.users, shape.tokens * shape.dim],
            Distribution::Uniform(-0.1, 0.1),
            device,
        );
        Self::from_weight(weight, shape, TableRows::Users)
    }

    /// Wraps an existing weight `[rows, tokens·dim]`.
    pub fn from_weight(weight: Tensor<B, 2>, shape: UserShape, rows: TableRows) -> Self {
        Self {
            weight: Param::from_tensor(weight),
            shape,
            rows,
        }
    }

    /// Users, tokens per user and token width.
    pub fn shape(&self) -> UserShape {
        self.shape
    }

    /// Whether the file had one row per user or one more (the released table's extra row).
    pub fn rows(&self) -> TableRows {
        self.rows
    }

    /// The users' rows only: `[users, tokens·dim]` (what a linear combination mixes).
    pub fn user_rows(&self) -> Tensor<B, 2> {
        self.weight.val().narrow(0, 0, self.shape.users)
    }

    /// Embeddings of the users `ids`: `[ids.len(), tokens, dim]`. Gradients flow into the table.
    pub fn lookup(&self, ids: &[usize]) -> Result<Tensor<B, 3>, UserError> {
        if let Some(&id) = ids.iter().find(|&&id| id >= self.shape.users) {
            return Err(UserError::UnknownUser {
                id,
                users: self.shape.users,
            });
        }
        let device = self.weight.device();
        let index: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
        let index = Tensor::<B, 1, Int>::from_data(TensorData::new(index, [ids.len()]), &device);
        Ok(self.weight.val().select(0, index).reshape([
            ids.len(),
            self.shape.tokens,
            self.shape.dim,
        ]))
    }

    /// Loads `user_embedding.safetensors` (key `weight`, `[users or users + 1, tokens·dim]`,
    /// any float dtype); which of the two row counts the file has is kept in [`TableRows`].
    pub fn load(
        path: impl AsRef<Path>,
        shape: UserShape,
        device: &B::Device,
    ) -> Result<Self, UserError> {
        let path = path.as_ref();
        let file = SafetensorsFile::open(path)?;
        let key = "weight";
        let found = file
            .shape(key)
            .ok_or_else(|| UserError::MissingKey {
                path: path.to_path_buf(),
                key: key.into(),
                found: file.keys().collect::<Vec<_>>().join(", "),
            })?
            .to_vec();
        let width = shape.tokens * shape.dim;
        let rows = match found.as_slice() {
            [r, w] if *w == width && *r == shape.users => TableRows::Users,
            [r, w] if *w == width && *r == shape.users + 1 => TableRows::UsersPlusOne,
            _ => {
                return Err(UserError::WrongShape {
                    path: path.to_path_buf(),
                    key: key.into(),
                    expected: format!(
                        "[{} or {}, {width}] ({} users × {} tokens × {})",
                        shape.users,
                        shape.users + 1,
                        shape.users,
                        shape.tokens,
                        shape.dim
                    ),
                    found,
                })
            }
        };
        let weight = file.read(key)?.into_tensor(device);
        Ok(Self::from_weight(weight, shape, rows))
    }

    /// Saves as `user_embedding.safetensors` (key `weight`, all rows), atomically.
    pub fn save(&self, path: impl AsRef<Path>, dtype: SaveDtype) -> Result<(), UserError> {
        let weight = HostTensor::from_tensor(self.weight.val());
        Ok(write_safetensors(
            path.as_ref(),
            &[("weight".into(), weight)],
            dtype,
        )?)
    }
}
