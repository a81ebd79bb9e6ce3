//! A new user as a linear combination of the trained users (the paper's cold start, SPEC §4.4).

use std::path::Path;

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::Distribution;
use premier_io::{write_safetensors, HostTensor, SafetensorsFile, SaveDtype};

use crate::error::UserError;
use crate::table::UserTable;

/// Coefficients `w` `[1, users]`: the new user's embedding is `w · table` (no softmax, as the
/// official code).
#[derive(Module, Debug)]
pub struct LinearCombination<B: Backend> {
    /// `[1, users]`, key `combination_weights`.
    pub weights: Param<Tensor<B, 2>>,
}

const KEY: &str = "combination_weights";

impl<B: Backend> LinearCombination<B> {
    /// Xavier-uniform coefficients, U(±√(6 / (1 + users))), as the official `xavier_uniform_`.
    pub fn init(users: usize, device: &B::Device) -> Self {
        let bound = (6.0 / (1 + users) as f64).sqrt();
        Self::from_tensor(Tensor::random(
            [1, users],
            Distribution::Uniform(-bound, bound),
            device,
        ))
    }

    /// weights: `[1, users]`.
    pub fn from_tensor(weights: Tensor<B, 2>) -> Self {
        Self {
            weights: Param::from_tensor(weights),
        }
    }

    /// `w · table` as a batch of one: `[1, tokens, dim]`. Gradients reach `w` (and the table, if
    /// it is not frozen).
    pub fn embedding(&self, table: &UserTable<B>) -> Result<Tensor<B, 3>, UserError> {
        let shape = table.shape();
        let users = self.weights.dims()[1];
        if users != shape.users {
            return Err(UserError::UnknownUser {
                id: users.saturating_sub(1),
                users: shape.users,
            });
        }
        Ok(self
            .weights
            .val()
            .matmul(table.user_rows())
            .reshape([1, shape.tokens, shape.dim]))
    }

    /// Loads `user_combination_<id>.safetensors` (key `combination_weights`, `[1, users]`).
    pub fn load(
        path: impl AsRef<Path>,
        users: usize,
        device: &B::Device,
    ) -> Result<Self, UserError> {
        let path = path.as_ref();
        let file = SafetensorsFile::open(path)?;
        let found = file
            .shape(KEY)
            .ok_or_else(|| UserError::MissingKey {
                path: path.to_path_buf(),
                key: KEY.into(),
                found: file.keys().collect::<Vec<_>>().join(", "),
            })?
            .to_vec();
        if found != [1, users] {
            return Err(UserError::WrongShape {
                path: path.to_path_buf(),
                key: KEY.into(),
                expected: format!("[1, {users}]"),
                found,
            });
        }
        Ok(Self::from_tensor(file.read(KEY)?.into_tensor(device)))
    }

    /// Saves as the official file (key `combination_weights`), atomically.
    pub fn save(&self, path: impl AsRef<Path>, dtype: SaveDtype) -> Result<(), UserError> {
        let weights = HostTensor::from_tensor(self.weights.val());
        Ok(write_safetensors(
            path.as_ref(),
            &[(KEY.into(), weights)],
            dtype,
        )?)
    }
}
