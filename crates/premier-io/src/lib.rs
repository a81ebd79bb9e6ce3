//! Model files for every Premier crate: safetensors files memory-mapped and read one tensor at a
//! time ([`SafetensorsFile`], [`Checkpoint`] over single files, shards and folders, [`TensorFile`]
//! for adapters, embeddings and optimizer state), the [`ParamSource`] a module is built from
//! (fresh [`RandomInit`], or a [`DeviceSource`] over any [`TensorReader`]), atomic writes
//! ([`write_safetensors`], [`write_via_temp`]) and the [`LoadError`] every loader returns.
//!
//! The model crates (FLUX, T5, CLIP, the VAE, the adapters, the user table) build on it; none of
//! them needs another model's crate to read its files.

#![warn(missing_docs)]

mod atomic;
mod checkpoint;
mod error;
mod safetensors_file;
mod source;
mod tensor_file;

pub use atomic::write_via_temp;
pub use checkpoint::Checkpoint;
pub use error::LoadError;
pub use safetensors_file::{write_safetensors, HostTensor, SafetensorsFile, SaveDtype};
pub use source::{
    cast_float_params, materialized, DeviceSource, ParamSource, RandomInit, TensorReader,
};
pub use tensor_file::TensorFile;
