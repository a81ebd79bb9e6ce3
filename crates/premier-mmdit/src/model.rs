//! The FLUX.1 MM-DiT (BFL `model.py`), with Premier's text-modulation hook.

use burn::nn::Linear;
use burn::prelude::*;

use crate::blocks::{DoubleStreamBlock, LastLayer, SingleStreamBlock};
use crate::config::{ConfigError, FluxConfig};
use crate::embed::{timestep_embedding, MlpEmbedder, Rope};
use crate::error::ForwardError;
use crate::fused::{flux_linear, FluxOps};
use crate::modulation::TextModulation;
use premier_io::LoadError;
use premier_io::{ParamSource, RandomInit};

/// Inputs of one FLUX forward (BFL `Flux.forward` arguments).
#[derive(Debug, Clone)]
pub struct FluxInput<B: Backend> {
    /// Packed latent tokens: `[batch, img_tokens, in_channels]` (see [`crate::pack`]).
    pub img: Tensor<B, 3>,
    /// Image positions `[0, row, col]`: `[batch, img_tokens, 3]` (see [`crate::img_ids`]).
    pub img_ids: Tensor<B, 3>,
    /// Text tokens (T5): `[batch, txt_tokens, context_in_dim]`.
    pub txt: Tensor<B, 3>,
    /// Text positions, all zero: `[batch, txt_tokens, 3]` (see [`crate::txt_ids`]).
    pub txt_ids: Tensor<B, 3>,
    /// Flow time in [0, 1] (1 = pure noise): `[batch]`.
    pub timesteps: Tensor<B, 1>,
    /// Pooled text vector (CLIP): `[batch, vec_in_dim]`.
    pub y: Tensor<B, 2>,
    /// Guidance scale (e.g. 3.5), required by guidance-distilled models: `[batch]`.
    pub guidance: Option<Tensor<B, 1>>,
}

/// FLUX.1 transformer. Field names mirror the BFL checkpoint keys.
#[derive(Module, Debug)]
pub struct Flux<B: Backend> {
    /// Packed latents → hidden.
    pub img_in: Linear<B>,
    /// The timestep's sinusoidal embedding → hidden.
    pub time_in: MlpEmbedder<B>,
    /// CLIP's pooled vector → hidden.
    pub vector_in: MlpEmbedder<B>,
    /// The guidance's embedding → hidden (dev only).
    pub guidance_in: Option<MlpEmbedder<B>>,
    /// T5 tokens → hidden.
    pub txt_in: Linear<B>,
    /// Image and text streams apart (dev: 19).
    pub double_blocks: Vec<DoubleStreamBlock<B>>,
    /// One joint stream (dev: 38).
    pub single_blocks: Vec<SingleStreamBlock<B>>,
    /// adaLN and projection to the velocity.
    pub final_layer: LastLayer<B>,
    hidden_size: usize,
    in_channels: usize,
    context_in_dim: usize,
    vec_in_dim: usize,
    axes_dim: Vec<usize>,
    theta: usize,
    num_heads: usize,
}

impl<B: Backend> Flux<B> {
    /// A randomly initialised model (burn's default init; norm scales 1).
    pub fn init(config: &FluxConfig, device: &B::Device) -> Result<Self, ConfigError> {
        Self::init_with_dtype(config, device, None)
    }

    /// [`Self::init`] with every weight stored as `dtype` (each cast as it is drawn: a bf16
    /// FLUX.1-dev never holds its 48 GB f32 copy).
    pub fn init_with_dtype(
        config: &FluxConfig,
        device: &B::Device,
        dtype: Option<burn::tensor::FloatDType>,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        Self::build(&mut RandomInit { device, dtype }, config).map_err(|e| ConfigError {
            reason: e.to_string(),
        })
    }

