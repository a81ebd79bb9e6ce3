//! Key tables: where each BFL parameter lives in a diffusers `FluxTransformer2DModel` checkpoint.
//!
//! BFL keys are the module tree of this crate. Diffusers splits the fused projections and swaps
//! the halves of the final adaLN (SPEC §1.7, diffusers `convert_flux_to_diffusers.py`). Patterns are
//! applied in order, more specific first.

/// How to assemble one BFL tensor from diffusers tensors.
#[derive(Debug, Clone, PartialEq)]
pub enum Recipe {
    /// The tensor under another name.
    Rename(String),
    /// Several tensors stacked along dim 0, each with the given number of rows.
    Concat(Vec<(String, usize)>),
    /// The tensor with its two halves along dim 0 exchanged.
    SwapHalves(String),
}

/// The diffusers recipe for the BFL key `bfl_key` (e.g. `double_blocks.3.img_attn.qkv.weight`).
///
/// `hidden` is the model width (rows of each of q, k, v). Returns `None` for a key with no
/// diffusers counterpart.
pub fn diffusers_recipe(bfl_key: &str, hidden: usize) -> Option<Recipe> {
    let (module, param) = bfl_key.rsplit_once('.')?;
    // Norm scales are `.weight` in diffusers.
    let param = if param == "scale" { "weight" } else { param };
    let rename = |m: &str| Some(Recipe::Rename(format!("{m}.{param}")));

    let top = match module {
        "img_in" => Some("x_embedder"),
        "txt_in" => Some("context_embedder"),
        "time_in.in_layer" => Some("time_text_embed.timestep_embedder.linear_1"),
        "time_in.out_layer" => Some("time_text_embed.timestep_embedder.linear_2"),
        "vector_in.in_layer" => Some("time_text_embed.text_embedder.linear_1"),
        "vector_in.out_layer" => Some("time_text_embed.text_embedder.linear_2"),
        "guidance_in.in_layer" => Some("time_text_embed.guidance_embedder.linear_1"),
        "guidance_in.out_layer" => Some("time_text_embed.guidance_embedder.linear_2"),
        "final_layer.linear" => Some("proj_out"),
        _ => None,
    };
    if let Some(name) = top {
        return rename(name);
    }
    if module == "final_layer.adaLN_modulation.1" {
        return Some(Recipe::SwapHalves(format!("norm_out.linear.{param}")));
    }

    let (kind, rest) = module.split_once('.')?;
    let (index, inner) = rest.split_once('.')?;
    let index: usize = index.parse().ok()?;
    match kind {
        "double_blocks" => {
            let p = format!("transformer_blocks.{index}");
            let qkv = |names: [&str; 3]| {
                Some(Recipe::Concat(
                    names
                        .iter()
                        .map(|n| (format!("{p}.attn.{n}.{param}"), hidden))
                        .collect(),
                ))
            };
            let name = match inner {
                "img_attn.qkv" => return qkv(["to_q", "to_k", "to_v"]),
                "txt_attn.qkv" => return qkv(["add_q_proj", "add_k_proj", "add_v_proj"]),
                "img_mod.lin" => "norm1.linear",
                "txt_mod.lin" => "norm1_context.linear",
                "img_attn.norm.query_norm" => "attn.norm_q",
                "img_attn.norm.key_norm" => "attn.norm_k",
                "txt_attn.norm.query_norm" => "attn.norm_added_q",
                "txt_attn.norm.key_norm" => "attn.norm_added_k",
                "img_attn.proj" => "attn.to_out.0",
                "txt_attn.proj" => "attn.to_add_out",
                "img_mlp.0" => "ff.net.0.proj",
                "img_mlp.2" => "ff.net.2",
                "txt_mlp.0" => "ff_context.net.0.proj",
                "txt_mlp.2" => "ff_context.net.2",
                _ => return None,
            };
            rename(&format!("{p}.{name}"))
        }
        "single_blocks" => {
            let p = format!("single_transformer_blocks.{index}");
            let name = match inner {
                "linear1" => {
                    // [q; k; v; mlp]: the mlp part has whatever rows remain (mlp_hidden).
                    let parts = ["attn.to_q", "attn.to_k", "attn.to_v"]
                        .iter()
                        .map(|n| (format!("{p}.{n}.{param}"), hidden))
                        .chain([(format!("{p}.proj_mlp.{param}"), usize::MAX)])
                        .collect();
                    return Some(Recipe::Concat(parts));
                }
                "linear2" => "proj_out",
                "norm.query_norm" => "attn.norm_q",
                "norm.key_norm" => "attn.norm_k",
                "modulation.lin" => "norm.linear",
                _ => return None,
            };
            rename(&format!("{p}.{name}"))
        }
        _ => None,
    }
}

/// Block counting prefixes: (BFL, diffusers) names of double and single blocks.
pub const DOUBLE_PREFIXES: (&str, &str) = ("double_blocks.", "transformer_blocks.");
pub const SINGLE_PREFIXES: (&str, &str) = ("single_blocks.", "single_transformer_blocks.");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fused_qkv_is_three_diffusers_projections() {
        let r = diffusers_recipe("double_blocks.1.txt_attn.qkv.bias", 32).unwrap();
        assert_eq!(
            r,
            Recipe::Concat(vec![
                ("transformer_blocks.1.attn.add_q_proj.bias".into(), 32),
                ("transformer_blocks.1.attn.add_k_proj.bias".into(), 32),
                ("transformer_blocks.1.attn.add_v_proj.bias".into(), 32),
            ])
        );
    }

    #[test]
    fn norm_scale_becomes_weight_and_final_adaln_swaps() {
        assert_eq!(
            diffusers_recipe("single_blocks.0.norm.key_norm.scale", 8),
            Some(Recipe::Rename(
                "single_transformer_blocks.0.attn.norm_k.weight".into()
            ))
        );
        assert_eq!(
            diffusers_recipe("final_layer.adaLN_modulation.1.weight", 8),
            Some(Recipe::SwapHalves("norm_out.linear.weight".into()))
        );
        assert_eq!(diffusers_recipe("double_blocks.0.nonsense.weight", 8), None);
    }
}
