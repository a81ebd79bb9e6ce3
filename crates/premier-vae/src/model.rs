//! The autoencoder's modules (BFL names), its loading and its forward passes.

use std::path::Path;

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::activation::silu;
use burn::tensor::module::{attention, conv2d};
use burn::tensor::ops::{AttentionModuleOptions, ConvOptions, PaddedConvOptions};
use premier_io::LoadError;
use premier_io::{Checkpoint, HostTensor, TensorReader};

use crate::config::AutoencoderConfig;
use crate::error::VaeError;
use crate::layout::diffusers_key;

/// Reads BFL-named tensors from either layout.
struct Reader<'a, B: Backend> {
    checkpoint: &'a mut Checkpoint,
    diffusers: bool,
    levels: usize,
    device: &'a B::Device,
}

impl<B: Backend> Reader<'_, B> {
    fn read(&mut self, bfl_key: &str, shape: &[usize]) -> Result<HostTensor, LoadError> {
        if self.diffusers {
            self.checkpoint
                .read_tensor(&diffusers_key(bfl_key, self.levels), shape)
        } else {
            self.checkpoint.read_tensor(bfl_key, shape)
        }
    }

    fn vector(&mut self, key: &str, len: usize) -> Result<Param<Tensor<B, 1>>, LoadError> {
        Ok(Param::from_tensor(
            self.read(key, &[len])?.into_tensor(self.device),
        ))
    }

    fn conv(
        &mut self,
        key: &str,
        c_in: usize,
        c_out: usize,
        kernel: usize,
    ) -> Result<Conv<B>, LoadError> {
        let weight = self.read(&format!("{key}.weight"), &[c_out, c_in, kernel, kernel])?;
        Ok(Conv {
            weight: Param::from_tensor(weight.into_tensor(self.device)),
            bias: self.vector(&format!("{key}.bias"), c_out)?,
        })
    }

    /// The 1×1 projections of the mid attention: conv weights in BFL, linear weights in diffusers.
    fn projection(&mut self, key: &str, channels: usize) -> Result<Conv<B>, LoadError> {
        if !self.diffusers {
            return self.conv(key, channels, channels, 1);
        }
        let mut weight = self.read(&format!("{key}.weight"), &[channels, channels])?;
        weight.shape = vec![channels, channels, 1, 1];
        Ok(Conv {
            weight: Param::from_tensor(weight.into_tensor(self.device)),
            bias: self.vector(&format!("{key}.bias"), channels)?,
        })
    }

    fn norm(
        &mut self,
        key: &str,
        channels: usize,
        groups: usize,
    ) -> Result<GroupNorm<B>, LoadError> {
        Ok(GroupNorm {
            weight: self.vector(&format!("{key}.weight"), channels)?,
            bias: self.vector(&format!("{key}.bias"), channels)?,
            groups,
        })
    }
}

/// A 2-D convolution with PyTorch's weight layout `[out, in, k, k]`.
#[derive(Module, Debug)]
pub struct Conv<B: Backend> {
    pub weight: Param<Tensor<B, 4>>,
    pub bias: Param<Tensor<B, 1>>,
}

impl<B: Backend> Conv<B> {
    /// Stride 1, "same" padding. x: `[batch, in, h, w]` → `[batch, out, h, w]`.
    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let pad = self.weight.dims()[2] / 2;
        conv2d(
            x,
            self.weight.val(),
            Some(self.bias.val()),
            ConvOptions::new([1, 1], [pad, pad], [1, 1], 1),
        )
    }

    /// BFL `Downsample`: pad right and bottom by one, then a 3×3 conv with stride 2.
    fn downsample(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let options = PaddedConvOptions {
            options: ConvOptions::new([2, 2], [0, 0], [1, 1], 1),
            padding_end: Some([1, 1]),
        };
        conv2d(x, self.weight.val(), Some(self.bias.val()), options)
    }
}

/// GroupNorm with affine parameters, eps 1e-6.
#[derive(Module, Debug)]
pub struct GroupNorm<B: Backend> {
    pub weight: Param<Tensor<B, 1>>,
    pub bias: Param<Tensor<B, 1>>,
    groups: usize,
}

impl<B: Backend> GroupNorm<B> {
    /// x: `[batch, channels, h, w]` → same shape.
    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [batch, channels, h, w] = x.dims();
        let grouped = x.reshape([batch, self.groups, (channels / self.groups) * h * w]);
        let mean = grouped.clone().mean_dim(2);
        let centered = grouped - mean;
        let var = centered.clone().powi_scalar(2).mean_dim(2);
        let normed = (centered / (var + 1e-6).sqrt()).reshape([batch, channels, h, w]);
        normed * self.weight.val().reshape([1, channels, 1, 1])
            + self.bias.val().reshape([1, channels, 1, 1])
    }
}

