"""FLUX transformer fixtures.

Makes:
  tiny_flux                 -> tiny_flux.{safetensors,json},
                               tiny_flux_weights_{diffusers,bfl}.safetensors
  tiny_flux_mod             -> tiny_flux_mod.{safetensors,json}  (official Premier
                               transformer_forward_verse)
  sampling                  -> sampling.{safetensors,json}  (BFL get_schedule / denoise)

The tiny model itself (build_tiny_flux) is also used by fx_train for the
flow-matching loss.
"""

from __future__ import annotations

import functools

import torch

from common import maxdiff, perturb_, premier_path, tensor_table

DIFFUSERS_CONFIG = dict(
    patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=16,
    num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
    axes_dims_rope=[4, 6, 6],
)
BFL_PARAMS = dict(
    in_channels=16, out_channels=16, vec_in_dim=32, context_in_dim=32, hidden_size=32, mlp_ratio=4.0,
    num_heads=2, depth=2, depth_single_blocks=2, axes_dim=[4, 6, 6], theta=10000, qkv_bias=True,
    guidance_embed=True,
)
HIDDEN = 32


@functools.cache
def build_tiny_flux():
    """The tiny_flux diffusers model and its inputs (seed 0, global RNG)."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    model = FluxTransformer2DModel(**DIFFUSERS_CONFIG).eval()
    perturb_(model)  # parameters() order, global RNG
    # The inputs are drawn right after the perturbation, from the same global RNG.
    hidden_states = torch.randn(1, 24, 16)
    encoder_hidden_states = torch.randn(1, 8, 32)
    pooled_projections = torch.randn(1, 32)
    img_ids = torch.zeros(4, 6, 3)
    img_ids[..., 1] = torch.arange(4)[:, None]
    img_ids[..., 2] = torch.arange(6)[None, :]
    inputs = dict(
        hidden_states=hidden_states,
        encoder_hidden_states=encoder_hidden_states,
        pooled_projections=pooled_projections,
        timestep=torch.tensor([0.7]),
        img_ids=img_ids.reshape(24, 3),
        txt_ids=torch.zeros(8, 3),
        guidance=torch.tensor([3.5]),
    )
    return model, inputs


def diffusers_to_bfl(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Diffusers FluxTransformer2DModel keys -> BFL flux1-dev.safetensors keys (see fixture README)."""
    out = {}

    def lin(dst, src):
        out[f"{dst}.weight"] = sd[f"{src}.weight"]
        out[f"{dst}.bias"] = sd[f"{src}.bias"]

    def cat(dst, srcs):
        out[f"{dst}.weight"] = torch.cat([sd[f"{s}.weight"] for s in srcs], 0)
        out[f"{dst}.bias"] = torch.cat([sd[f"{s}.bias"] for s in srcs], 0)

    lin("img_in", "x_embedder")
    lin("txt_in", "context_embedder")
    lin("final_layer.linear", "proj_out")
    for bfl, dif in [("time_in", "timestep_embedder"), ("guidance_in", "guidance_embedder"),
                     ("vector_in", "text_embedder")]:
        lin(f"{bfl}.in_layer", f"time_text_embed.{dif}.linear_1")
        lin(f"{bfl}.out_layer", f"time_text_embed.{dif}.linear_2")
    n_double = sum(1 for k in sd if k.startswith("transformer_blocks.") and k.endswith("norm1.linear.weight"))
    for i in range(n_double):
        d, b = f"transformer_blocks.{i}", f"double_blocks.{i}"
        lin(f"{b}.img_mod.lin", f"{d}.norm1.linear")
        lin(f"{b}.txt_mod.lin", f"{d}.norm1_context.linear")
        cat(f"{b}.img_attn.qkv", [f"{d}.attn.to_q", f"{d}.attn.to_k", f"{d}.attn.to_v"])
        cat(f"{b}.txt_attn.qkv", [f"{d}.attn.add_q_proj", f"{d}.attn.add_k_proj", f"{d}.attn.add_v_proj"])
        out[f"{b}.img_attn.norm.query_norm.scale"] = sd[f"{d}.attn.norm_q.weight"]
        out[f"{b}.img_attn.norm.key_norm.scale"] = sd[f"{d}.attn.norm_k.weight"]
        out[f"{b}.txt_attn.norm.query_norm.scale"] = sd[f"{d}.attn.norm_added_q.weight"]
        out[f"{b}.txt_attn.norm.key_norm.scale"] = sd[f"{d}.attn.norm_added_k.weight"]
        lin(f"{b}.img_attn.proj", f"{d}.attn.to_out.0")
        lin(f"{b}.txt_attn.proj", f"{d}.attn.to_add_out")
        lin(f"{b}.img_mlp.0", f"{d}.ff.net.0.proj")
        lin(f"{b}.img_mlp.2", f"{d}.ff.net.2")
        lin(f"{b}.txt_mlp.0", f"{d}.ff_context.net.0.proj")
        lin(f"{b}.txt_mlp.2", f"{d}.ff_context.net.2")
    n_single = sum(1 for k in sd if k.startswith("single_transformer_blocks.") and k.endswith("norm.linear.weight"))
    for i in range(n_single):
        s, b = f"single_transformer_blocks.{i}", f"single_blocks.{i}"
        lin(f"{b}.modulation.lin", f"{s}.norm.linear")
        cat(f"{b}.linear1", [f"{s}.attn.to_q", f"{s}.attn.to_k", f"{s}.attn.to_v", f"{s}.proj_mlp"])
        lin(f"{b}.linear2", f"{s}.proj_out")
        out[f"{b}.norm.query_norm.scale"] = sd[f"{s}.attn.norm_q.weight"]
        out[f"{b}.norm.key_norm.scale"] = sd[f"{s}.attn.norm_k.weight"]
    # diffusers norm_out rows are [scale; shift], BFL adaLN_modulation rows are [shift; scale].
    for suffix in ("weight", "bias"):
        scale, shift = sd[f"norm_out.linear.{suffix}"].chunk(2, 0)
        out[f"final_layer.adaLN_modulation.1.{suffix}"] = torch.cat([shift, scale], 0)
    return {k: v.clone() for k, v in out.items()}


