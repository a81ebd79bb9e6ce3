//! # premier-users
//!
//! Who a user is, to Premier: `tokens × dim` numbers (released: 30 × 1024, 61 KB in bf16).
//! - [`UserTable`]: the stage-1 table of trained users (`user_embedding.safetensors`, key `weight`).
//! - [`UserEmbedding`]: one user's embedding in a file of its own (`user_embedding_<id>.safetensors`),
//!   e.g. a new user trained directly.
//! - [`LinearCombination`]: a new user as `w · table` (`user_combination_<id>.safetensors`, key
//!   `combination_weights`), the paper's cold start.
//! - [`UserRef`]: any of these, resolved to the `[1, tokens, dim]` embedding the adapters take.
//!
//! ```
//! use burn::backend::Flex;
//! use premier_users::{UserShape, UserTable};
//!
//! let device = Default::default();
//! let table = UserTable::<Flex>::init(UserShape { users: 10, tokens: 3, dim: 4 }, &device);
//! let batch = table.lookup(&[2, 7]).unwrap(); // [2, 3, 4]
//! assert_eq!(batch.dims(), [2, 3, 4]);
//! assert!(table.lookup(&[10]).is_err());
//! ```
#![warn(missing_docs)]

mod combination;
mod embedding;
mod error;
mod table;
mod user_ref;

pub use combination::LinearCombination;
pub use embedding::UserEmbedding;
pub use error::UserError;
pub use table::{TableRows, UserShape, UserTable};
pub use user_ref::UserRef;