/// `x + conv2(swish(norm2(conv1(swish(norm1(x))))))`, with a 1×1 shortcut when channels change.
#[derive(Module, Debug)]
pub struct ResnetBlock<B: Backend> {
    norm1: GroupNorm<B>,
    conv1: Conv<B>,
    norm2: GroupNorm<B>,
    conv2: Conv<B>,
    nin_shortcut: Option<Conv<B>>,
}

impl<B: Backend> ResnetBlock<B> {
    fn load(
        r: &mut Reader<B>,
        key: &str,
        c_in: usize,
        c_out: usize,
        groups: usize,
    ) -> Result<Self, LoadError> {
        Ok(Self {
            norm1: r.norm(&format!("{key}.norm1"), c_in, groups)?,
            conv1: r.conv(&format!("{key}.conv1"), c_in, c_out, 3)?,
            norm2: r.norm(&format!("{key}.norm2"), c_out, groups)?,
            conv2: r.conv(&format!("{key}.conv2"), c_out, c_out, 3)?,
            nin_shortcut: if c_in != c_out {
                Some(r.conv(&format!("{key}.nin_shortcut"), c_in, c_out, 1)?)
            } else {
                None
            },
        })
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let h = self.conv1.forward(silu(self.norm1.forward(x.clone())));
        let h = self.conv2.forward(silu(self.norm2.forward(h)));
        let x = match &self.nin_shortcut {
            Some(shortcut) => shortcut.forward(x),
            None => x,
        };
        x + h
    }
}

/// Single-head self-attention over all pixels (BFL `AttnBlock`).
#[derive(Module, Debug)]
pub struct AttnBlock<B: Backend> {
    norm: GroupNorm<B>,
    q: Conv<B>,
    k: Conv<B>,
    v: Conv<B>,
    proj_out: Conv<B>,
}

impl<B: Backend> AttnBlock<B> {
    fn load(
        r: &mut Reader<B>,
        key: &str,
        channels: usize,
        groups: usize,
    ) -> Result<Self, LoadError> {
        Ok(Self {
            norm: r.norm(&format!("{key}.norm"), channels, groups)?,
            q: r.projection(&format!("{key}.q"), channels)?,
            k: r.projection(&format!("{key}.k"), channels)?,
            v: r.projection(&format!("{key}.v"), channels)?,
            proj_out: r.projection(&format!("{key}.proj_out"), channels)?,
        })
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [batch, channels, h, w] = x.dims();
        let normed = self.norm.forward(x.clone());
        let tokens = |t: Tensor<B, 4>| t.reshape([batch, 1, channels, h * w]).swap_dims(2, 3);
        let out = attention(
            tokens(self.q.forward(normed.clone())),
            tokens(self.k.forward(normed.clone())),
            tokens(self.v.forward(normed)),
            None,
            None,
            AttentionModuleOptions::default(),
        );
        let out = out.swap_dims(2, 3).reshape([batch, channels, h, w]);
        x + self.proj_out.forward(out)
    }
}

/// Resnets of one resolution level, then an optional resampling conv.
#[derive(Module, Debug)]
pub struct Level<B: Backend> {
    blocks: Vec<ResnetBlock<B>>,
    resample: Option<Conv<B>>,
}

/// The mid block: resnet, attention, resnet.
#[derive(Module, Debug)]
pub struct Mid<B: Backend> {
    block_1: ResnetBlock<B>,
    attn_1: AttnBlock<B>,
    block_2: ResnetBlock<B>,
}

impl<B: Backend> Mid<B> {
    fn load(
        r: &mut Reader<B>,
        key: &str,
        channels: usize,
        groups: usize,
    ) -> Result<Self, LoadError> {
        Ok(Self {
            block_1: ResnetBlock::load(
                r,
                &format!("{key}.mid.block_1"),
                channels,
                channels,
                groups,
            )?,
            attn_1: AttnBlock::load(r, &format!("{key}.mid.attn_1"), channels, groups)?,
            block_2: ResnetBlock::load(
                r,
                &format!("{key}.mid.block_2"),
                channels,
                channels,
                groups,
            )?,
        })
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.block_2
            .forward(self.attn_1.forward(self.block_1.forward(x)))
    }
}

/// The posterior over latents, unscaled: mean and log-variance `[batch, z, h/8, w/8]`.
#[derive(Debug, Clone)]
pub struct LatentDistribution<B: Backend> {
    /// The posterior's mean `[batch, z, h/8, w/8]`.
    pub mean: Tensor<B, 4>,
    /// Clamped to [-30, 20] as the reference.
    pub logvar: Tensor<B, 4>,
}