@functools.cache
def build_bfl_flux():
    """BFL flux.model.Flux with the tiny_flux weights (BFL layout)."""
    from flux.model import Flux, FluxParams

    model, _ = build_tiny_flux()
    bfl_sd = diffusers_to_bfl(model.state_dict())
    bfl = Flux(FluxParams(**BFL_PARAMS)).eval()
    bfl.load_state_dict(bfl_sd, strict=True)
    return bfl, bfl_sd


def _round_trip_diff(diffusers_sd, bfl_sd) -> float:
    """diffusers' own BFL -> diffusers converter (inner_dim set to 32) must give our diffusers file back."""
    import diffusers.loaders.single_file_utils as sfu

    # The converter hard-codes inner_dim = 3072 as a local; run it on a copy of
    # its code object with that constant replaced by the tiny width.
    fn = sfu.convert_flux_transformer_checkpoint_to_diffusers
    consts = tuple(HIDDEN if c == 3072 else c for c in fn.__code__.co_consts)
    tiny = type(fn)(fn.__code__.replace(co_consts=consts), fn.__globals__, fn.__name__)
    conv = tiny({k: v.clone() for k, v in bfl_sd.items()})
    assert set(conv) == set(diffusers_sd), set(conv) ^ set(diffusers_sd)
    return max(maxdiff(conv[k], diffusers_sd[k]) for k in conv)


def _capture_diffusers(model):
    """Forward hooks that record the intermediates stored in tiny_flux.safetensors."""
    rec, handles = {}, []
    handles.append(model.time_text_embed.register_forward_hook(lambda m, i, o: rec.__setitem__("temb", o)))
    handles.append(model.pos_embed.register_forward_hook(lambda m, i, o: rec.__setitem__("rope", o)))
    for j, blk in enumerate(model.transformer_blocks):
        handles.append(blk.register_forward_hook(
            lambda m, i, o, j=j: rec.update({f"double{j}_txt": o[0], f"double{j}_img": o[1]})))
    for j, blk in enumerate(model.single_transformer_blocks):
        handles.append(blk.register_forward_hook(
            lambda m, i, o, j=j: rec.__setitem__(f"single{j}_out", torch.cat([o[0], o[1]], 1))))
    return rec, handles


