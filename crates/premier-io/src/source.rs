//! Where a module's parameters come from: a fresh random init or a file ([`TensorReader`]).
//!
//! Every module is built by one function that asks a [`ParamSource`] for its tensors by their key
//! in the model's reference layout (BFL's `double_blocks.3.txt_mod.lin` for FLUX), so the module
//! tree, the checkpoint key table and the random init cannot drift apart.

use burn::module::Param;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;

use crate::error::LoadError;
use crate::safetensors_file::HostTensor;

/// Supplies parameters by key (BFL keys for FLUX; the official keys for the Premier adapter).
///
/// Implemented by [`RandomInit`], by [`DeviceSource`] over a [`crate::Checkpoint`] or a
/// [`crate::TensorFile`] (or FLUX's checkpoint, which renames keys), and by other crates for their
/// own initialisations.
pub trait ParamSource<B: Backend> {
    /// A `Linear` whose PyTorch weight `[d_out, d_in]` is stored at `weight_key` and its bias
    /// `[d_out]` at `bias_key` (e.g. torch MHA's `in_proj_weight` / `in_proj_bias`).
    fn linear_with_keys(
        &mut self,
        weight_key: &str,
        bias_key: Option<&str>,
        d_in: usize,
        d_out: usize,
    ) -> Result<Linear<B>, LoadError>;

    /// A `Linear` at `{key}.weight` (and bias `{key}.bias`), PyTorch's naming.
    fn linear(
        &mut self,
        key: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
    ) -> Result<Linear<B>, LoadError> {
        let bias_key = format!("{key}.bias");
        self.linear_with_keys(
            &format!("{key}.weight"),
            bias.then_some(bias_key.as_str()),
            d_in,
            d_out,
        )
    }

    /// A `Linear` stored as one `[Σ rows, d_in]` weight at `key`, returned as one `Linear` per row
    /// block (`d_out = rows[i]`), so each part's output is a contiguous tensor of its own.
    /// Fresh sources make each part as its own `Linear`; checkpoint sources split the stored one.
    fn linear_split_rows(
        &mut self,
        key: &str,
        d_in: usize,
        rows: &[usize],
        bias: bool,
    ) -> Result<Vec<Linear<B>>, LoadError> {
        rows.iter()
            .map(|&d_out| self.linear(key, d_in, d_out, bias))
            .collect()
    }

    /// A vector of `len` values at `key` (a norm scale); `init` is its value when freshly made.
    fn vector(
        &mut self,
        key: &str,
        len: usize,
        init: f32,
    ) -> Result<Param<Tensor<B, 1>>, LoadError>;
}

/// Fresh parameters: burn's default Linear init, norm scales set to their `init` value.
///
/// Values are drawn when the model is built, not on first use (burn's `LinearConfig::init` is
/// lazy): clones of a fresh model are then the same model, and the draws follow the build order.
pub struct RandomInit<'a, B: Backend> {
    /// Where the parameters are drawn.
    pub device: &'a B::Device,
    /// Store each parameter as this type, cast as soon as it is drawn (so a bf16 model never
    /// holds its f32 copy whole); `None`: the backend's float type.
    pub dtype: Option<burn::tensor::FloatDType>,
}

/// `linear` with its (possibly lazy) parameters drawn now.
pub fn materialized<B: Backend>(linear: Linear<B>) -> Linear<B> {
    Linear {
        weight: Param::from_tensor(linear.weight.val()),
        bias: linear.bias.map(|b| Param::from_tensor(b.val())),
    }
}

impl<B: Backend> ParamSource<B> for RandomInit<'_, B> {
    fn linear_with_keys(
        &mut self,
        _weight_key: &str,
        bias_key: Option<&str>,
        d_in: usize,
        d_out: usize,
    ) -> Result<Linear<B>, LoadError> {
        let linear = materialized(
            LinearConfig::new(d_in, d_out)
                .with_bias(bias_key.is_some())
                .init(self.device),
        );
        Ok(match self.dtype {
            Some(dtype) => Linear {
                weight: Param::from_tensor(linear.weight.val().cast(dtype)),
                bias: linear.bias.map(|b| Param::from_tensor(b.val().cast(dtype))),
            },
            None => linear,
        })
    }

    fn vector(
        &mut self,
        _key: &str,
        len: usize,
        init: f32,
    ) -> Result<Param<Tensor<B, 1>>, LoadError> {
        let vector = Tensor::<B, 1>::full([len], init, self.device);
        Ok(Param::from_tensor(match self.dtype {
            Some(dtype) => vector.cast(dtype),
            None => vector,
        }))
    }
}

