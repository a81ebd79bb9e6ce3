//! The world's text encoder: a word-level tokenizer (through `tokenizers`) and learned token
//! embeddings plus a pooled vector, giving the same [`TextConditioning`] as T5 + CLIP.

use std::path::Path;

use burn::module::Param;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::Distribution;
use premier_io::materialized;
use premier_io::{DeviceSource, HostTensor, ParamSource, TensorFile, TensorReader};
use premier_mmdit::{export_linear, LoadError};
use premier_text::{PromptTokenizer, TextConditioning, TextError};

/// Every word of the world's captions; index = token id. `[PAD]` is 0.
pub const VOCAB: [&str; 25] = [
    "[PAD]",
    "[UNK]",
    "a",
    "small",
    "large",
    "circle",
    "square",
    "triangle",
    "on",
    "the",
    "left",
    "right",
    "in",
    "center",
    "with",
    "background",
    "red",
    "green",
    "blue",
    "yellow",
    "solid",
    "dotted",
    "dark",
    "light",
    "gray",
];
/// Tokens per prompt (captions with style words have 13).
pub const MAX_TOKENS: usize = 16;

/// The word-level tokenizer: whitespace split, unknown words → `[UNK]`.
pub fn build_tokenizer() -> Result<tokenizers::Tokenizer, String> {
    use tokenizers::models::wordlevel::WordLevel;
    use tokenizers::pre_tokenizers::whitespace::Whitespace;
    let vocab = VOCAB
        .iter()
        .enumerate()
        .map(|(i, w)| (w.to_string(), i as u32))
        .collect();
    let model = WordLevel::builder()
        .vocab(vocab)
        .unk_token("[UNK]".into())
        .build()
        .map_err(|e| e.to_string())?;
    let mut tokenizer = tokenizers::Tokenizer::new(model);
    tokenizer.with_pre_tokenizer(Some(Whitespace {}));
    Ok(tokenizer)
}

/// The tokenizer saved in a base model folder (`<dir>/tokenizer.json`, written by
/// [`build_tokenizer`]), padding with `[PAD]` to [`MAX_TOKENS`].
pub fn load_tokenizer(dir: &Path) -> Result<PromptTokenizer, TextError> {
    PromptTokenizer::from_file(dir.join("tokenizer.json"), MAX_TOKENS, 0, "[PAD]")
}

/// Learned word and position embeddings `[MAX_TOKENS, context_dim]` per prompt; the pooled
/// vector is a linear map of the mean over non-padding tokens.
#[derive(Module, Debug)]
pub struct SynthTextEncoder<B: Backend> {
    /// `[VOCAB.len(), context_dim]`.
    pub embedding: Param<Tensor<B, 2>>,
    /// `[MAX_TOKENS, context_dim]`.
    pub position: Param<Tensor<B, 2>>,
    /// context_dim → vec_dim.
    pub pooled: Linear<B>,
}

impl<B: Backend> SynthTextEncoder<B> {
    /// A fresh encoder of `context_dim`-wide tokens and a `vec_dim` pooled vector.
    pub fn init(context_dim: usize, vec_dim: usize, device: &B::Device) -> Self {
        Self {
            embedding: Param::from_tensor(Tensor::random(
                [VOCAB.len(), context_dim],
                Distribution::Normal(0.0, 1.0),
                device,
            )),
            position: Param::from_tensor(Tensor::random(
                [MAX_TOKENS, context_dim],
                Distribution::Normal(0.0, 0.1),
                device,
            )),
            pooled: materialized(LinearConfig::new(context_dim, vec_dim).init(device)),
        }
    }

    /// ids `[batch, MAX_TOKENS]` → tokens `[batch, MAX_TOKENS, context_dim]` and pooled
    /// `[batch, vec_dim]`.
    pub fn forward(&self, ids: Tensor<B, 2, Int>) -> TextConditioning<B> {
        let [batch, len] = ids.dims();
        let dim = self.embedding.dims()[1];
        let words = self
            .embedding
            .val()
            .select(0, ids.clone().reshape([batch * len]))
            .reshape([batch, len, dim]);
        let tokens = words.clone() + self.position.val().unsqueeze_dim::<3>(0);
        let mask = ids.not_equal_elem(0).float().unsqueeze_dim::<3>(2);
        let count = mask.clone().sum_dim(1).clamp_min(1.0);
        let mean = ((words * mask).sum_dim(1) / count).reshape([batch, dim]);
        TextConditioning {
            tokens,
            pooled: self.pooled.forward(mean),
        }
    }

    /// Tokenizes and encodes `prompts`.
    pub fn encode(
        &self,
        tokenizer: &PromptTokenizer,
        prompts: &[&str],
    ) -> Result<TextConditioning<B>, TextError> {
        let device = self.embedding.device();
        let batch = tokenizer.encode(prompts)?;
        let flat: Vec<i64> = batch.ids.iter().flatten().copied().collect();
        let ids = Tensor::from_data(TensorData::new(flat, [prompts.len(), MAX_TOKENS]), &device);
        Ok(self.forward(ids))
    }

    /// Parameters by name: `embedding`, `position`, `pooled.weight` `[out, in]`, `pooled.bias`.
    pub fn to_tensors(&self) -> Vec<(String, HostTensor)> {
        let mut out = vec![
            (
                "embedding".into(),
                HostTensor::from_tensor(self.embedding.val()),
            ),
            (
                "position".into(),
                HostTensor::from_tensor(self.position.val()),
            ),
        ];
        export_linear(&self.pooled, "pooled", &mut out);
        out
    }

    /// Reads what [`Self::to_tensors`] wrote, strictly: shapes must match and every tensor in
    /// the file must be used.
    pub fn load(
        path: &Path,
        context_dim: usize,
        vec_dim: usize,
        device: &B::Device,
    ) -> Result<Self, LoadError> {
        let mut file = TensorFile::open(path)?;
        let embedding = file.read_tensor("embedding", &[VOCAB.len(), context_dim])?;
        let position = file.read_tensor("position", &[MAX_TOKENS, context_dim])?;
        let pooled = DeviceSource {
            reader: &mut file,
            device,
            prefix: String::new(),
            dtype: None,
        }
        .linear("pooled", context_dim, vec_dim, true)?;
        file.ensure_all_used()?;
        Ok(Self {
            embedding: Param::from_tensor(embedding.into_tensor(device)),
            position: Param::from_tensor(position.into_tensor(device)),
            pooled,
        })
    }
}