@torch.no_grad()
def make_tiny_flux(w) -> dict:
    model, x = build_tiny_flux()
    rec, handles = _capture_diffusers(model)
    output = model(**x, return_dict=False)[0]
    for h in handles:
        h.remove()
    bfl, bfl_sd = build_bfl_flux()
    output_bfl = bfl(img=x["hidden_states"], img_ids=x["img_ids"][None], txt=x["encoder_hidden_states"],
                     txt_ids=x["txt_ids"][None], timesteps=x["timestep"], y=x["pooled_projections"],
                     guidance=x["guidance"])
    dsd = model.state_dict()
    verification = {
        "max|bfl - diffusers|": maxdiff(output_bfl, output),
        "diffusers converter BFL->diffusers round trip max diff": _round_trip_diff(dsd, bfl_sd),
        "max|output|": output.abs().max().item(),
    }
    tensors = dict(x, output=output, output_bfl=output_bfl, temb=rec["temb"],
                   rope_cos=rec["rope"][0], rope_sin=rec["rope"][1],
                   **{k: v for k, v in rec.items() if k.startswith(("double", "single"))})
    w.safetensors("tiny_flux_weights_diffusers.safetensors", dsd)
    w.safetensors("tiny_flux_weights_bfl.safetensors", bfl_sd)
    w.safetensors("tiny_flux.safetensors", tensors)
    w.json("tiny_flux.json", {
        "description": TINY_FLUX_DESCRIPTION,
        "diffusers_config": DIFFUSERS_CONFIG,
        "bfl_params": BFL_PARAMS,
        "weight_init": TINY_FLUX_INIT,
        "verification": verification,
        "tensors": tensor_table(tensors),
    })
    return verification


class _PerTokenTxtMod(torch.nn.Module):
    """Independent check: a BFL Modulation whose output is one set per text token."""

    def __init__(self, lin, delta):
        super().__init__()
        self.lin, self.delta = lin, delta

    def forward(self, vec):
        from flux.modules.layers import ModulationOut

        out = self.lin(torch.nn.functional.silu(vec[:, None, :] + self.delta)).chunk(6, dim=-1)
        return ModulationOut(*out[:3]), ModulationOut(*out[3:])


@torch.no_grad()
def make_tiny_flux_mod(w) -> dict:
    import yaml
    import scripts.pipeline.flux_adapter as fa

    model, x = build_tiny_flux()
    g = torch.Generator().manual_seed(12000)
    delta_shared = 0.5 * torch.randn((1, 8, 32), generator=g)
    delta_distinct = 0.5 * torch.randn((1, 8, 2, 32), generator=g)
    model_config = yaml.safe_load(premier_path("train/config/XVerse_config_demo.yaml").read_text())

    # Record the per-block outputs of the official block_forward and the text
    # modulation vectors (norm1_context.linear is called as a module).
    rec = {}
    official_block_forward = fa.block_forward

    def recording_block_forward(block, **kw):
        out = official_block_forward(block, **kw)
        j = list(model.transformer_blocks).index(block)
        rec[f"double{j}_txt"], rec[f"double{j}_img"] = out[0], out[1]
        return out

    handles = [blk.norm1_context.linear.register_forward_hook(
        lambda m, i, o, j=j: rec.__setitem__(f"txt_mod_block{j}", o))
        for j, blk in enumerate(model.transformer_blocks)]
    fa.block_forward = recording_block_forward
    try:
        output = fa.transformer_forward_verse(
            model, model_config=model_config, delta_emb=delta_shared, delta_emb_pblock=delta_distinct,
            use_text_mod=True, use_img_mod=False, return_dict=False, **x)[0]
        mod_rec = dict(rec)
        plain = fa.transformer_forward_verse(model, model_config=model_config, return_dict=False, **x)[0]
    finally:
        fa.block_forward = official_block_forward
        for h in handles:
            h.remove()
    reference = model(**x, return_dict=False)[0]

    bfl, _ = build_bfl_flux()
    saved = [blk.txt_mod for blk in bfl.double_blocks]
    try:
        for j, blk in enumerate(bfl.double_blocks):
            blk.txt_mod = _PerTokenTxtMod(saved[j].lin, delta_shared + delta_distinct[:, :, j])
        output_bfl_patched = bfl(img=x["hidden_states"], img_ids=x["img_ids"][None],
                                 txt=x["encoder_hidden_states"], txt_ids=x["txt_ids"][None],
                                 timesteps=x["timestep"], y=x["pooled_projections"], guidance=x["guidance"])
    finally:
        for blk, m in zip(bfl.double_blocks, saved):
            blk.txt_mod = m

    verification = {
        "max|independent BFL per-token modulation - official|": maxdiff(output_bfl_patched, output),
        "max|official(delta=None) - diffusers forward|": maxdiff(plain, reference),
        "max|modulated - unmodulated| (discrimination)": maxdiff(output, reference),
    }
    tensors = dict(delta_shared=delta_shared, delta_distinct=delta_distinct, output=output,
                   output_bfl_patched=output_bfl_patched,
                   **{k: mod_rec[k] for k in sorted(mod_rec)})
    w.safetensors("tiny_flux_mod.safetensors", tensors)
    w.json("tiny_flux_mod.json", dict(TINY_FLUX_MOD_TEXT, verification=verification,
                                      tensors=tensor_table(tensors)))
    return verification