impl<B: Backend> LatentDistribution<B> {
    /// `mean + exp(logvar / 2) · noise` with `noise ~ N(0, 1)` of the same shape.
    pub fn sample_with(&self, noise: Tensor<B, 4>) -> Tensor<B, 4> {
        self.mean.clone() + (self.logvar.clone() * 0.5).exp() * noise
    }

    /// A posterior sample with the backend's RNG (Premier's training encodes with a sample).
    pub fn sample(&self) -> Tensor<B, 4> {
        let noise = Tensor::random(
            self.mean.dims(),
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &self.mean.device(),
        );
        self.sample_with(noise)
    }
}

/// The FLUX autoencoder.
#[derive(Module, Debug)]
pub struct Autoencoder<B: Backend> {
    enc_conv_in: Conv<B>,
    enc_down: Vec<Level<B>>,
    enc_mid: Mid<B>,
    enc_norm_out: GroupNorm<B>,
    enc_conv_out: Conv<B>,
    dec_conv_in: Conv<B>,
    dec_mid: Mid<B>,
    /// Indexed by level as BFL `decoder.up.{i}`; run from the last level to the first.
    dec_up: Vec<Level<B>>,
    dec_norm_out: GroupNorm<B>,
    dec_conv_out: Conv<B>,
    latent_channels: usize,
    in_channels: usize,
    multiple: usize,
}

/// FLUX's latent normalisation: `(z - shift) · scale` (what the transformer sees).
pub fn scale_latent<B: Backend>(z: Tensor<B, 4>, config: &AutoencoderConfig) -> Tensor<B, 4> {
    (z - config.shift_factor) * config.scaling_factor
}

/// Inverse of [`scale_latent`]: `z / scale + shift` (what the decoder takes).
pub fn unscale_latent<B: Backend>(z: Tensor<B, 4>, config: &AutoencoderConfig) -> Tensor<B, 4> {
    z / config.scaling_factor + config.shift_factor
}

impl<B: Backend> Autoencoder<B> {
    /// Loads `ae.safetensors` (BFL) or a diffusers `vae/` folder / file; the layout is detected
    /// from the keys. Strict: every stored tensor must be used.
    pub fn load(
        path: impl AsRef<Path>,
        config: &AutoencoderConfig,
        device: &B::Device,
    ) -> Result<Self, VaeError> {
        let path = path.as_ref();
        let mut checkpoint = Checkpoint::open(path)?;
        let diffusers = if checkpoint.contains("encoder.down.0.block.0.conv1.weight") {
            false
        } else if checkpoint.contains("encoder.down_blocks.0.resnets.0.conv1.weight") {
            true
        } else {
            return Err(VaeError::UnknownLayout {
                path: path.to_path_buf(),
            });
        };
        let c = config;
        let levels = c.block_out_channels.len();
        let groups = c.norm_num_groups;
        let mut r = Reader {
            checkpoint: &mut checkpoint,
            diffusers,
            levels,
            device,
        };
        let ch = &c.block_out_channels;
        let top = ch[levels - 1];

        let enc_conv_in = r.conv("encoder.conv_in", c.in_channels, ch[0], 3)?;
        let mut enc_down = Vec::with_capacity(levels);
        let mut block_in = ch[0];
        for (i, &block_out) in ch.iter().enumerate() {
            let mut blocks = Vec::new();
            for j in 0..c.layers_per_block {
                blocks.push(ResnetBlock::load(
                    &mut r,
                    &format!("encoder.down.{i}.block.{j}"),
                    block_in,
                    block_out,
                    groups,
                )?);
                block_in = block_out;
            }
            let resample = if i + 1 < levels {
                Some(r.conv(
                    &format!("encoder.down.{i}.downsample.conv"),
                    block_out,
                    block_out,
                    3,
                )?)
            } else {
                None
            };
            enc_down.push(Level { blocks, resample });
        }
        let enc_mid = Mid::load(&mut r, "encoder", top, groups)?;
        let enc_norm_out = r.norm("encoder.norm_out", top, groups)?;
        let enc_conv_out = r.conv("encoder.conv_out", top, 2 * c.latent_channels, 3)?;

        let dec_conv_in = r.conv("decoder.conv_in", c.latent_channels, top, 3)?;
        let dec_mid = Mid::load(&mut r, "decoder", top, groups)?;
        let mut dec_up: Vec<Option<Level<B>>> = (0..levels).map(|_| None).collect();
        let mut block_in = top;
        for i in (0..levels).rev() {
            let block_out = ch[i];
            let mut blocks = Vec::new();
            for j in 0..=c.layers_per_block {
                blocks.push(ResnetBlock::load(
                    &mut r,
                    &format!("decoder.up.{i}.block.{j}"),
                    block_in,
                    block_out,
                    groups,
                )?);
                block_in = block_out;
            }
            let resample = if i > 0 {
                Some(r.conv(
                    &format!("decoder.up.{i}.upsample.conv"),
                    block_out,
                    block_out,
                    3,
                )?)
            } else {
                None
            };
            dec_up[i] = Some(Level { blocks, resample });
        }
        let dec_norm_out = r.norm("decoder.norm_out", ch[0], groups)?;
        let dec_conv_out = r.conv("decoder.conv_out", ch[0], c.out_channels, 3)?;
        checkpoint.ensure_all_used()?;
        Ok(Self {
            enc_conv_in,
            enc_down,
            enc_mid,
            enc_norm_out,
            enc_conv_out,
            dec_conv_in,
            dec_mid,
            dec_up: dec_up.into_iter().flatten().collect(),
            dec_norm_out,
            dec_conv_out,
            latent_channels: c.latent_channels,
            in_channels: c.in_channels,
            // FLUX packs 2×2 latent patches, so images need twice the VAE's factor.
            multiple: 2 * config.downsampling(),
        })
    }

