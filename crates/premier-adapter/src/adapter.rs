//! The pair of adapters that turns (prompt, user) into Premier's `TextModulation`.

use std::path::Path;

use burn::prelude::*;
use burn::tensor::{DType, FloatDType};
use premier_io::LoadError;
use premier_io::{write_safetensors, DeviceSource, HostTensor, SaveDtype, TensorFile};
use premier_mmdit::{FluxOps, TextModulation};

use crate::config::AdapterConfig;
use crate::init::{AdapterInit, SmallStdInit};
use crate::resampler::TextImageResampler;

/// Errors of building, loading or saving adapters.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    /// A config no adapter can be built with (what is wrong with it is said).
    #[error("invalid adapter config: {0}")]
    Config(String),
    /// Reading or writing the adapter file (names the file and key).
    #[error(transparent)]
    File(#[from] LoadError),
}

/// Block-shared (`net`) and block-distinct (`net2`) adapters (official `CLIPModAdapter_2`).
#[derive(Module, Debug)]
pub struct PreferenceAdapter<B: Backend> {
    /// Δ_shared: out = hidden. `None` when switched off.
    pub net: Option<TextImageResampler<B>>,
    /// Δ_distinct: out = blocks·hidden, one LayerNorm over all of it. `None` when switched off.
    pub net2: Option<TextImageResampler<B>>,
    hidden: usize,
    blocks: usize,
}

impl<B: Backend> PreferenceAdapter<B> {
    /// A fresh adapter with the official init (biases 0, everything else N(0, 0.01²)).
    pub fn init(config: &AdapterConfig, device: &B::Device) -> Result<Self, AdapterError> {
        Self::init_with(config, AdapterInit::Released, device)
    }

    /// A fresh adapter drawn as `init` says (see [`AdapterInit`]).
    pub fn init_with(
        config: &AdapterConfig,
        init: AdapterInit,
        device: &B::Device,
    ) -> Result<Self, AdapterError> {
        Self::build(&mut SmallStdInit::with(init, device), config)
    }

    fn build(
        src: &mut impl premier_io::ParamSource<B>,
        config: &AdapterConfig,
    ) -> Result<Self, AdapterError> {
        config.validate().map_err(AdapterError::Config)?;
        let c = config;
        let mut net = |key: &str, out: usize| {
            TextImageResampler::build(
                src, key, c.text_dim, c.user_dim, c.width, c.heads, c.layers, out,
            )
        };
        let shared = if c.shared {
            Some(net("net", c.hidden)?)
        } else {
            None
        };
        let distinct = if c.distinct {
            Some(net("net2", c.hidden * c.blocks)?)
        } else {
            None
        };
        Ok(Self {
            net: shared,
            net2: distinct,
            hidden: c.hidden,
            blocks: c.blocks,
        })
    }

    /// Loads the official `mod_adapter.safetensors` layout (bf16, f16 or f32), strictly: every key
    /// must be used, and a file holding `net2.*` for a config with `distinct: false` (or the
    /// reverse) is an error.
    pub fn load(
        path: impl AsRef<Path>,
        config: &AdapterConfig,
        device: &B::Device,
    ) -> Result<Self, AdapterError> {
        let mut file = TensorFile::open(path.as_ref())?;
        let adapter = Self::build(
            &mut DeviceSource {
                reader: &mut file,
                device,
                prefix: String::new(),
                dtype: None,
            },
            config,
        )?;
        file.ensure_all_used()?;
        Ok(adapter)
    }

    /// The parameters under the official key names, in PyTorch layout.
    pub fn to_tensors(&self) -> Vec<(String, HostTensor)> {
        let mut out = Vec::new();
        if let Some(net) = &self.net {
            net.export("net", &mut out);
        }
        if let Some(net2) = &self.net2 {
            net2.export("net2", &mut out);
        }
        out
    }

    /// Saves in the official layout, atomically (temporary file, then rename).
    pub fn save(&self, path: impl AsRef<Path>, dtype: SaveDtype) -> Result<(), AdapterError> {
        Ok(write_safetensors(path.as_ref(), &self.to_tensors(), dtype)?)
    }

    /// Float type of the weights (f32 unless [`Self::with_weight_dtype`] changed it).
    pub fn weight_dtype(&self) -> DType {
        let net = self.net.as_ref().or(self.net2.as_ref());
        net.map_or(DType::F32, |n| n.text_proj_in.weight.val().dtype())
    }

    /// The same adapters with their weights stored as `dtype` (bf16 halves their memory for
    /// generation; training keeps f32). [`Self::forward`] then computes in `dtype` and returns Δ
    /// in the type of its inputs.
    pub fn with_weight_dtype(self, dtype: FloatDType) -> Self {
        premier_io::cast_float_params(self, dtype)
    }
}

impl<B: FluxOps> PreferenceAdapter<B> {
    /// Premier's Δ for each (prompt, user) pair of the batch.
    ///
    /// text: `[batch, txt_tokens, text_dim]` (T5 tokens, padding included), user:
    /// `[batch, user_tokens, user_dim]` → shared `[batch, txt_tokens, hidden]` and distinct
    /// `[batch, txt_tokens, blocks, hidden]`, in the type of `text`. Independent of the timestep.
    pub fn forward(&self, text: Tensor<B, 3>, user: Tensor<B, 3>) -> TextModulation<B> {
        let [batch, tokens, _] = text.dims();
        let (out_dtype, dtype) = (text.dtype(), self.weight_dtype());
        let (text, user) = (text.cast(dtype), user.cast(dtype));
        let shared = self
            .net
            .as_ref()
            .map(|n| n.forward(text.clone(), user.clone()).cast(out_dtype));
        let distinct = self.net2.as_ref().map(|n| {
            n.forward(text, user)
                .cast(out_dtype)
                .reshape([batch, tokens, self.blocks, self.hidden])
        });
        TextModulation { shared, distinct }
    }
}
