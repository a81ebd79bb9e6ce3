//! The official initialisation of a new adapter.

use burn::module::Param;
use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::Distribution;
use premier_io::LoadError;
use premier_io::ParamSource;
use serde::{Deserialize, Serialize};

use crate::config::AdapterConfig;

/// How a fresh adapter's weights are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum AdapterInit {
    /// `init_adapter_small_std` as released: every weight N(0, 0.01²).
    #[default]
    Released,
    /// The released init's per-layer gain at any size: a linear weight of fan-in `f` is drawn
    /// N(0, (0.01·√(F/f))²), `F` the fan-in of the same layer in the released adapter (4096 for
    /// `text_proj_in`, 1024 for `image_proj_in`, 12288 for `mlp.c_proj`, 3072 for every other
    /// linear inside the resampler; AdaLN's linear reads the fixed 64-wide time embedding and
    /// keeps 0.01); the output LayerNorm's weight stays N(0, 0.01²), so a fresh Δ is still ≈ 0.
    /// Identical to `Released` at the released sizes. At width 64 the released 0.01 is 6.9×
    /// below this inside the resampler, and stage 1 on the synthetic world learns about half
    /// as much in the same steps with it (docs/synth.md).
    FanInMatched,
}

/// An init name none of `released`, `fan-in-matched` (or the serde names `Released`,
/// `FanInMatched`) matches.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown adapter init `{0}`: expected released or fan-in-matched")]
pub struct UnknownAdapterInit(pub String);

impl std::str::FromStr for AdapterInit {
    type Err = UnknownAdapterInit;

    /// The flag spelling (`released`, `fan-in-matched`) or the config-file one.
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "released" | "Released" => Ok(Self::Released),
            "fan-in-matched" | "FanInMatched" => Ok(Self::FanInMatched),
            other => Err(UnknownAdapterInit(other.to_string())),
        }
    }
}

/// `init_adapter_small_std` of the official code: every bias 0, every other parameter
/// N(0, std²) with std 0.01 — LayerNorm weights included, so a fresh adapter's Δ is ≈ 0.
/// With [`AdapterInit::FanInMatched`] the linear weights' std is scaled to their fan-in.
pub struct SmallStdInit<'a, B: Backend> {
    /// Where the weights are drawn.
    pub device: &'a B::Device,
    /// The released std (0.01), of every weight at the released sizes.
    pub std: f64,
    /// `Some(released config)`: scale each linear weight's std by √(released fan-in / fan-in).
    pub match_fan_in: Option<AdapterConfig>,
}

impl<'a, B: Backend> SmallStdInit<'a, B> {
    /// std 0.01, as released.
    pub fn new(device: &'a B::Device) -> Self {
        Self::with(AdapterInit::Released, device)
    }

    /// std 0.01, scaled per layer as `init` says.
    pub fn with(init: AdapterInit, device: &'a B::Device) -> Self {
        Self {
            device,
            std: 0.01,
            match_fan_in: match init {
                AdapterInit::Released => None,
                AdapterInit::FanInMatched => Some(AdapterConfig::released()),
            },
        }
    }

    fn normal<const D: usize>(&self, shape: [usize; D], std: f64) -> Tensor<B, D> {
        Tensor::random(shape, Distribution::Normal(0.0, std), self.device)
    }

    /// The std of a linear weight under `key` with fan-in `d_in`.
    fn linear_std(&self, key: &str, d_in: usize) -> f64 {
        let Some(released) = &self.match_fan_in else {
            return self.std;
        };
        let released_fan_in = if key.contains("text_proj_in") {
            released.text_dim
        } else if key.contains("image_proj_in") {
            released.user_dim
        } else if key.contains(".ln_") {
            // AdaLN's linear reads the fixed 64-wide timestep embedding at every size.
            d_in
        } else if key.contains("c_proj") {
            4 * released.width
        } else {
            released.width
        };
        self.std * (released_fan_in as f64 / d_in.max(1) as f64).sqrt()
    }
}

