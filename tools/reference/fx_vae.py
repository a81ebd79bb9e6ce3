"""VAE fixture.

Makes:
  vae_tiny -> vae_tiny.{safetensors,json}, vae_tiny_weights_{diffusers,bfl}.safetensors
              (diffusers AutoencoderKL == BFL flux.modules.autoencoder.AutoEncoder, tiny widths)
"""

from __future__ import annotations

import types

import numpy as np
import torch

from common import asset_path, maxdiff, perturb_, tensor_table

DIFFUSERS_CONFIG = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 16, "block_out_channels": [24, 48],
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"], "layers_per_block": 1, "norm_num_groups": 8,
    "act_fn": "silu", "scaling_factor": 0.3611, "shift_factor": 0.1159, "use_quant_conv": False,
    "use_post_quant_conv": False, "mid_block_add_attention": True, "force_upcast": True, "sample_size": 32,
}
BFL_PARAMS = {
    "resolution": 32, "in_channels": 3, "ch": 24, "out_ch": 3, "ch_mult": [1, 2], "num_res_blocks": 1,
    "z_channels": 16, "scale_factor": 0.3611, "shift_factor": 0.1159,
    "note": "GroupNorm uses 8 groups here (BFL hard-codes 32)",
}


def diffusers_to_bfl(sd: dict[str, torch.Tensor], n_levels: int = 2) -> dict[str, torch.Tensor]:
    """Diffusers AutoencoderKL keys -> BFL / ldm ae.safetensors keys (fixture README section 8)."""
    out = {}

    def copy(dst, src, conv1x1=False):
        for suffix in ("weight", "bias"):
            v = sd[f"{src}.{suffix}"]
            out[f"{dst}.{suffix}"] = v[:, :, None, None] if conv1x1 and suffix == "weight" else v

    def resnet(dst, src):
        for name in ("norm1", "conv1", "norm2", "conv2"):
            copy(f"{dst}.{name}", f"{src}.{name}")
        if f"{src}.conv_shortcut.weight" in sd:
            copy(f"{dst}.nin_shortcut", f"{src}.conv_shortcut")

    def mid(part):
        resnet(f"{part}.mid.block_1", f"{part}.mid_block.resnets.0")
        resnet(f"{part}.mid.block_2", f"{part}.mid_block.resnets.1")
        a = f"{part}.mid_block.attentions.0"
        copy(f"{part}.mid.attn_1.norm", f"{a}.group_norm")
        for bfl, dif in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("proj_out", "to_out.0")):
            copy(f"{part}.mid.attn_1.{bfl}", f"{a}.{dif}", conv1x1=True)

    for part in ("encoder", "decoder"):
        copy(f"{part}.conv_in", f"{part}.conv_in")
        copy(f"{part}.conv_out", f"{part}.conv_out")
        copy(f"{part}.norm_out", f"{part}.conv_norm_out")
        mid(part)
    for i in range(n_levels):
        resnet(f"encoder.down.{i}.block.0", f"encoder.down_blocks.{i}.resnets.0")
        if f"encoder.down_blocks.{i}.downsamplers.0.conv.weight" in sd:
            copy(f"encoder.down.{i}.downsample.conv", f"encoder.down_blocks.{i}.downsamplers.0.conv")
        j = 0
        while f"decoder.up_blocks.{i}.resnets.{j}.conv1.weight" in sd:
            resnet(f"decoder.up.{n_levels - 1 - i}.block.{j}", f"decoder.up_blocks.{i}.resnets.{j}")
            j += 1
        if f"decoder.up_blocks.{i}.upsamplers.0.conv.weight" in sd:
            copy(f"decoder.up.{n_levels - 1 - i}.upsample.conv", f"decoder.up_blocks.{i}.upsamplers.0.conv")
    assert sum(v.numel() for v in out.values()) == sum(v.numel() for v in sd.values())
    return {k: v.clone() for k, v in out.items()}


def load_image() -> torch.Tensor:
    """coffee.png: centre crop 400x400, PIL bicubic to 32x32, /255*2-1, RGB NCHW."""
    from PIL import Image

    img = Image.open(asset_path("images", "coffee.png")).convert("RGB")
    w, h = img.size
    left, top = (w - 400) // 2, (h - 400) // 2
    img = img.crop((left, top, left + 400, top + 400)).resize((32, 32), Image.BICUBIC)
    arr = np.asarray(img, dtype=np.float32) / 255.0 * 2.0 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()


def _bfl_autoencoder():
    """BFL AutoEncoder with GroupNorm(8, ...) instead of its hard-coded 32 groups."""
    import flux.modules.autoencoder as ae

    class _GroupNorm8(torch.nn.GroupNorm):
        def __init__(self, num_groups, num_channels, eps=1e-6, affine=True):
            super().__init__(8, num_channels, eps=eps, affine=affine)

    # The module refers to torch.nn as `nn`; give it a copy whose GroupNorm has 8 groups.
    patched_nn = types.SimpleNamespace(**{k: getattr(torch.nn, k) for k in dir(torch.nn) if not k.startswith("__")})
    patched_nn.GroupNorm = _GroupNorm8
    saved, ae.nn = ae.nn, patched_nn
    try:
        params = {k: v for k, v in BFL_PARAMS.items() if k != "note"}
        return ae.AutoEncoder(ae.AutoEncoderParams(**params)).eval()
    finally:
        ae.nn = saved


