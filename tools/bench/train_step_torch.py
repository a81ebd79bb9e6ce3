"""PyTorch/diffusers reference for examples/train_step.rs --size medium (the step of
benches/train_step.rs): one Premier stage-1 training step, timed, f32, CPU, random weights.

What a step does (as `Stage1Trainer::step` with `Stage1Config::default()`):
  * the frozen medium FLUX (diffusers FluxTransformer2DModel, requires_grad False; the shared
    benchmark configuration of benches/common/mod.rs: width 512, 8 heads, 2 double + 4 single
    blocks, T5 width 256, pooled 128, guidance embedding);
  * trainable: Premier's block-shared (`net`) and block-distinct (`net2`) cross-attention
    resamplers, scaled as `common::scaled_adapter()` (text 256, user 30 x 128, width 512, 8 heads,
    3 layers, out 512 / 2 x 512), and a 16-user table (30 tokens x 128);
  * batch 2 at 512 px: 1024 packed image tokens of 64 channels, 64 text tokens; users 0 and 1;
  * noise and t = sigmoid(N(1, 1)) drawn per step, x_t = (1 - t) x0 + t noise, guidance 1.0;
  * Delta_shared + Delta_distinct[:, :, j] added to the modulation vector y of every *text* token in
    double block j (SPEC 2.2 / 3.3): the text stream's six shift/scale/gate values become per token,
    txt_mod.lin(SiLU(y + Delta)); image tokens, single blocks and the final layer keep y;
  * loss = flow-matching MSE + 0.1 (hinge dispersion of Delta_shared) + 0.1 (hinge dispersion of
    Delta_distinct), the dispersion on the adapters' output for the null prompt, margin 0.25 RMS(y);
  * backward, clip_grad_norm_(0.5), Prodigy (prodigyopt 1.1.2: lr 1, bias correction, safeguard
    warmup, decoupled weight decay 1e-4; two groups, adapters and user table, sharing one d).

    /work/venv-torch/bin/python tools/bench/train_step_torch.py --threads 2
    /work/venv-torch/bin/python tools/bench/train_step_torch.py --size tiny --threads 1 --steps 1

Prints one line per step (one untimed warm-up, then --steps timed) and the process's peak resident
memory (ru_maxrss), as the Rust example prints VmHWM; it includes torch's own libraries (about
0.7 GiB with the CUDA wheel of torch 2.15: what --size tiny peaks at). Needs `torch`, `diffusers==0.42.1` and
`prodigyopt==1.1.2` in a virtual environment outside the repository.

Where this is not exactly the Rust step (the first three change values, not the work done):
  * the random weights, inputs and per-step noise come from torch's RNG, not burn's and the Rust
    host StdRng (`step_noise`), and FLUX's random init follows torch's defaults, so the losses
    printed differ from the Rust example's; the adapters and table use the same distributions
    (N(0, 0.01^2) weights, zero biases; table U(-0.1, 0.1));
  * the official AdaLayerNorm's linear is applied to its all-zero time embedding (a [1, 64] matmul),
    where Rust reads its bias directly; its weight gets a zero gradient either way;
  * diffusers' FLUX is BFL's FLUX with single blocks' linear1 split into to_q/k/v and proj_mlp, as
    premier stores it; the attention is torch's SDPA (diffusers' default), premier's is its fused
    FluxOps kernel: the same maths, different kernels;
  * threads: torch runs its kernels on --threads intra-op threads (torch.set_num_threads). The Rust
    example's --workers (default 1) splits the batch's rows over threads on top of whatever the Flex
    backend parallelises itself (burn-flex depends on rayon and gemm), so check and pin both sides'
    thread counts before reading a ratio;
  * not mirrored: the Rust example's --workers row split, --bf16-backbone and
    --gradient-checkpointing, and its `dev` size (FLUX.1-dev on CUDA);
  * prodigyopt prints "Using decoupled weight decay" when it is built; Rust prints nothing there.
"""
import argparse
import math
import resource
import sys
import time
import types
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F
import diffusers
from diffusers import FluxTransformer2DModel
from prodigyopt import Prodigy