impl<B: Backend> ParamSource<B> for SmallStdInit<'_, B> {
    fn linear_with_keys(
        &mut self,
        weight_key: &str,
        bias_key: Option<&str>,
        d_in: usize,
        d_out: usize,
    ) -> Result<Linear<B>, LoadError> {
        let std = self.linear_std(weight_key, d_in);
        Ok(Linear {
            weight: Param::from_tensor(self.normal([d_in, d_out], std)),
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
            self.normal([len], self.std)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PreferenceAdapter;
    use burn::backend::Flex;

    #[test]
    fn init_names_parse_in_both_spellings_and_bad_ones_are_named() {
        for name in ["released", "Released"] {
            assert_eq!(name.parse::<AdapterInit>(), Ok(AdapterInit::Released));
        }
        for name in ["fan-in-matched", "FanInMatched"] {
            assert_eq!(name.parse::<AdapterInit>(), Ok(AdapterInit::FanInMatched));
        }
        let err = "fanin".parse::<AdapterInit>().unwrap_err();
        assert!(err.to_string().contains("`fanin`"), "{err}");
    }

    fn std_of<const D: usize>(t: Tensor<Flex, D>) -> f64 {
        let v: Vec<f32> = t.into_data().convert::<f32>().into_vec().unwrap();
        (v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
    }

    #[test]
    fn fan_in_matched_is_the_released_std_at_the_released_sizes() {
        let device = Default::default();
        let init = SmallStdInit::<Flex>::with(AdapterInit::FanInMatched, &device);
        for (key, fan_in) in [
            ("net.text_proj_in.weight", 4096),
            ("net.image_proj_in.weight", 1024),
            ("net.perceiver_blocks.0.attn.in_proj_weight", 3072),
            ("net.perceiver_blocks.2.mlp.c_proj.weight", 4 * 3072),
            ("net2.perceiver_blocks.1.ln_ff.linear.weight", 64),
            ("net2.proj_out.0.weight", 3072),
        ] {
            assert!((init.linear_std(key, fan_in) - 0.01).abs() < 1e-12, "{key}");
        }
        assert!((init.linear_std("net.proj_out.0.weight", 48) - 0.08).abs() < 1e-12);
    }

    #[test]
    fn fan_in_matched_scales_small_adapters_and_keeps_fresh_delta_small() {
        let device = Default::default();
        let config = AdapterConfig::small(32, 16, 48, 2);
        let a = PreferenceAdapter::<Flex>::init_with(&config, AdapterInit::FanInMatched, &device)
            .unwrap();
        let net = a.net.as_ref().unwrap();
        let close = |got: f64, want: f64| (got / want - 1.0).abs() < 0.1;
        let want = |released: f64, fan_in: f64| 0.01 * (released / fan_in).sqrt();
        assert!(close(
            std_of(net.text_proj_in.weight.val()),
            want(4096.0, 32.0)
        ));
        assert!(close(
            std_of(net.image_proj_in.weight.val()),
            want(1024.0, 16.0)
        ));
        let block = &net.perceiver_blocks[0];
        assert!(close(
            std_of(block.attn.in_proj.weight.val()),
            want(3072.0, 48.0)
        ));
        assert!(close(
            std_of(block.c_proj.weight.val()),
            want(12288.0, 192.0)
        ));
        // The output LayerNorm keeps the released 0.01 and biases stay 0: Δ starts ≈ 0.
        let norm = std_of(net.norm_weight.val());
        assert!((0.006..0.015).contains(&norm), "{norm}");
        assert_eq!(std_of(net.norm_bias.val()), 0.0);
        assert_eq!(std_of(block.attn.in_proj.bias.as_ref().unwrap().val()), 0.0);
        let released = PreferenceAdapter::<Flex>::init(&config, &device).unwrap();
        let r = &released.net.as_ref().unwrap().perceiver_blocks[0];
        assert!(close(std_of(r.attn.in_proj.weight.val()), 0.01));
    }
}