/// `module` with every float parameter cast to `dtype` (a model's weights stored in bf16, say).
pub fn cast_float_params<B: Backend, M: burn::module::Module<B>>(
    module: M,
    dtype: burn::tensor::FloatDType,
) -> M {
    struct CastWeights(burn::tensor::FloatDType);
    impl<B: Backend> burn::module::ModuleMapper<B> for CastWeights {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let (id, tensor, mapper) = param.consume();
            Param::from_mapped_value(id, tensor.cast(self.0), mapper)
        }
    }
    module.map(&mut CastWeights(dtype))
}

/// Something that hands out stored tensors by key, checking their shape.
pub trait TensorReader {
    /// The tensor `key` (in the reader's naming), which must have shape `expected`.
    fn read_tensor(&mut self, key: &str, expected: &[usize]) -> Result<HostTensor, LoadError>;
}

/// [`ParamSource`] that reads from a [`TensorReader`] onto a device, keys prefixed by `prefix`.
pub struct DeviceSource<'a, R: TensorReader, B: Backend> {
    /// Where the tensors come from.
    pub reader: &'a mut R,
    /// Where they go.
    pub device: &'a B::Device,
    /// Prepended to every key asked for.
    pub prefix: String,
    /// Float type the tensors are stored in (`None`: the backend's default).
    pub dtype: Option<burn::tensor::FloatDType>,
}

impl<R: TensorReader, B: Backend> DeviceSource<'_, R, B> {
    fn tensor<const D: usize>(&self, host: HostTensor) -> Tensor<B, D> {
        let tensor = host.into_tensor(self.device);
        match self.dtype {
            Some(dtype) => tensor.cast(dtype),
            None => tensor,
        }
    }
}

impl<R: TensorReader, B: Backend> ParamSource<B> for DeviceSource<'_, R, B> {
    fn linear_with_keys(
        &mut self,
        weight_key: &str,
        bias_key: Option<&str>,
        d_in: usize,
        d_out: usize,
    ) -> Result<Linear<B>, LoadError> {
        let weight = self
            .reader
            .read_tensor(&format!("{}{weight_key}", self.prefix), &[d_out, d_in])?
            .transposed();
        let bias = match bias_key {
            Some(key) => {
                let b = self
                    .reader
                    .read_tensor(&format!("{}{key}", self.prefix), &[d_out])?;
                Some(Param::from_tensor(self.tensor::<1>(b)))
            }
            None => None,
        };
        Ok(Linear {
            weight: Param::from_tensor(self.tensor::<2>(weight)),
            bias,
        })
    }

    fn linear_split_rows(
        &mut self,
        key: &str,
        d_in: usize,
        rows: &[usize],
        bias: bool,
    ) -> Result<Vec<Linear<B>>, LoadError> {
        let total: usize = rows.iter().sum();
        let weight = self
            .reader
            .read_tensor(&format!("{}{key}.weight", self.prefix), &[total, d_in])?;
        let bias = if bias {
            Some(
                self.reader
                    .read_tensor(&format!("{}{key}.bias", self.prefix), &[total])?,
            )
        } else {
            None
        };
        let mut start = 0;
        let mut parts = Vec::with_capacity(rows.len());
        for &n in rows {
            let w = HostTensor {
                shape: vec![n, d_in],
                data: weight.data[start * d_in..(start + n) * d_in].to_vec(),
            };
            let b = bias.as_ref().map(|b| HostTensor {
                shape: vec![n],
                data: b.data[start..start + n].to_vec(),
            });
            parts.push(Linear {
                weight: Param::from_tensor(self.tensor::<2>(w.transposed())),
                bias: b.map(|b| Param::from_tensor(self.tensor::<1>(b))),
            });
            start += n;
        }
        Ok(parts)
    }

    fn vector(
        &mut self,
        key: &str,
        len: usize,
        _init: f32,
    ) -> Result<Param<Tensor<B, 1>>, LoadError> {
        let v = self
            .reader
            .read_tensor(&format!("{}{key}", self.prefix), &[len])?;
        Ok(Param::from_tensor(self.tensor::<1>(v)))
    }
}
