//! The official initialisation of a new adapter.

use burn::module::Param;
use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::Distribution;
use premier_mmdit::load::ParamSource;
use premier_mmdit::LoadError;

/// `init_adapter_small_std` of the official code: every bias 0, every other parameter
/// N(0, std²) with std 0.01 — LayerNorm weights included, so a fresh adapter's Δ is ≈ 0.
pub struct SmallStdInit<'a, B: Backend> {
    pub device: &'a B::Device,
    pub std: f64,
}

impl<'a, B: Backend> SmallStdInit<'a, B> {
    /// std 0.01, as released.
    pub fn new(device: &'a B::Device) -> Self {
        Self { device, std: 0.01 }
    }

    fn normal<const D: usize>(&self, shape: [usize; D]) -> Tensor<B, D> {
        Tensor::random(shape, Distribution::Normal(0.0, self.std), self.device)
    }
}

impl<B: Backend> ParamSource<B> for SmallStdInit<'_, B> {
    fn linear_with_keys(
        &mut self,
        _weight_key: &str,
        bias_key: Option<&str>,
        d_in: usize,
        d_out: usize,
    ) -> Result<Linear<B>, LoadError> {
        Ok(Linear {
            weight: Param::from_tensor(self.normal([d_in, d_out])),
            bias: bias_key.map(|_| Param::from_tensor(Tensor::zeros([d_out], self.device))),
        })
    }

    fn vector(
        &mut self,
        key: &str,
        len: usize,
        _init: f32,
    ) -> Result<Param<Tensor<B, 1>>, LoadError> {
        let is_bias = key
            .rsplit('.')
            .next()
            .is_some_and(|last| last.contains("bias"));
        Ok(Param::from_tensor(if is_bias {
            Tensor::zeros([len], self.device)
        } else {
            self.normal([len])
        }))
    }
}