# Stage1Config::default() (crates/premier-train/src/stage1.rs).
LOGIT_NORMAL = (1.0, 1.0)  # t = sigmoid(N(mean, std))
GUIDANCE = 1.0
DISPERSION_MARGIN = 0.25  # hinge: pairs closer than margin * RMS(y) per feature are pushed apart
LAMBDA_SHARED = 0.1
LAMBDA_DISTINCT = 0.1
CLIP_NORM = 0.5
SEED = 0
# ProdigyConfig::premier() (crates/premier-train/src/prodigy.rs); everything else default.
PRODIGY = dict(lr=1.0, use_bias_correction=True, safeguard_warmup=True, weight_decay=1e-4)

SIZES = {
    # benches/common/mod.rs medium_flux(), scaled_adapter(); examples/train_step.rs Size::Medium.
    "medium": dict(
        flux=dict(
            patch_size=1, in_channels=64, num_layers=2, num_single_layers=4, attention_head_dim=64,
            num_attention_heads=8, joint_attention_dim=256, pooled_projection_dim=128,
            guidance_embeds=True, axes_dims_rope=(8, 28, 28),
        ),
        adapter=dict(text_dim=256, user_dim=128, width=512, heads=8, layers=3, hidden=512, blocks=2),
        users=dict(users=16, tokens=30, dim=128),
        txt_tokens=64,
        resolution=512,
    ),
    # A few-second smoke test of the same code path.
    "tiny": dict(
        flux=dict(
            patch_size=1, in_channels=16, num_layers=2, num_single_layers=1, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=16,
            guidance_embeds=True, axes_dims_rope=(4, 6, 6),
        ),
        adapter=dict(text_dim=32, user_dim=16, width=32, heads=2, layers=2, hidden=32, blocks=2),
        users=dict(users=4, tokens=4, dim=16),
        txt_tokens=8,
        resolution=64,
    ),
}


# --- Premier's adapters (crates/premier-adapter; SPEC 3.2), after the official mod_adapters.py ---


class AdaLayerNorm(nn.Module):
    """LN(x) (1 + scale) + shift, (shift, scale) = linear(SiLU(temb)); the official adapter always
    passes temb = 0, so only the linear's bias matters."""

    TIME_DIM = 64

    def __init__(self, width):
        super().__init__()
        self.linear = nn.Linear(self.TIME_DIM, 2 * width)
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)

    def forward(self, x):
        temb = x.new_zeros(1, 1, self.TIME_DIM)
        shift, scale = self.linear(F.silu(temb)).chunk(2, dim=-1)
        return self.norm(x) * (1 + scale) + shift


class SquaredReLU(nn.Module):
    def forward(self, x):
        return torch.square(torch.relu(x))


class PerceiverBlock(nn.Module):
    """Text queries attend to the (fixed) user tokens, then a SquaredReLU MLP; AdaLN before each."""

    def __init__(self, width, heads):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.mlp = nn.Sequential(OrderedDict(
            c_fc=nn.Linear(width, 4 * width), sq_relu=SquaredReLU(), c_proj=nn.Linear(4 * width, width),
        ))
        self.ln_1 = AdaLayerNorm(width)
        self.ln_2 = AdaLayerNorm(width)
        self.ln_ff = AdaLayerNorm(width)

    def forward(self, text, user):
        # Q = text, K = V = user (premier's PerceiverBlock::forward, SPEC 3.2).
        kv = self.ln_2(user)
        text = text + self.attn(self.ln_1(text), kv, kv, need_weights=False)[0]
        return text + self.mlp(self.ln_ff(text))