@torch.no_grad()
def make_vae_tiny(w) -> dict:
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    torch.manual_seed(18000)
    vae = AutoencoderKL(**DIFFUSERS_CONFIG).eval()
    perturb_(vae, torch.Generator().manual_seed(18001), named=True)
    image = load_image()

    rec, handles = {}, []
    for i, blk in enumerate(vae.encoder.down_blocks):
        handles.append(blk.register_forward_hook(lambda m, a, o, i=i: rec.__setitem__(f"enc_down{i}", o)))
    handles.append(vae.encoder.mid_block.register_forward_hook(lambda m, a, o: rec.__setitem__("enc_mid", o)))
    handles.append(vae.decoder.mid_block.register_forward_hook(lambda m, a, o: rec.__setitem__("dec_mid", o)))
    post = vae.encode(image).latent_dist
    sf, sh = vae.config.scaling_factor, vae.config.shift_factor
    latent_scaled = (post.mean - sh) * sf
    decoded = vae.decode(latent_scaled / sf + sh).sample
    for h in handles:
        h.remove()

    dsd = vae.state_dict()
    bfl_sd = diffusers_to_bfl(dsd)
    back = convert_ldm_vae_checkpoint({k: v.clone() for k, v in bfl_sd.items()}, DIFFUSERS_CONFIG)
    assert set(back) == set(dsd), set(back) ^ set(dsd)
    bfl = _bfl_autoencoder()
    bfl.load_state_dict(bfl_sd, strict=True)
    latent_bfl = bfl.encode(image)
    decoded_bfl = bfl.decode(latent_scaled)

    verification = {
        "convert_ldm_vae_checkpoint(BFL) -> diffusers round trip max diff": max(
            maxdiff(back[k].reshape(dsd[k].shape), dsd[k]) for k in dsd),
        "max|BFL AutoEncoder.encode - scaled latent|": maxdiff(latent_bfl, latent_scaled),
        "max|BFL AutoEncoder.decode - decoded|": maxdiff(decoded_bfl, decoded),
        "max|decoded|": decoded.abs().max().item(),
    }
    tensors = dict(image=image, posterior_mean=post.mean, posterior_logvar=post.logvar, latent_scaled=latent_scaled,
                   latent_bfl_encode=latent_bfl, decoded=decoded, **rec)
    w.safetensors("vae_tiny_weights_diffusers.safetensors", dsd)
    w.safetensors("vae_tiny_weights_bfl.safetensors", bfl_sd)
    w.safetensors("vae_tiny.safetensors", tensors)
    w.json("vae_tiny.json", dict(VAE_TEXT, diffusers_config=DIFFUSERS_CONFIG, bfl_params=BFL_PARAMS, **VAE_TEXT2,
                                 verification=verification, tensors=tensor_table(tensors)))
    return verification


# ---- prose of the json file (project text, as in tests/fixtures) ----

VAE_TEXT = {"description": (
    "FLUX-style VAE (diffusers AutoencoderKL: 16 latent channels, no quant_conv / post_quant_conv, mid-block "
    "attention, scaling 0.3611, shift 0.1159), small widths. Weights in two layouts (same values): diffusers and "
    "the original BFL/ldm layout of ae.safetensors.")}
VAE_TEXT2 = {
    "weight_init": (
        "torch.manual_seed(18000); diffusers default init; every parameter p += 0.05*N(0,1) from "
        "torch.Generator().manual_seed(18001) in named_parameters() order"),
    "image": (
        "image (1,3,32,32) in [-1,1]: assets/images/coffee.png, centre crop 400x400, PIL bicubic resize to 32x32, "
        "/255*2-1 (NCHW, RGB)"),
    "outputs": (
        "posterior_mean/posterior_logvar = vae.encode(image).latent_dist.{mean,logvar} (encoder conv_out split in "
        "two along channels; logvar clamped to [-30,20]); latent_scaled = (posterior_mean - 0.1159)*0.3611 (what "
        "FLUX packs and denoises); decoded = vae.decode(latent_scaled/0.3611 + 0.1159).sample (range not clamped); "
        "latent_bfl_encode = BFL AutoEncoder.encode(image) (sample_z False, equals latent_scaled)."),
    "intermediates": (
        "enc_down{i} (output of encoder down block i, after its downsampler if any), enc_mid (encoder mid block "
        "output, before norm_out/conv_out), dec_mid (decoder mid block output; the up blocks are not stored, to "
        "keep the files small)"),
    "key_mapping": (
        "BFL encoder.down.{i}.block.{j} = diffusers encoder.down_blocks.{i}.resnets.{j}; "
        "encoder.down.{i}.downsample.conv = encoder.down_blocks.{i}.downsamplers.0.conv; "
        "{encoder,decoder}.mid.block_{1,2} = mid_block.resnets.{0,1}; mid.attn_1.{norm,q,k,v,proj_out} = "
        "mid_block.attentions.0.{group_norm,to_q,to_k,to_v,to_out.0} (BFL 1x1 conv weight [C,C,1,1] = diffusers "
        "linear [C,C]); decoder.up.{n-1-i}.block.{j} = decoder.up_blocks.{i}.resnets.{j}; "
        "decoder.up.{n-1-i}.upsample.conv = decoder.up_blocks.{i}.upsamplers.0.conv; norm_out = conv_norm_out; "
        "nin_shortcut = conv_shortcut; conv_in/conv_out unchanged."),
}