SCHEDULES = {
    "schedule_4_256": (4, 256, True),
    "schedule_28_1024": (28, 1024, True),
    "schedule_50_4096": (50, 4096, True),
    "schedule_4_256_noshift": (4, 256, False),
}


def _diffusers_sigmas(n: int, seq_len: int) -> torch.Tensor:
    """diffusers FlowMatchEulerDiscreteScheduler with the FLUX.1-dev config."""
    import numpy as np
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    sched = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096)
    mu = calculate_shift(seq_len, 256, 4096, 0.5, 1.15)
    sched.set_timesteps(sigmas=np.linspace(1.0, 1 / n, n), mu=mu)
    return sched.sigmas


@torch.no_grad()
def make_sampling(w) -> dict:
    from flux.sampling import denoise, get_lin_function, get_schedule, prepare, unpack

    tensors, sched_json, verification = {}, {}, {}
    for name, (n, seq_len, shift) in SCHEDULES.items():
        ts = get_schedule(n, seq_len, shift=shift)
        tensors[name] = torch.tensor(ts, dtype=torch.float32)
        mu = get_lin_function()(seq_len) if shift else None
        sched_json[name] = {"num_steps": n, "image_seq_len": seq_len, "shift": shift,
                            "mu": None if mu is None else round(mu, 12), "timesteps": ts}
        if shift:
            verification[f"{name}: max|diffusers FlowMatchEuler sigmas - BFL|"] = maxdiff(
                _diffusers_sigmas(n, seq_len), tensors[name])

    bfl, _ = build_bfl_flux()
    model, x = build_tiny_flux()
    noise = torch.randn((1, 4, 8, 12), generator=torch.Generator().manual_seed(19000))
    # prepare() calls the T5 and CLIP embedders on the prompt; these stand-ins
    # return the tiny_flux text inputs instead.
    inp = prepare(t5=lambda p: x["encoder_hidden_states"], clip=lambda p: x["pooled_projections"],
                  img=noise, prompt="")
    timesteps = get_schedule(3, inp["img"].shape[1])
    rec = {"inputs": [], "preds": []}
    h1 = bfl.register_forward_pre_hook(lambda m, a, kw: rec["inputs"].append(kw["img"]), with_kwargs=True)
    h2 = bfl.register_forward_hook(lambda m, a, o: rec["preds"].append(o))
    try:
        final = denoise(bfl, **inp, timesteps=timesteps, guidance=3.5)
    finally:
        h1.remove()
        h2.remove()
    unpacked = unpack(final.float(), 64, 96)

    # Independent check: the same Euler loop with the diffusers model.
    lat = inp["img"]
    for t_curr, t_prev in zip(timesteps[:-1], timesteps[1:]):
        v = model(hidden_states=lat, encoder_hidden_states=x["encoder_hidden_states"],
                  pooled_projections=x["pooled_projections"], timestep=torch.full((1,), t_curr),
                  img_ids=inp["img_ids"][0], txt_ids=inp["txt_ids"][0], guidance=torch.full((1,), 3.5),
                  return_dict=False)[0]
        lat = lat + (t_prev - t_curr) * v
    verification["denoise: max|diffusers Euler loop - BFL denoise|"] = maxdiff(lat, final)
    verification["denoise: max|prepare img_ids - tiny_flux img_ids|"] = maxdiff(inp["img_ids"][0], x["img_ids"])
    verification["denoise: max|unpack(prepare(noise)) - noise|"] = maxdiff(unpack(inp["img"], 64, 96), noise)

    tensors.update(
        denoise_noise=noise, denoise_img_packed=inp["img"], denoise_img_ids=inp["img_ids"][0],
        denoise_txt_ids=inp["txt_ids"][0], denoise_timesteps=torch.tensor(timesteps, dtype=torch.float32),
        denoise_final_packed=final, denoise_final_unpacked=unpacked,
        **{f"denoise_pred_step{k}": p for k, p in enumerate(rec["preds"])},
        **{f"denoise_latent_step{k}": lat_k for k, lat_k in enumerate(rec["inputs"][1:] + [final], start=1)},
    )
    w.safetensors("sampling.safetensors", tensors)
    w.json("sampling.json", {
        "description": SAMPLING_DESCRIPTION,
        "schedules": sched_json,
        "denoise": SAMPLING_DENOISE,
        "verification": verification,
        "tensors": tensor_table(tensors),
    })
    return verification