class TextImageResampler(nn.Module):
    """(prompt tokens [B, S, text_dim], user tokens [B, U, user_dim]) -> [B, S, out]."""

    def __init__(self, text_dim, user_dim, width, heads, layers, out):
        super().__init__()
        self.text_proj_in = nn.Linear(text_dim, width)
        self.image_proj_in = nn.Linear(user_dim, width)
        self.perceiver_blocks = nn.ModuleList(PerceiverBlock(width, heads) for _ in range(layers))
        self.proj_out = nn.Sequential(nn.Linear(width, out), nn.LayerNorm(out))  # LayerNorm eps 1e-5

    def forward(self, text, user):
        user = self.image_proj_in(user)  # computed once, not updated by the blocks
        text = self.text_proj_in(text)
        for block in self.perceiver_blocks:
            text = block(text, user)
        return self.proj_out(text)


class PreferenceAdapter(nn.Module):
    """Block-shared `net` (Delta_shared [B, S, hidden]) and block-distinct `net2`
    (Delta_distinct [B, S, blocks, hidden], one LayerNorm over all blocks' outputs)."""

    def __init__(self, text_dim, user_dim, width, heads, layers, hidden, blocks):
        super().__init__()
        self.hidden, self.blocks = hidden, blocks
        self.net = TextImageResampler(text_dim, user_dim, width, heads, layers, hidden)
        self.net2 = TextImageResampler(text_dim, user_dim, width, heads, layers, hidden * blocks)
        # init_adapter_small_std: biases 0, every other parameter (LayerNorm weights too) N(0, 0.01^2).
        for name, p in self.named_parameters():
            if "bias" in name.rsplit(".", 1)[-1]:
                nn.init.zeros_(p)
            else:
                nn.init.normal_(p, std=0.01)

    def forward(self, text, user):
        b, s, _ = text.shape
        shared = self.net(text, user)
        distinct = self.net2(text, user).view(b, s, self.blocks, self.hidden)
        return shared, distinct


class UserTable(nn.Module):
    """`users` embeddings of `tokens` x `dim`, stored flat as the official nn.Embedding."""

    def __init__(self, users, tokens, dim):
        super().__init__()
        self.tokens, self.dim = tokens, dim
        self.weight = nn.Parameter(torch.empty(users, tokens * dim).uniform_(-0.1, 0.1))

    def forward(self, ids):
        # Indexing gives a dense gradient (zero on unused rows), as nn.Embedding and premier's select.
        return self.weight[ids].view(len(ids), self.tokens, self.dim)


# --- The modulation hook on diffusers' double blocks (SPEC 2.2, 3.3) ---


def premier_double_block_forward(self, hidden_states, encoder_hidden_states, temb,
                                 image_rotary_emb=None, joint_attention_kwargs=None):
    """diffusers' FluxTransformerBlock.forward with the text stream modulated per token:
    norm1_context.linear(SiLU(temb + Delta_j)) for every text token, chunked into the six
    (shift, scale, gate) x (attention, MLP) values, each [B, S, D]. `self.premier_delta`
    ([B, S, D] or None) is set by `premier_deltas` around the forward. The image stream is
    diffusers' code unchanged."""
    delta = self.premier_delta
    norm_hidden_states, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.norm1(hidden_states, emb=temb)
    if delta is None:
        txt_emb = temb[:, None, :]  # plain FLUX: one modulation broadcast over the text tokens
    else:
        txt_emb = temb[:, None, :] + delta
    ctx = self.norm1_context
    c_shift_msa, c_scale_msa, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp = (
        ctx.linear(ctx.silu(txt_emb)).chunk(6, dim=-1)
    )
    norm_encoder_hidden_states = ctx.norm(encoder_hidden_states) * (1 + c_scale_msa) + c_shift_msa

    joint_attention_kwargs = joint_attention_kwargs or {}
    attention_outputs = self.attn(
        hidden_states=norm_hidden_states,
        encoder_hidden_states=norm_encoder_hidden_states,
        image_rotary_emb=image_rotary_emb,
        **joint_attention_kwargs,
    )
    if len(attention_outputs) == 2:
        attn_output, context_attn_output = attention_outputs
    else:
        attn_output, context_attn_output, ip_attn_output = attention_outputs

    # Image stream: as diffusers.
    hidden_states = hidden_states + gate_msa.unsqueeze(1) * attn_output
    norm_hidden_states = self.norm2(hidden_states) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
    hidden_states = hidden_states + gate_mlp.unsqueeze(1) * self.ff(norm_hidden_states)
    if len(attention_outputs) == 3:
        hidden_states = hidden_states + ip_attn_output

    # Text stream: per-token gates, shift and scale.
    encoder_hidden_states = encoder_hidden_states + c_gate_msa * context_attn_output
    norm_encoder_hidden_states = self.norm2_context(encoder_hidden_states) * (1 + c_scale_mlp) + c_shift_mlp
    encoder_hidden_states = encoder_hidden_states + c_gate_mlp * self.ff_context(norm_encoder_hidden_states)
    return encoder_hidden_states, hidden_states


