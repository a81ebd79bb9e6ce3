//! Helpers shared by the trainer tests.
#![allow(dead_code)]

use burn::backend::{Autodiff, Flex};
use premier_train::params::flat_values;

/// The training backend of the tests: autodiff over CPU Flex, f32.
pub type AB = Autodiff<Flex>;

/// Every parameter of `m` as raw f32 bits, in burn's visiting order (for bit-for-bit checks).
pub fn bits<M: burn::module::Module<AB>>(m: &M) -> Vec<u32> {
    flat_values(m)
        .into_iter()
        .flat_map(|t| t.into_data().to_vec::<f32>().unwrap())
        .map(f32::to_bits)
        .collect()
}
