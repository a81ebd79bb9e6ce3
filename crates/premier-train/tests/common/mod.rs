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

/// Rewrites the f32 tensor `key` of the safetensors file at `path` with `edit`, the other
/// tensors unchanged (to damage a checkpoint in a chosen way).
pub fn edit_tensor(
    path: &std::path::Path,
    key: &str,
    edit: impl FnOnce(&mut premier_io::HostTensor),
) {
    use premier_io::{write_safetensors, SafetensorsFile, SaveDtype};
    let file = SafetensorsFile::open(path).unwrap();
    let mut tensors: Vec<(String, _)> = file
        .keys()
        .map(|k| (k.to_string(), file.read(k).unwrap()))
        .collect();
    drop(file);
    let (_, t) = tensors.iter_mut().find(|(k, _)| k == key).unwrap();
    edit(t);
    write_safetensors(path, &tensors, SaveDtype::F32).unwrap();
}