def install_hook(flux):
    for block in flux.transformer_blocks:
        block.premier_delta = None
        block.forward = types.MethodType(premier_double_block_forward, block)


class premier_deltas:
    """Within the block, double block j adds shared + distinct[:, :, j] to its text tokens' y."""

    def __init__(self, flux, shared, distinct):
        self.blocks, self.shared, self.distinct = flux.transformer_blocks, shared, distinct

    def __enter__(self):
        for j, block in enumerate(self.blocks):
            block.premier_delta = self.shared + self.distinct[:, :, j]

    def __exit__(self, *exc):
        for block in self.blocks:
            block.premier_delta = None


# --- Losses (crates/premier-losses) ---


def hinge_dispersion(z, tau):
    """mean over pairs i != j of relu(1 - |z_i - z_j|^2 / (features tau)); z: [batch, features]."""
    batch, features = z.shape
    if batch < 2:
        return z.new_zeros(())
    norms = z.pow(2).sum(1, keepdim=True)
    squared = (norms + norms.T - 2 * (z @ z.T)).clamp_min(0)
    shortfall = (1 - squared / (features * tau)).clamp_min(0)
    eye = torch.eye(batch, dtype=torch.bool)
    return shortfall.masked_fill(eye, 0).sum() / (batch * (batch - 1))


def step_noise(step, shape):
    """Noise [batch, tokens, channels] and t [batch] of step `step`, from an RNG seeded by (seed,
    step) as premier's `step_noise` (torch's generator, so not the same numbers)."""
    seed = SEED ^ (((step + 1) * 0x9E37_79B9_7F4A_7C15) & 0xFFFF_FFFF_FFFF_FFFF)
    gen = torch.Generator().manual_seed(seed)
    mean, std = LOGIT_NORMAL
    t = torch.sigmoid(torch.randn(shape[0], generator=gen) * std + mean)
    noise = torch.randn(shape, generator=gen)
    return noise, t


# --- The stage-1 step (Stage1Trainer::step, stage1_loss) ---


