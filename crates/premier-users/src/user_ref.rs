//! Naming a user however the caller knows them.

use std::path::PathBuf;

use burn::prelude::*;

use crate::combination::LinearCombination;
use crate::embedding::UserEmbedding;
use crate::error::UserError;
use crate::table::UserTable;

/// A user: a row of the trained table, a per-user embedding file, or a coefficient file.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum UserRef {
    /// A trained user, by table index.
    Index(usize),
    /// `user_embedding_<id>.safetensors`.
    EmbeddingFile(PathBuf),
    /// `user_combination_<id>.safetensors`, mixed over the table.
    CombinationFile(PathBuf),
}

impl UserRef {
    /// The user's embedding `[1, tokens, dim]`, using `table` for indices and combinations.
    pub fn resolve<B: Backend>(&self, table: &UserTable<B>) -> Result<Tensor<B, 3>, UserError> {
        let shape = table.shape();
        let device = table.weight.device();
        match self {
            Self::Index(id) => table.lookup(&[*id]),
            Self::EmbeddingFile(path) => {
                Ok(UserEmbedding::load(path, shape.tokens, shape.dim, &device)?.embedding())
            }
            Self::CombinationFile(path) => {
                LinearCombination::load(path, shape.users, &device)?.embedding(table)
            }
        }
    }
}
