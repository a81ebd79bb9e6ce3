//! Writing a FLUX transformer in the BFL checkpoint layout (`flux1-dev.safetensors` keys), so a model
//! trained here loads with [`Flux::load`] and with the reference code.

use std::path::Path;

use burn::nn::Linear;
use burn::prelude::*;

use crate::blocks::{DoubleStreamBlock, Mlp, SelfAttention, SingleStreamBlock};
use crate::embed::MlpEmbedder;
use crate::model::Flux;
use crate::norm::QkNorm;
use premier_io::LoadError;
use premier_io::{write_safetensors, HostTensor, SaveDtype};

/// Appends a `Linear` under PyTorch names and layout: `{key}.weight` `[out, in]` and `{key}.bias`.
pub fn export_linear<B: Backend>(
    linear: &Linear<B>,
    key: &str,
    out: &mut Vec<(String, HostTensor)>,
) {
    out.push((
        format!("{key}.weight"),
        HostTensor::from_tensor(linear.weight.val()).transposed(),
    ));
    if let Some(bias) = &linear.bias {
        out.push((format!("{key}.bias"), HostTensor::from_tensor(bias.val())));
    }
}

fn export_embedder<B: Backend>(e: &MlpEmbedder<B>, key: &str, out: &mut Vec<(String, HostTensor)>) {
    export_linear(&e.in_layer, &format!("{key}.in_layer"), out);
    export_linear(&e.out_layer, &format!("{key}.out_layer"), out);
}

fn export_qk_norm<B: Backend>(n: &QkNorm<B>, key: &str, out: &mut Vec<(String, HostTensor)>) {
    for (name, norm) in [("query_norm", &n.query_norm), ("key_norm", &n.key_norm)] {
        out.push((
            format!("{key}.{name}.scale"),
            HostTensor::from_tensor(norm.scale.val()),
        ));
    }
}

fn export_attention<B: Backend>(
    a: &SelfAttention<B>,
    key: &str,
    out: &mut Vec<(String, HostTensor)>,
) {
    export_linear(&a.qkv, &format!("{key}.qkv"), out);
    export_qk_norm(&a.norm, &format!("{key}.norm"), out);
    export_linear(&a.proj, &format!("{key}.proj"), out);
}

fn export_mlp<B: Backend>(m: &Mlp<B>, key: &str, out: &mut Vec<(String, HostTensor)>) {
    export_linear(&m.fc1, &format!("{key}.0"), out);
    export_linear(&m.fc2, &format!("{key}.2"), out);
}

fn export_double<B: Backend>(
    b: &DoubleStreamBlock<B>,
    key: &str,
    out: &mut Vec<(String, HostTensor)>,
) {
    export_linear(&b.img_mod.lin, &format!("{key}.img_mod.lin"), out);
    export_attention(&b.img_attn, &format!("{key}.img_attn"), out);
    export_mlp(&b.img_mlp, &format!("{key}.img_mlp"), out);
    export_linear(&b.txt_mod.lin, &format!("{key}.txt_mod.lin"), out);
    export_attention(&b.txt_attn, &format!("{key}.txt_attn"), out);
    export_mlp(&b.txt_mlp, &format!("{key}.txt_mlp"), out);
}

fn export_single<B: Backend>(
    b: &SingleStreamBlock<B>,
    key: &str,
    out: &mut Vec<(String, HostTensor)>,
) {
    // BFL keeps linear1 as one matrix: the qkv rows, then the MLP rows.
    let mut parts = Vec::new();
    export_linear(&b.linear1_qkv, "qkv", &mut parts);
    export_linear(&b.linear1_mlp, "mlp", &mut parts);
    let mut parts = parts.into_iter().map(|(_, t)| t);
    let (qkv_w, qkv_b, mlp_w, mlp_b) = (parts.next(), parts.next(), parts.next(), parts.next());
    if let (Some(qkv_w), Some(qkv_b), Some(mlp_w), Some(mlp_b)) = (qkv_w, qkv_b, mlp_w, mlp_b) {
        out.push((
            format!("{key}.linear1.weight"),
            HostTensor::concat_rows(vec![qkv_w, mlp_w]),
        ));
        out.push((
            format!("{key}.linear1.bias"),
            HostTensor::concat_rows(vec![qkv_b, mlp_b]),
        ));
    }
    export_linear(&b.linear2, &format!("{key}.linear2"), out);
    export_qk_norm(&b.norm, &format!("{key}.norm"), out);
    export_linear(&b.modulation.lin, &format!("{key}.modulation.lin"), out);
}

impl<B: Backend> Flux<B> {
    /// Every parameter under its BFL key, in PyTorch layout (f32 on the host).
    pub fn to_tensors(&self) -> Vec<(String, HostTensor)> {
        let mut out = Vec::new();
        export_linear(&self.img_in, "img_in", &mut out);
        export_embedder(&self.time_in, "time_in", &mut out);
        export_embedder(&self.vector_in, "vector_in", &mut out);
        if let Some(g) = &self.guidance_in {
            export_embedder(g, "guidance_in", &mut out);
        }
        export_linear(&self.txt_in, "txt_in", &mut out);
        for (i, b) in self.double_blocks.iter().enumerate() {
            export_double(b, &format!("double_blocks.{i}"), &mut out);
        }
        for (i, b) in self.single_blocks.iter().enumerate() {
            export_single(b, &format!("single_blocks.{i}"), &mut out);
        }
        export_linear(&self.final_layer.linear, "final_layer.linear", &mut out);
        export_linear(
            &self.final_layer.ada_ln_modulation,
            "final_layer.adaLN_modulation.1",
            &mut out,
        );
        out
    }

    /// Saves as a BFL single-file checkpoint, atomically (temporary file, then rename).
    pub fn save(&self, path: impl AsRef<Path>, dtype: SaveDtype) -> Result<(), LoadError> {
        write_safetensors(path.as_ref(), &self.to_tensors(), dtype)
    }
}
