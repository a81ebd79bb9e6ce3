//! BFL (`ae.safetensors`) keys ↔ diffusers `AutoencoderKL` keys (diffusers
//! `convert_ldm_vae_checkpoint`, read backwards). Modules are named by BFL keys.

/// The diffusers key for the BFL key `bfl`, with `levels` resolution levels.
pub fn diffusers_key(bfl: &str, levels: usize) -> String {
    let (module, param) = bfl.rsplit_once('.').unwrap_or((bfl, ""));
    let parts: Vec<&str> = module.split('.').collect();
    let mapped = match parts.as_slice() {
        [side, "down", i, "block", j, rest @ ..] => {
            format!("{side}.down_blocks.{i}.resnets.{j}.{}", resnet_part(rest))
        }
        [side, "down", i, "downsample", "conv"] => {
            format!("{side}.down_blocks.{i}.downsamplers.0.conv")
        }
        [side, "up", i, "block", j, rest @ ..] => {
            let i = levels - 1 - i.parse::<usize>().unwrap_or(0);
            format!("{side}.up_blocks.{i}.resnets.{j}.{}", resnet_part(rest))
        }
        [side, "up", i, "upsample", "conv"] => {
            let i = levels - 1 - i.parse::<usize>().unwrap_or(0);
            format!("{side}.up_blocks.{i}.upsamplers.0.conv")
        }
        [side, "mid", "block_1", rest @ ..] => {
            format!("{side}.mid_block.resnets.0.{}", resnet_part(rest))
        }
        [side, "mid", "block_2", rest @ ..] => {
            format!("{side}.mid_block.resnets.1.{}", resnet_part(rest))
        }
        [side, "mid", "attn_1", name] => {
            let name = match *name {
                "norm" => "group_norm",
                "q" => "to_q",
                "k" => "to_k",
                "v" => "to_v",
                "proj_out" => "to_out.0",
                other => other,
            };
            format!("{side}.mid_block.attentions.0.{name}")
        }
        [side, "norm_out"] => format!("{side}.conv_norm_out"),
        _ => module.to_string(),
    };
    format!("{mapped}.{param}")
}

fn resnet_part(rest: &[&str]) -> String {
    match rest {
        ["nin_shortcut"] => "conv_shortcut".into(),
        other => other.join("."),
    }
}

#[cfg(test)]
mod tests {
    use super::diffusers_key;

    #[test]
    fn keys_follow_the_diffusers_converter() {
        let cases = [
            (
                "encoder.down.1.block.0.nin_shortcut.weight",
                "encoder.down_blocks.1.resnets.0.conv_shortcut.weight",
            ),
            (
                "encoder.down.0.downsample.conv.bias",
                "encoder.down_blocks.0.downsamplers.0.conv.bias",
            ),
            (
                "decoder.up.0.block.2.conv1.weight",
                "decoder.up_blocks.3.resnets.2.conv1.weight",
            ),
            (
                "decoder.up.3.upsample.conv.weight",
                "decoder.up_blocks.0.upsamplers.0.conv.weight",
            ),
            (
                "decoder.mid.attn_1.proj_out.weight",
                "decoder.mid_block.attentions.0.to_out.0.weight",
            ),
            (
                "encoder.mid.block_2.norm1.bias",
                "encoder.mid_block.resnets.1.norm1.bias",
            ),
            ("decoder.norm_out.weight", "decoder.conv_norm_out.weight"),
            ("encoder.conv_in.weight", "encoder.conv_in.weight"),
        ];
        for (bfl, diffusers) in cases {
            assert_eq!(diffusers_key(bfl, 4), diffusers, "{bfl}");
        }
    }
}