# ---- prose of the json files (project text, as in tests/fixtures) ----

TINY_FLUX_DESCRIPTION = (
    "Tiny FLUX.1 transformer. output = diffusers FluxTransformer2DModel.forward with "
    "tiny_flux_weights_diffusers.safetensors; output_bfl = BFL flux.model.Flux.forward with "
    "tiny_flux_weights_bfl.safetensors (same weights, other layout).")
TINY_FLUX_INIT = (
    "torch.manual_seed(0); diffusers default init; then p += 0.05*randn_like(p) for every parameter in "
    "parameters() order (global RNG); inputs hidden_states, encoder_hidden_states, pooled_projections = "
    "torch.randn in that order right after (global RNG)")
TINY_FLUX_MOD_TEXT = {
    "description": (
        "Premier text-token modulation on tiny_flux (same weights and inputs, read them from "
        "tiny_flux.safetensors). Expected output = official scripts.pipeline.flux_adapter."
        "transformer_forward_verse(transformer, model_config=<train/config/XVerse_config_demo.yaml>, "
        "delta_emb=delta_shared, delta_emb_pblock=delta_distinct, use_text_mod=True, use_img_mod=False, "
        "hidden_states, encoder_hidden_states, pooled_projections, timestep, img_ids, txt_ids, guidance, "
        "return_dict=False)[0]."),
    "deltas": (
        "delta_shared (1,8,32), delta_distinct (1,8,2,32) = 0.5*N(0,1) from torch.Generator().manual_seed(12000), "
        "in that order; delta_distinct[:, :, j] belongs to double block j"),
    "semantics": (
        "double block j, TEXT stream: emb = norm1_context.linear(SiLU(temb[:,None,:] + delta_shared + "
        "delta_distinct[:,:,j])) -> (1,8,192) per token, chunk(6) = shift_msa, scale_msa, gate_msa, shift_mlp, "
        "scale_mlp, gate_mlp. Image stream, single blocks and norm_out use the plain temb."),
    "txt_mod_blockJ": "(1,8,192) per-token text modulation vector of double block J (BFL txt_mod.lin output)",
    "doubleJ_txt/doubleJ_img": "outputs of double block J in the modulated forward",
    "output_bfl_patched": "BFL flux.model.Flux whose txt_mod returns per-token modulations (independent check)",
}
SAMPLING_DESCRIPTION = (
    "BFL flux sampling.py. (a) get_schedule(num_steps, image_seq_len, base_shift=0.5, max_shift=1.15, shift) -> "
    "num_steps+1 timesteps from 1 to 0: ts = linspace(1,0,N+1) (float32); if shift: mu = 0.5 + (L-256)*(0.65/3840), "
    "ts = exp(mu)/(exp(mu) + (1/ts - 1)) (ts=0 -> 0). Stored as float32 (the list values are float32 numbers). "
    "(b) denoise(): 3 Euler steps of the tiny_flux BFL model (tiny_flux_weights_bfl.safetensors) with guidance 3.5 "
    "from a fixed noise.")
SAMPLING_DENOISE = (
    "denoise_noise (1,4,8,12) = N(0,1) from torch.Generator().manual_seed(19000) (latent channels 4, so that "
    "4 x 2x2 = 16 = tiny_flux in_channels; the real model has 16 x 2x2 = 64); prepare(): denoise_img_packed = "
    "rearrange(noise, 'b c (h ph) (w pw) -> b (h w) (c ph pw)', ph=pw=2) (1,24,16), denoise_img_ids (24,3) = "
    "[0,row,col], denoise_txt_ids (8,3) zeros; txt = tiny_flux encoder_hidden_states, vec = tiny_flux "
    "pooled_projections. denoise_timesteps = get_schedule(3, 24) (shift=True). For k = 0,1,2: v_k = "
    "model(img=latent_k, timesteps=full(t_k), guidance=full(3.5)) = denoise_pred_step{k}; latent_{k+1} = "
    "latent_k + (t_{k+1} - t_k) * v_k = denoise_latent_step{k+1} (latent_0 = denoise_img_packed). "
    "denoise_final_packed = latent_3; denoise_final_unpacked = unpack(final, height=64, width=96) -> (1,4,8,12). "
    "t is in [0,1] (x1000 inside the model). (t_{k+1} - t_k) is a Python float (float64) difference of two "
    "float32 values.")