    /// Encoder down path, for inspection: the output of every level (after its downsampler).
    pub fn encoder_levels(&self, image: Tensor<B, 4>) -> Vec<Tensor<B, 4>> {
        let mut h = self.enc_conv_in.forward(image);
        let mut outs = Vec::new();
        for level in &self.enc_down {
            for block in &level.blocks {
                h = block.forward(h);
            }
            if let Some(down) = &level.resample {
                h = down.downsample(h);
            }
            outs.push(h.clone());
        }
        outs
    }

    /// image `[batch, 3, H, W]` in [-1, 1], H and W divisible by 16 → the latent posterior
    /// `[batch, 16, H/8, W/8]` (unscaled; see [`scale_latent`]).
    ///
    /// # Panics
    /// On a wrong channel count or size; [`Autoencoder::try_encode`] returns the error instead.
    pub fn encode(&self, image: Tensor<B, 4>) -> LatentDistribution<B> {
        self.try_encode(image).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Autoencoder::encode`] that checks the image first.
    pub fn try_encode(&self, image: Tensor<B, 4>) -> Result<LatentDistribution<B>, VaeError> {
        let [_, channels, height, width] = image.dims();
        if channels != self.in_channels {
            return Err(VaeError::Channels {
                expected: self.in_channels,
                found: image.dims().to_vec(),
            });
        }
        if height % self.multiple != 0 || width % self.multiple != 0 || height == 0 || width == 0 {
            return Err(VaeError::ImageSize {
                height,
                width,
                multiple: self.multiple,
            });
        }
        let h = self
            .encoder_levels(image)
            .pop()
            .expect("at least one level");
        let h = self.enc_mid.forward(h);
        let moments = self
            .enc_conv_out
            .forward(silu(self.enc_norm_out.forward(h)));
        let z = self.latent_channels;
        Ok(LatentDistribution {
            mean: moments.clone().narrow(1, 0, z),
            logvar: moments.narrow(1, z, z).clamp(-30.0, 20.0),
        })
    }

    /// The decoder's mid block output, for inspection: z `[batch, 16, h, w]` (unscaled).
    pub fn decoder_mid(&self, z: Tensor<B, 4>) -> Tensor<B, 4> {
        self.dec_mid.forward(self.dec_conv_in.forward(z))
    }

    /// z `[batch, 16, h, w]` (unscaled; see [`unscale_latent`]) → image `[batch, 3, 8h, 8w]`,
    /// roughly in [-1, 1] (not clamped).
    ///
    /// # Panics
    /// On a wrong channel count; [`Autoencoder::try_decode`] returns the error instead.
    pub fn decode(&self, z: Tensor<B, 4>) -> Tensor<B, 4> {
        self.try_decode(z).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Autoencoder::decode`] that checks the latent first.
    pub fn try_decode(&self, z: Tensor<B, 4>) -> Result<Tensor<B, 4>, VaeError> {
        if z.dims()[1] != self.latent_channels {
            return Err(VaeError::Channels {
                expected: self.latent_channels,
                found: z.dims().to_vec(),
            });
        }
        let mut h = self.decoder_mid(z);
        for level in self.dec_up.iter().rev() {
            for block in &level.blocks {
                h = block.forward(h);
            }
            if let Some(up) = &level.resample {
                let [b, c, hh, ww] = h.dims();
                let doubled = h
                    .reshape([b, c, hh, 1, ww, 1])
                    .expand([b, c, hh, 2, ww, 2])
                    .reshape([b, c, 2 * hh, 2 * ww]);
                h = up.forward(doubled);
            }
        }
        Ok(self
            .dec_conv_out
            .forward(silu(self.dec_norm_out.forward(h))))
    }
}