class Stage1:
    def __init__(self, flux, adapter, table):
        self.flux, self.adapter, self.table = flux, adapter, table
        self.params = list(adapter.parameters()) + list(table.parameters())
        self.optimizer = Prodigy(
            [{"params": list(adapter.parameters())}, {"params": list(table.parameters())}], **PRODIGY
        )
        self.step_count = 0

    def loss(self, batch, noise, t):
        flux, adapter = self.flux, self.adapter
        n = len(batch["users"])
        user = self.table(batch["users"])
        shared, distinct = adapter(batch["text"], user)
        guidance = torch.full((n,), GUIDANCE)
        with torch.no_grad():  # RMS(y)^2 of FLUX's modulation vector, detached (the hinge's margin)
            y = flux.time_text_embed(t * 1000, guidance * 1000, batch["pooled"])
            y_ms = y.pow(2).mean().item()

        x_t = (1 - t[:, None, None]) * batch["x0"] + t[:, None, None] * noise
        with premier_deltas(flux, shared, distinct):
            pred = flux(
                hidden_states=x_t, encoder_hidden_states=batch["text"],
                pooled_projections=batch["pooled"], timestep=t, guidance=guidance,
                img_ids=batch["img_ids"], txt_ids=batch["txt_ids"], return_dict=False,
            )[0]
        flow = (pred - (noise - batch["x0"])).pow(2).mean()
        delta_ms = (shared[:, :, None] + distinct).detach().pow(2).mean().item()

        # Dispersion of the users' Delta for the null prompt (DispersionPrompt::Null, hinge).
        tau = (DISPERSION_MARGIN * max(math.sqrt(y_ms), sys.float_info.min)) ** 2
        null_shared, null_distinct = adapter(batch["null_text"].expand(n, -1, -1), user)
        disp_s = hinge_dispersion(null_shared.reshape(n, -1), tau)
        disp_d = hinge_dispersion(null_distinct.reshape(n, -1), tau)
        total = flow + LAMBDA_SHARED * disp_s + LAMBDA_DISTINCT * disp_d
        return total, dict(flow=flow.item(), dispersion_shared=disp_s.item(),
                           dispersion_distinct=disp_d.item(),
                           delta_to_y=math.sqrt(delta_ms) / max(math.sqrt(y_ms), sys.float_info.min))

    def step(self, batch):
        noise, t = step_noise(self.step_count, batch["x0"].shape)
        total, report = self.loss(batch, noise, t)
        loss = total.item()
        if not math.isfinite(loss):
            raise RuntimeError(f"step {self.step_count + 1}: the loss is {loss}")
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, CLIP_NORM).item()
        if not math.isfinite(grad_norm):
            raise RuntimeError(f"step {self.step_count + 1}: the gradient norm is {grad_norm}")
        self.optimizer.step()
        self.step_count += 1
        return dict(report, loss=loss, grad_norm=grad_norm, d=self.optimizer.param_groups[0]["d"])


def count(module):
    return sum(p.numel() for p in module.parameters())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", choices=sorted(SIZES), default="medium")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="timed steps, after one untimed warm-up")
    parser.add_argument("--resolution", type=int, default=None,
                        help="image side in pixels (latent tokens: (side / 16)^2); 512 for medium")
    args = parser.parse_args()
    size = SIZES[args.size]
    resolution = args.resolution or size["resolution"]
    print(args)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    started = time.perf_counter()
    flux = FluxTransformer2DModel(**size["flux"]).requires_grad_(False).eval()
    install_hook(flux)
    adapter = PreferenceAdapter(**size["adapter"])
    table = UserTable(**size["users"])
    print(f"built in {time.perf_counter() - started:.1f}s")
    if args.batch > size["users"]["users"]:
        parser.error(f"--batch {args.batch} exceeds the table's {size['users']['users']} users")

    n, side = args.batch, resolution // 16
    c = size["flux"]
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    batch = dict(
        x0=torch.randn(n, side * side, c["in_channels"]),
        text=torch.randn(n, size["txt_tokens"], c["joint_attention_dim"]),
        pooled=torch.randn(n, c["pooled_projection_dim"]),
        users=list(range(n)),
        null_text=torch.randn(1, size["txt_tokens"], c["joint_attention_dim"]),
        img_ids=torch.stack([torch.zeros_like(rows), rows, cols], -1).reshape(-1, 3).float(),
        txt_ids=torch.zeros(size["txt_tokens"], 3),
    )
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, {args.threads} threads: "
          f"FLUX {count(flux):,} parameters (frozen), adapters {count(adapter):,} + table "
          f"{count(table):,} trained; batch {n}, {side * side} image + {size['txt_tokens']} text tokens")

    trainer = Stage1(flux, adapter, table)
    for step in range(args.steps + 1):
        tick = time.perf_counter()
        report = trainer.step(batch)
        took = time.perf_counter() - tick
        label = "warm-up" if step == 0 else "step"
        print(f"{label} {step}: {took:.3f} s (loss {report['loss']:.4f})", flush=True)
    # ru_maxrss is in KiB on Linux: the peak resident set, as VmHWM.
    print(f"peak host memory: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