    /// Builds every module from `src`, asking for parameters by their BFL key.
    pub(crate) fn build(
        src: &mut impl ParamSource<B>,
        config: &FluxConfig,
    ) -> Result<Self, LoadError> {
        let hidden = config.hidden_size;
        let heads = config.num_heads;
        let mlp_hidden = config.mlp_hidden();
        let guidance_in = if config.guidance_embed {
            Some(MlpEmbedder::build(src, "guidance_in", 256, hidden)?)
        } else {
            None
        };
        Ok(Self {
            img_in: src.linear("img_in", config.in_channels, hidden, true)?,
            time_in: MlpEmbedder::build(src, "time_in", 256, hidden)?,
            vector_in: MlpEmbedder::build(src, "vector_in", config.vec_in_dim, hidden)?,
            guidance_in,
            txt_in: src.linear("txt_in", config.context_in_dim, hidden, true)?,
            double_blocks: (0..config.depth)
                .map(|i| {
                    DoubleStreamBlock::build(
                        src,
                        &format!("double_blocks.{i}"),
                        hidden,
                        heads,
                        mlp_hidden,
                        config.qkv_bias,
                    )
                })
                .collect::<Result<_, _>>()?,
            single_blocks: (0..config.depth_single_blocks)
                .map(|i| {
                    SingleStreamBlock::build(
                        src,
                        &format!("single_blocks.{i}"),
                        hidden,
                        heads,
                        mlp_hidden,
                    )
                })
                .collect::<Result<_, _>>()?,
            final_layer: LastLayer::build(src, "final_layer", hidden, config.out_channels)?,
            hidden_size: hidden,
            in_channels: config.in_channels,
            context_in_dim: config.context_in_dim,
            vec_in_dim: config.vec_in_dim,
            axes_dim: config.axes_dim.clone(),
            theta: config.theta,
            num_heads: heads,
        })
    }

    /// Number of double-stream blocks (the `depth` of Δ_distinct).
    pub fn depth(&self) -> usize {
        self.double_blocks.len()
    }

    /// Model width (the last dim of every Δ).
    pub fn hidden_size(&self) -> usize {
        self.hidden_size
    }

    /// The conditioning vector `y = time_in(t) + guidance_in(g) + vector_in(pooled)`: `[batch, hidden]`.
    pub fn conditioning_vector(
        &self,
        timesteps: Tensor<B, 1>,
        y: Tensor<B, 2>,
        guidance: Option<Tensor<B, 1>>,
    ) -> Tensor<B, 2> {
        let dtype = self.weight_dtype();
        // The sinusoids are computed in the inputs' float type (as the reference does in f32),
        // then meet the weights in theirs.
        let embed = |t: Tensor<B, 1>| timestep_embedding(t, 256).cast(dtype);
        let mut vec = self.time_in.forward(embed(timesteps));
        if let (Some(embedder), Some(g)) = (&self.guidance_in, guidance) {
            vec = vec + embedder.forward(embed(g));
        }
        vec + self.vector_in.forward(y.cast(dtype))
    }

    /// Float type of the weights (f32 unless cast with [`Flux::with_weight_dtype`]).
    pub fn weight_dtype(&self) -> burn::tensor::DType {
        self.img_in.weight.val().dtype()
    }

    /// The same model with its weights stored in `dtype` (e.g. bf16 for a frozen backbone next
    /// to f32 adapters). The forward pass then runs in `dtype`: inputs, Δ and position
    /// embeddings are cast to it on the way in, and the velocity is cast back to the input's
    /// float type, so gradients still reach an f32 Δ.
    pub fn with_weight_dtype(self, dtype: burn::tensor::FloatDType) -> Self {
        premier_io::cast_float_params(self, dtype)
    }
}

