"""Training-side fixtures (official Premier code and prodigyopt).

Makes:
  adapter_small -> adapter_small.{safetensors,json}, adapter_small_weights.safetensors
                   (official scripts.pipeline.mod_adapters.CLIPModAdapter_2)
  losses        -> losses.{safetensors,json} (official disp_loss / stable_disp_loss and the
                   flow-matching statements of scripts/train_flux/train_premier.py)
  prodigy       -> prodigy.{safetensors,json} (prodigyopt.Prodigy with Premier's settings)
"""

from __future__ import annotations

import contextlib
import io
import math
import types

import torch
import torch.nn.functional as F

from common import maxdiff, perturb_, premier_path, tensor_table

ADAPTER_ARGS = dict(out_dim=32, width=32, pblock_width=32, layers=3, pblock_layers=3, heads=8,
                    input_text_dim=32, input_image_dim=8, pblock_single_blocks=-17)


# ---------------------------------------------------------------- adapter_small

def _independent_adapter(sd: dict, text: torch.Tensor, user: torch.Tensor, heads: int = 8):
    """Explicit maths of the adapter (README section 3), for the verification numbers."""

    def linear(x, pre):
        return x @ sd[f"{pre}.weight"].T + sd[f"{pre}.bias"]

    def ada_ln(x, pre):  # time embedding is zero -> only the bias of ln_*.linear matters
        shift, scale = sd[f"{pre}.linear.bias"].chunk(2)
        return F.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + scale) + shift

    def mha(q_in, kv_in, pre):
        w, b = sd[f"{pre}.in_proj_weight"], sd[f"{pre}.in_proj_bias"]
        d = q_in.shape[-1]
        q = q_in @ w[:d].T + b[:d]
        k = kv_in @ w[d:2 * d].T + b[d:2 * d]
        v = kv_in @ w[2 * d:].T + b[2 * d:]
        split = lambda t: t.view(t.shape[0], t.shape[1], heads, d // heads).transpose(1, 2)  # noqa: E731
        att = torch.softmax(split(q) @ split(k).transpose(-1, -2) / math.sqrt(d // heads), -1) @ split(v)
        return linear(att.transpose(1, 2).reshape(q_in.shape), f"{pre}.out_proj")

    outs = []
    for net, n_out in (("net", 32), ("net2", 64)):
        x = linear(text, f"{net}.text_proj_in")
        u = linear(user, f"{net}.image_proj_in")
        for k in range(3):
            blk = f"{net}.perceiver_blocks.{k}"
            x = x + mha(ada_ln(x, f"{blk}.ln_1"), ada_ln(u, f"{blk}.ln_2"), f"{blk}.attn")
            h = torch.relu(linear(ada_ln(x, f"{blk}.ln_ff"), f"{blk}.mlp.c_fc")) ** 2
            x = x + linear(h, f"{blk}.mlp.c_proj")
        x = F.layer_norm(linear(x, f"{net}.proj_out.0"), (n_out,), sd[f"{net}.proj_out.1.weight"],
                         sd[f"{net}.proj_out.1.bias"], eps=1e-5)
        outs.append(x)
    return outs[0], outs[1].view(text.shape[0], text.shape[1], -1, 32)


@torch.no_grad()
def make_adapter_small(w) -> dict:
    from scripts.pipeline.mod_adapters import CLIPModAdapter_2

    torch.manual_seed(13000)
    with contextlib.redirect_stdout(io.StringIO()):  # the blocks print "double_kv False"
        adapter = CLIPModAdapter_2(**ADAPTER_ARGS).eval()
    perturb_(adapter, torch.Generator().manual_seed(13001), named=True)
    # Frozen parameters: with requires_grad=True, nn.MultiheadAttention's attention
    # takes another kernel path whose last bits differ from the stored fixture.
    adapter.requires_grad_(False)
    g = torch.Generator().manual_seed(13002)
    text = torch.randn((2, 8, 32), generator=g)
    user = torch.randn((2, 4, 8), generator=g)
    t = torch.zeros(2)

    rec, handles = {}, []
    for net in ("net", "net2"):
        m = getattr(adapter, net)
        for sub in ("text_proj_in", "image_proj_in", "proj_out"):
            handles.append(getattr(m, sub).register_forward_hook(
                lambda mod, i, o, key=f"{net}_{sub}": rec.__setitem__(key, o)))
        for k, blk in enumerate(m.perceiver_blocks):
            handles.append(blk.register_forward_hook(
                lambda mod, i, o, key=f"{net}_block{k}_out": rec.__setitem__(key, o)))
    delta_shared, delta_distinct = adapter(t, text, user)
    for h in handles:
        h.remove()

    sd = adapter.state_dict()
    ind_shared, ind_distinct = _independent_adapter(sd, text, user)
    verification = {
        "max|independent - official| delta_shared": maxdiff(ind_shared, delta_shared),
        "max|independent - official| delta_distinct": maxdiff(ind_distinct, delta_distinct),
    }
    tensors = dict(text=text, user=user, t=t, delta_shared=delta_shared, delta_distinct=delta_distinct, **rec)
    w.safetensors("adapter_small_weights.safetensors", sd)
    w.safetensors("adapter_small.safetensors", tensors)
    w.json("adapter_small.json", dict(ADAPTER_TEXT, verification=verification, tensors=tensor_table(tensors)))
    return verification


# ---------------------------------------------------------------- losses

class _TorchNoBf16(types.ModuleType):
    """`torch` as seen by disp_loss_fp32: torch.bfloat16 is float32, so the final cast is a no-op."""

    def __init__(self):
        super().__init__("torch")
        self.bfloat16 = torch.float32

    def __getattr__(self, name):
        return getattr(torch, name)


def _official_statements(path, starts: list[str]) -> tuple[list[int], list[str]]:
    """Line numbers and dedented text of the official statements that begin with `starts`."""
    lines = path.read_text().splitlines()
    found = []
    for start in starts:
        hits = [i for i, line in enumerate(lines) if line.strip().startswith(start)]
        assert len(hits) >= 1, start
        found.append((hits[0] + 1, lines[hits[0]].strip()))
    return [n for n, _ in found], [s for _, s in found]


def make_losses(w) -> dict:
    import scripts.utils.utils as pu

    from fx_flux import build_tiny_flux

    z = 0.1 * torch.randn((3, 5, 4), generator=torch.Generator().manual_seed(14000))
    disp_loss_fp32 = types.FunctionType(pu.disp_loss.__code__, dict(pu.disp_loss.__globals__, torch=_TorchNoBf16()),
                                    "disp_loss", pu.disp_loss.__defaults__)

    def run(fn):
        zz = z.clone().requires_grad_(True)
        loss = fn(zz)
        loss.backward()
        return loss, zz.grad

    disp, disp_grad = run(pu.disp_loss)
    disp32, disp32_grad = run(disp_loss_fp32)
    stable, stable_grad = run(pu.stable_disp_loss)

    # float64 formulas (README section 4) and float64 autograd, for the verification numbers
    pairs = [(i, j) for i in range(3) for j in range(3) if i != j]

    def sq_dists64(zz):  # off-diagonal pairs only (sqrt has no gradient at 0)
        f = zz.reshape(3, -1)
        return torch.stack([((f[i] - f[j]) ** 2).sum() for i, j in pairs])

    def run64(fn):
        zz = z.double().requires_grad_(True)
        loss = fn(zz)
        loss.backward()
        return loss, zz.grad

    d64, d64_grad = run64(lambda zz: torch.log(torch.exp(-sq_dists64(zz)).sum() / 6 + 1e-10))
    s64, s64_grad = run64(lambda zz: (torch.logsumexp(-sq_dists64(zz).sqrt().view(3, 2), 1) - math.log(2)).mean())

    # Flow matching: execute the official statements of training_step.
    model, x = build_tiny_flux()
    g = torch.Generator().manual_seed(14100)
    x_0 = torch.randn((2, 24, 16), generator=g)
    x_1 = torch.randn((2, 24, 16), generator=g)
    t = torch.tensor([0.25, 0.9])
    line_nos, stmts = _official_statements(
        premier_path("scripts/train_flux/train_premier.py"),
        ["t_ = t.unsqueeze(1)", "x_t = ((1 - t_) * x_0 + t_ * x_1)", "diff_loss = torch.nn.functional.mse_loss("])
    ns = dict(torch=torch, t=t, x_0=x_0, x_1=x_1, self=types.SimpleNamespace(dtype=torch.float32))
    exec(stmts[0], ns)
    exec(stmts[1], ns)
    x_t = ns["x_t"]
    guidance = torch.ones_like(t)
    with torch.no_grad():
        pred = model(hidden_states=x_t, encoder_hidden_states=x["encoder_hidden_states"].repeat(2, 1, 1),
                     pooled_projections=x["pooled_projections"].repeat(2, 1), timestep=t,
                     img_ids=x["img_ids"], txt_ids=x["txt_ids"], guidance=guidance, return_dict=False)[0]
    ns["pred"] = pred.clone().requires_grad_(True)
    exec(stmts[2], ns)
    flow_loss = ns["diff_loss"]
    flow_loss.backward()
    grad_pred = ns["pred"].grad
    target = x_1 - x_0

    verification = {
        "disp_loss dtype": str(disp.dtype),
        "|disp_loss - float64 formula|": abs(disp.double().item() - d64.item()),
        "max|disp_loss grad - float64 autograd|": maxdiff(disp_grad, d64_grad),
        "disp_loss_fp32 dtype": str(disp32.dtype),
        "|disp_loss_fp32 - float64 formula|": abs(disp32.double().item() - d64.item()),
        "max|disp_loss_fp32 grad - float64 autograd|": maxdiff(disp32_grad, d64_grad),
        "stable_disp_loss dtype": str(stable.dtype),
        "|stable_disp_loss - float64 formula|": abs(stable.double().item() - s64.item()),
        "max|stable_disp_loss grad - float64 autograd|": maxdiff(stable_grad, s64_grad),
        "flow |x_t - ((1-t)x0 + t*noise)|": maxdiff(x_t, (1 - t[:, None, None]) * x_0 + t[:, None, None] * x_1),
        "flow |loss - float64 mean|": abs(flow_loss.double().item()
                                          - ((pred.double() - target.double()) ** 2).mean().item()),
        "flow max|grad - 2(pred-target)/N|": maxdiff(grad_pred, 2 * (pred - target) / pred.numel()),
        "official lines used (train_premier.py line numbers)": line_nos,
    }
    tensors = dict(
        z=z, disp_loss=disp.detach().float(), disp_loss_grad=disp_grad, disp_loss_fp32=disp32.detach(),
        disp_loss_fp32_grad=disp32_grad, stable_disp_loss=stable.detach(), stable_disp_loss_grad=stable_grad,
        flow_x0=x_0, flow_noise=x_1, flow_t=t, flow_x_t=x_t, flow_target=target, flow_guidance=guidance,
        flow_pred=pred, flow_loss=flow_loss.detach(), flow_grad_pred=grad_pred,
    )
    w.safetensors("losses.safetensors", tensors)
    w.json("losses.json", dict(LOSSES_TEXT, verification=verification, tensors=tensor_table(tensors)))
    return verification


# ---------------------------------------------------------------- prodigy

SNAPSHOTS = (1, 5, 20, 40, 60)
D_KEYS = ("d", "d_max", "d_hat", "d_numerator", "d_denom")


def _prodigy_problem():
    g = torch.Generator().manual_seed(15000)
    X = torch.randn((16, 6), generator=g)
    teacher = torch.randn((6, 3), generator=g)
    noise = torch.randn((16, 3), generator=g)
    W_init = 0.1 * torch.randn((6, 3), generator=g)
    y = torch.argmax(X @ teacher + 0.5 * noise, dim=1)
    return X, y, W_init


class _IndependentProdigy:
    """Prodigy (Mishchenko & Defazio) as described in the README, for the verification numbers:
    two groups, bias correction, safeguard warmup, decoupled weight decay."""

    def __init__(self, params, wd=1e-4, betas=(0.9, 0.999), eps=1e-8, d0=1e-6):
        self.params, self.wd, self.eps, self.d0 = params, wd, eps, d0
        self.b1, self.b2 = betas
        self.b3 = math.sqrt(self.b2)
        self.d = self.d_max = d0
        self.num = 0.0
        self.k = 0
        self.p0 = [p.detach().clone() for p in params]
        self.s = [torch.zeros_like(p) for p in params]
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]

    def step(self, grads):
        d, k = self.d, self.k
        dlr = d * ((1 - self.b2 ** (k + 1)) ** 0.5) / (1 - self.b1 ** (k + 1))
        num = self.num * self.b3
        denom = 0.0
        for p, g, p0, s, m, v in zip(self.params, grads, self.p0, self.s, self.m, self.v):
            num += (d / self.d0) * dlr * torch.dot(g.flatten(), (p0 - p.detach()).flatten()).item()
            m.mul_(self.b1).add_(g, alpha=d * (1 - self.b1))
            v.mul_(self.b2).addcmul_(g, g, value=d * d * (1 - self.b2))
            s.mul_(self.b3).add_(g, alpha=(d / self.d0) * d)
            denom += s.abs().sum().item()
        d_hat = num / denom
        # growth_rate = inf: d jumps straight to the running max of the estimates
        self.d_max = max(self.d_max, d_hat)
        self.d = self.d_max
        self.num = num
        with torch.no_grad():
            for p, m, v in zip(self.params, self.m, self.v):
                p.add_(p, alpha=-self.wd * dlr)
                p.addcdiv_(m, v.sqrt().add_(self.d * self.eps), value=-dlr)
        self.k += 1


def make_prodigy(w) -> dict:
    from prodigyopt import Prodigy

    X, y, W_init = _prodigy_problem()
    b_init = torch.zeros(3)
    tensors = dict(X=X, y=y, W_init=W_init, b_init=b_init)
    runs, verification = {}, {}
    for run, clip in (("premier", None), ("premier_clip05", 0.5)):
        W = W_init.clone().requires_grad_(True)
        b = b_init.clone().requires_grad_(True)
        opt = Prodigy([{"params": [W]}, {"params": [b]}], lr=1.0, use_bias_correction=True,
                      safeguard_warmup=True, weight_decay=1e-4)
        iW = W_init.clone().requires_grad_(True)
        ib = b_init.clone().requires_grad_(True)
        ind = _IndependentProdigy([iW, ib])
        traj = {key: [] for key in D_KEYS + ("loss",)}
        ind_d, param_diff = [], 0.0
        for step in range(1, 61):
            opt.zero_grad()
            loss = F.cross_entropy(X @ W + b, y)
            loss.backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_([W, b], clip)
            opt.step()
            traj["loss"].append(loss.item())
            for key in D_KEYS:
                traj[key].append(opt.param_groups[0][key])

            iW.grad = ib.grad = None
            iloss = F.cross_entropy(X @ iW + ib, y)
            iloss.backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_([iW, ib], clip)
            ind.step([iW.grad, ib.grad])
            ind_d.append(ind.d)
            if step in SNAPSHOTS:
                tensors[f"{run}_W_step{step}"] = W.detach().clone()
                tensors[f"{run}_b_step{step}"] = b.detach().clone()
                param_diff = max(param_diff, maxdiff(iW, W), maxdiff(ib, b))
        for key in D_KEYS + ("loss",):
            tensors[f"{run}_{key}_f64"] = torch.tensor(traj[key], dtype=torch.float64)
        runs[run] = {"d_after_step": {str(n): traj["d"][n - 1] for n in SNAPSHOTS},
                     "loss_first_last": [traj["loss"][0], traj["loss"][-1]]}
        verification[run] = {
            "max|independent - prodigyopt| params (all snapshots)": param_diff,
            "max rel|independent d - prodigyopt d|": max(abs(a - b) / abs(b) for a, b in zip(ind_d, traj["d"])),
        }
    w.safetensors("prodigy.safetensors", tensors)
    w.json("prodigy.json", dict(PRODIGY_TEXT, runs=runs, verification=verification, tensors=tensor_table(tensors)),)
    return verification


# ---- prose of the json files (project text, as in tests/fixtures) ----

ADAPTER_TEXT = {
    "description": (
        "Official Premier adapter scripts.pipeline.mod_adapters.CLIPModAdapter_2 (the class load_modulation_adapter "
        "builds for XVerse_config_demo.yaml), tiny widths. Weights: adapter_small_weights.safetensors with the "
        "official state_dict key names."),
    "constructor": ADAPTER_ARGS,
    "constructor_note": (
        "net2's output width is hard-coded as out_dim*(19 + pblock_single_blocks); -17 gives 2 blocks (= the 2 "
        "double blocks of tiny_flux). heads=8 -> head_dim 4. The number of user tokens (4) comes from the input."),
    "called": "delta_shared, delta_distinct = adapter(t, text, user)  (t is ignored by the official code)",
    "weight_init": (
        "torch.manual_seed(13000); PyTorch default init; then every parameter p += 0.05*N(0,1) from "
        "torch.Generator().manual_seed(13001) in named_parameters() order"),
    "inputs": "text (2,8,32), user (2,4,8) = N(0,1) from torch.Generator().manual_seed(13002) in that order; t = 0",
    "intermediates": (
        "<net>_text_proj_in (2,8,32), <net>_image_proj_in (2,4,32), <net>_blockK_out (2,8,32), <net>_proj_out "
        "(2,8,32 | 64) (net2 before the view to (2,8,2,32))"),
}
LOSSES_TEXT = {
    "description": (
        "Official Premier losses. (a) scripts/utils/utils.py disp_loss and stable_disp_loss (tau=1, "
        "non-distributed) on z (3,5,4) = 0.1*N(0,1) from torch.Generator().manual_seed(14000), gradients dL/dz by "
        "autograd. (b) Stage-1 flow-matching loss of scripts/train_flux/train_premier.py training_step (the "
        "official statements are executed): t_ = t[:,None,None]; x_t = (1-t_)*x_0 + t_*x_1 (x_1 = noise); loss = "
        "mse_loss(pred, x_1 - x_0, reduction='mean')."),
    "disp_loss": (
        "log( sum_{i!=j} exp(-||z_i - z_j||^2) / (B(B-1)) + 1e-10 ), z flattened per sample, squared L2 without "
        "1/d. The official function RETURNS BFLOAT16: 'disp_loss' is that bf16 value widened to f32; "
        "'disp_loss_fp32' is the same official body with the final cast made a no-op (compare against this one). "
        "Gradients of both are identical."),
    "stable_disp_loss": "mean_i [ logsumexp_{j!=i}(-||z_i - z_j||) - log(B-1) ] (plain L2, float32).",
    "flow": (
        "flow_x0, flow_noise (2,24,16) = N(0,1) from torch.Generator().manual_seed(14100) in that order; flow_t = "
        "[0.25, 0.9] (in [0,1]); flow_x_t = (1-t)*x0 + t*noise; flow_target = noise - x0; flow_pred = tiny_flux "
        "diffusers forward on flow_x_t with tiny_flux encoder_hidden_states / pooled_projections repeated to batch "
        "2, img_ids/txt_ids of tiny_flux, timestep = flow_t, guidance = flow_guidance (1.0, as in training); "
        "flow_loss = mean((pred - target)^2) over all 768 elements; flow_grad_pred = dL/dpred."),
}
PRODIGY_TEXT = {
    "description": (
        "prodigyopt==1.1.2 Prodigy with Premier's settings (lr=1.0, use_bias_correction=True, "
        "safeguard_warmup=True, weight_decay=1e-4 decoupled; other defaults: betas (0.9,0.999), "
        "beta3=sqrt(0.999), eps 1e-8, d0 1e-6, d_coef 1, growth_rate inf), two param groups [W] and [b] (like "
        "Premier stage 1: adapter, user embedding), 60 steps."),
    "problem": (
        "softmax regression: loss = F.cross_entropy(X @ W + b, y) (mean over 16 rows). X (16,6), teacher (6,3), "
        "label noise (16,3), W_init = 0.1*N(0,1) (6,3) drawn in that order from torch.Generator().manual_seed(15000); "
        "y = argmax(X @ teacher + 0.5*noise) (int64); b_init = zeros(3) (an all-zero parameter: prodigyopt stores "
        "p0 as the scalar 0, same maths)."),
    "step": (
        "opt.zero_grad(); loss = f(W,b); loss.backward(); [premier_clip05: torch.nn.utils.clip_grad_norm_([W,b], "
        "0.5), Lightning's gradient_clip_val]; opt.step()"),
    "tensors_layout": (
        "<run>_W_stepN (6,3), <run>_b_stepN (3): parameters after N steps (N in 1,5,20,40,60); "
        "<run>_<d|d_max|d_hat|d_numerator|d_denom>_f64 (60,): param_groups[0][...] after each step; "
        "<run>_loss_f64 (60,): loss evaluated before each step"),
}
