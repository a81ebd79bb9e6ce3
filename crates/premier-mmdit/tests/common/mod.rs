//! Shared test helpers: fixture paths, reading reference tensors, comparing with a tolerance.
#![allow(dead_code)]

use std::path::PathBuf;

use burn::prelude::*;
use premier_mmdit::load::SafetensorsFile;

pub type B = burn::backend::Flex;

/// `tests/fixtures/` at the workspace root (copied from the shared reference folder).
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

/// Reference tensors of one fixture file.
pub struct Fixture(SafetensorsFile);

impl Fixture {
    pub fn open(name: &str) -> Self {
        Self(SafetensorsFile::open(&fixture(name)).expect("fixture opens"))
    }

    pub fn tensor<const D: usize>(&self, key: &str) -> Tensor<B, D> {
        let host = self.0.read(key).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(host.shape.len(), D, "rank of fixture tensor {key}");
        Tensor::from_data(TensorData::new(host.data, host.shape), &Default::default())
    }
}

/// Max |a - b| over all elements, after checking the shapes agree.
pub fn max_abs_diff<const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let a = a.into_data().to_vec::<f32>().unwrap();
    let b = b.into_data().to_vec::<f32>().unwrap();
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Panics with the observed difference if it exceeds `atol`.
pub fn assert_close<const D: usize>(what: &str, got: Tensor<B, D>, want: Tensor<B, D>, atol: f32) {
    let diff = max_abs_diff(got, want);
    assert!(
        diff <= atol,
        "{what}: max |diff| = {diff:e} > atol {atol:e}"
    );
    eprintln!("{what}: max |diff| = {diff:e} (atol {atol:e})");
}