impl<B: FluxOps> Flux<B> {
    /// Predicted velocity `[batch, img_tokens, out_channels]`, optionally with Premier's per-token
    /// text modulation.
    ///
    /// # Panics
    /// On inputs that [`Flux::try_forward`] rejects (wrong shapes, missing guidance); call that to
    /// get the error instead.
    pub fn forward(
        &self,
        input: FluxInput<B>,
        modulation: Option<&TextModulation<B>>,
    ) -> Tensor<B, 3> {
        match self.try_forward(input, modulation) {
            Ok(out) => out,
            Err(e) => panic!("{e}"),
        }
    }

    /// [`Flux::forward`] that checks every shape first and reports the first mismatch.
    pub fn try_forward(
        &self,
        input: FluxInput<B>,
        modulation: Option<&TextModulation<B>>,
    ) -> Result<Tensor<B, 3>, ForwardError> {
        self.check(&input, modulation)?;
        let FluxInput {
            img,
            img_ids,
            txt,
            txt_ids,
            timesteps,
            y,
            guidance,
        } = input;
        let txt_tokens = txt.dims()[1];
        let img_tokens = img.dims()[1];
        // Everything meets the weights in their float type; the output goes back to the input's.
        let (dtype, out_dtype) = (self.weight_dtype(), img.dtype());

        let mut img = flux_linear(&self.img_in, img.cast(dtype));
        let vec = self.conditioning_vector(timesteps, y, guidance);
        let mut txt = flux_linear(&self.txt_in, txt.cast(dtype));
        let rope = Rope::new(
            Tensor::cat(vec![txt_ids, img_ids], 1),
            &self.axes_dim,
            self.theta,
        )
        // f32 tables for half activations, as BFL's `apply_rope` rotates in f32.
        .cast(crate::fused::composite::compute_dtype(dtype));

        for (j, block) in self.double_blocks.iter().enumerate() {
            let delta = modulation
                .and_then(|m| m.double_block_delta(j))
                .map(|d| d.cast(dtype));
            (img, txt) = block.forward(img, txt, vec.clone(), delta, &rope);
        }
        let mut x = Tensor::cat(vec![txt, img], 1);
        for block in &self.single_blocks {
            x = block.forward(x, vec.clone(), &rope);
        }
        let img = x.narrow(1, txt_tokens, img_tokens);
        Ok(self.final_layer.forward(img, vec).cast(out_dtype))
    }

    fn check(
        &self,
        input: &FluxInput<B>,
        modulation: Option<&TextModulation<B>>,
    ) -> Result<(), ForwardError> {
        let [batch, img_tokens, in_channels] = input.img.dims();
        let [txt_batch, txt_tokens, context] = input.txt.dims();
        let expect = |name: &str, found: Vec<usize>, expected: Vec<usize>| {
            if found == expected {
                Ok(())
            } else {
                Err(ForwardError::Shape {
                    input: name.to_string(),
                    expected,
                    found,
                })
            }
        };
        expect(
            "img",
            vec![batch, img_tokens, in_channels],
            vec![batch, img_tokens, self.in_channels],
        )?;
        expect(
            "txt",
            vec![txt_batch, txt_tokens, context],
            vec![batch, txt_tokens, self.context_in_dim],
        )?;
        expect(
            "img_ids",
            input.img_ids.dims().to_vec(),
            vec![batch, img_tokens, 3],
        )?;
        expect(
            "txt_ids",
            input.txt_ids.dims().to_vec(),
            vec![batch, txt_tokens, 3],
        )?;
        expect("timesteps", input.timesteps.dims().to_vec(), vec![batch])?;
        expect("y", input.y.dims().to_vec(), vec![batch, self.vec_in_dim])?;
        match (&self.guidance_in, &input.guidance) {
            (Some(_), None) => return Err(ForwardError::MissingGuidance),
            (_, Some(g)) => expect("guidance", g.dims().to_vec(), vec![batch])?,
            (None, None) => {}
        }
        if let Some(m) = modulation {
            m.check(batch, txt_tokens, self.depth(), self.hidden_size)
                .map_err(ForwardError::Modulation)?;
        }
        Ok(())
    }
}
