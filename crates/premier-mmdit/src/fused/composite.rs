//! The composite (tensor-op) forms of the fused ops: the defaults of [`super::FluxOps`] and the
//! references of its kernels' parity tests.

use burn::prelude::*;
use burn::tensor::activation::sigmoid;
use burn::tensor::module::attention as burn_attention;
use burn::tensor::ops::{AttentionModuleOptions, FloatTensor};
use burn::tensor::{DType, TensorMetadata, TensorPrimitive};

use crate::norm::{inverse_sqrt, layer_norm_no_affine, layer_norm_with_rstd};

fn tensor<B: Backend, const D: usize>(x: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(x))
}

fn primitive<B: Backend, const D: usize>(x: Tensor<B, D>) -> FloatTensor<B> {
    x.into_primitive().tensor()
}

/// burn's attention with the heads merged: what the model ran before `FluxOps`.
/// q, k, v: `[B, H, T, D]` → `[B, T, H·D]`.
pub fn attention<B: Backend>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    scale: f64,
) -> FloatTensor<B> {
    let (q, k, v) = (tensor::<B, 4>(q), tensor::<B, 4>(k), tensor::<B, 4>(v));
    let [b, h, n, d] = q.dims();
    let options = AttentionModuleOptions {
        scale: Some(scale),
        ..Default::default()
    };
    primitive(
        burn_attention(q, k, v, None, None, options)
            .swap_dims(1, 2)
            .reshape([b, n, h * d]),
    )
}

/// Elements of one T × T-shaped tensor that a chunk of [`attention_with_lse`] or
/// [`attention_backward`] holds at most (B · H · query rows · T, the whole batch's rows in each
/// chunk): 2²⁶, 256 MiB in f32. FLUX.1-dev at 512² (24 heads, 1536 tokens) is one chunk at batch
/// 1 and two at batch 2; at 1024² (4608 tokens) eight at batch 1.
pub const ATTENTION_CHUNK_SCORES: usize = 1 << 26;

/// Query rows per chunk for `[B, H, T, ·]` inputs within [`ATTENTION_CHUNK_SCORES`] (at least 1).
pub fn attention_chunk_rows(batch: usize, heads: usize, tokens: usize) -> usize {
    // Saturating: the memory estimates call this with sizes from user input.
    let per_row = batch.saturating_mul(heads).saturating_mul(tokens).max(1);
    (ATTENTION_CHUNK_SCORES / per_row).clamp(1, tokens.max(1))
}

/// [`attention_chunk_rows`] of q `[B, H, T, D]` (self-attention: the keys are as many as the
/// queries).
fn chunk_rows_of<B: Backend>(q: &FloatTensor<B>) -> usize {
    let shape = q.shape();
    attention_chunk_rows(shape[0], shape[1], shape[2])
}

/// Query rows `start..start + rows` of `[B, H, T, D]`, or the whole tensor when that is all of it.
fn query_rows<B: Backend>(x: &Tensor<B, 4>, start: usize, rows: usize) -> Tensor<B, 4> {
    if start == 0 && rows == x.dims()[2] {
        x.clone()
    } else {
        x.clone().narrow(2, start, rows)
    }
}

/// Joins chunks along the query rows (dim 2).
fn join_rows<B: Backend>(mut chunks: Vec<Tensor<B, 4>>) -> Tensor<B, 4> {
    if chunks.len() == 1 {
        chunks.remove(0)
    } else {
        Tensor::cat(chunks, 2)
    }
}

/// The attention `[B, T, H·D]` and the row log-sum-exp of the scaled scores `[B, T, H]`, in
/// chunks of query rows ([`attention_chunk_rows`]), so that no more than one chunk's scores exist
/// at a time.
pub fn attention_with_lse<B: Backend>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    scale: f64,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let rows = chunk_rows_of::<B>(&q);
    attention_with_lse_in_chunks::<B>(q, k, v, scale, rows)
}

/// [`attention_with_lse`] with `rows` query rows per chunk (0 counts as 1). Half-precision
/// inputs are computed in f32 (as Flex's kernel does): the output is rounded back, the
/// log-sum-exp stays in f32, since the backward's exp(S − lse) would carry its rounding into
/// every probability.
pub fn attention_with_lse_in_chunks<B: Backend>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    scale: f64,
    rows: usize,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let rows = rows.max(1);
    let dtype = q.dtype();
    let compute = compute_dtype(dtype);
    let [q, k, v] = [q, k, v].map(|x| tensor::<B, 4>(x).cast(compute));
    let [b, h, n, d] = q.dims();
    if n == 0 {
        let empty = |cols, dtype| Tensor::<B, 3>::zeros([b, 0, cols], &q.device()).cast(dtype);
        return (primitive(empty(h * d, dtype)), primitive(empty(h, compute)));
    }
    let kt = k.swap_dims(2, 3);
    let (mut outs, mut lses) = (Vec::new(), Vec::new());
    for start in (0..n).step_by(rows) {
        let q = query_rows(&q, start, rows.min(n - start));
        let scores = q.matmul(kt.clone()) * scale; // [B, H, rows, T]
        let max = scores.clone().max_dim(3); // [B, H, rows, 1]
        let exp = (scores - max.clone()).exp();
        let sum = exp.clone().sum_dim(3);
        outs.push((exp / sum.clone()).matmul(v.clone())); // [B, H, rows, D]
        lses.push(max + sum.log());
    }
    let out = join_rows(outs).cast(dtype);
    let lse = join_rows(lses).reshape([b, h, n]).swap_dims(1, 2);
    (
        primitive(out.swap_dims(1, 2).reshape([b, n, h * d])),
        primitive(lse),
    )
}

/// (dq, dk, dv) `[B, H, T, D]` from the forward's out `[B, T, H·D]`, lse `[B, T, H]` and the
/// output gradient `[B, T, H·D]`: P = exp(S − lse), dV = Pᵀ dO, dS = P ∘ (dO Vᵀ − rowsum(dO ∘ O)),
/// dQ = scale · dS K, dK = scale · dSᵀ Q; in chunks of query rows like [`attention_with_lse`].
#[allow(clippy::too_many_arguments)]
pub fn attention_backward<B: Backend>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    out: FloatTensor<B>,
    lse: FloatTensor<B>,
    grad_out: FloatTensor<B>,
    scale: f64,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let rows = chunk_rows_of::<B>(&q);
    attention_backward_in_chunks::<B>(q, k, v, out, lse, grad_out, scale, rows)
}

/// [`attention_backward`] with `rows` query rows per chunk (0 counts as 1). dK and dV add the
/// chunks' parts in order. Half-precision inputs are computed in f32 and the gradients rounded
/// back, as in [`attention_with_lse_in_chunks`].
#[allow(clippy::too_many_arguments)]
pub fn attention_backward_in_chunks<B: Backend>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    out: FloatTensor<B>,
    lse: FloatTensor<B>,
    grad_out: FloatTensor<B>,
    scale: f64,
    rows: usize,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let rows = rows.max(1);
    let dtype = q.dtype();
    let compute = compute_dtype(dtype);
    let [q, k, v] = [q, k, v].map(|x| tensor::<B, 4>(x).cast(compute));
    let [b, h, n, d] = q.dims();
    let heads = |x| {
        tensor::<B, 3>(x)
            .cast(compute)
            .reshape([b, n, h, d])
            .swap_dims(1, 2)
    };
    let (out, grad_out) = (heads(out), heads(grad_out));
    let lse = tensor::<B, 3>(lse)
        .cast(compute)
        .swap_dims(1, 2)
        .reshape([b, h, n, 1]);
    let (kt, vt) = (k.clone().swap_dims(2, 3), v.swap_dims(2, 3));
    let mut dqs = Vec::new();
    let (mut dk, mut dv): (Option<Tensor<B, 4>>, Option<Tensor<B, 4>>) = (None, None);
    let add = |sum: Option<Tensor<B, 4>>, part: Tensor<B, 4>| {
        Some(match sum {
            Some(sum) => sum + part,
            None => part,
        })
    };
    for start in (0..n).step_by(rows) {
        let rows = rows.min(n - start);
        let [q, out, grad_out, lse] =
            [&q, &out, &grad_out, &lse].map(|x| query_rows(x, start, rows));
        let prob = (q.clone().matmul(kt.clone()) * scale - lse).exp(); // [B, H, rows, T]
        dv = add(dv, prob.clone().swap_dims(2, 3).matmul(grad_out.clone()));
        let dp = grad_out.clone().matmul(vt.clone());
        let delta = (grad_out * out).sum_dim(3);
        let ds = prob * (dp - delta);
        dqs.push(ds.clone().matmul(k.clone()) * scale);
        dk = add(dk, ds.swap_dims(2, 3).matmul(q) * scale);
    }
    let zeros = || Tensor::<B, 4>::zeros([b, h, n, d], &q.device()).cast(q.dtype());
    let dq = if dqs.is_empty() {
        zeros()
    } else {
        join_rows(dqs)
    };
    let (dk, dv) = (dk.unwrap_or_else(zeros), dv.unwrap_or_else(zeros));
    let [dq, dk, dv] = [dq, dk, dv].map(|g| primitive(g.cast(dtype)));
    (dq, dk, dv)
}

/// `(1 + scale) · LN(x) + shift`. x: `[B, T, D]`; shift, scale: `[B, 1 or T, D]` → `[B, T, D]`.
pub fn modulate<B: Backend>(
    x: FloatTensor<B>,
    shift: FloatTensor<B>,
    scale: FloatTensor<B>,
    eps: f64,
) -> FloatTensor<B> {
    let normed = layer_norm_no_affine(tensor::<B, 3>(x), eps);
    primitive((tensor::<B, 3>(scale) + 1.0) * normed + tensor::<B, 3>(shift))
}

/// (dx, dshift, dscale) of [`modulate`] from x, scale and the output gradient: with x̂ = LN(x),
/// g = dy ∘ (1 + scale), dx = rstd · (g − mean(g) − x̂ ∘ mean(g ∘ x̂)); dshift = Σ dy and
/// dscale = Σ dy ∘ x̂ over the tokens a broadcast scale shares.
pub fn modulate_backward<B: Backend>(
    x: FloatTensor<B>,
    scale: FloatTensor<B>,
    grad_out: FloatTensor<B>,
    eps: f64,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let (scale, grad_out) = (tensor::<B, 3>(scale), tensor::<B, 3>(grad_out));
    let (normed, rstd) = layer_norm_with_rstd(tensor::<B, 3>(x), eps);
    let g = grad_out.clone() * (scale.clone() + 1.0);
    let dx = rstd
        * (g.clone() - g.clone().mean_dim(2) - normed.clone() * (g * normed.clone()).mean_dim(2));
    let (dshift, dscale) = (grad_out.clone(), grad_out * normed);
    let shared = |d: Tensor<B, 3>| {
        if scale.dims()[1] == 1 {
            d.sum_dim(1)
        } else {
            d
        }
    };
    (
        primitive(dx),
        primitive(shared(dshift)),
        primitive(shared(dscale)),
    )
}

/// RMSNorm over the last dim with a learned scale: `x · rsqrt(mean(x²) + eps) · weight`.
/// x: `[B, H, T, D]`, weight: `[D]` → `[B, H, T, D]`.
///
/// In half precision the normalisation runs in f32 and its result is rounded back before the
/// scale, as BFL's `RMSNorm` does (`(x.float() * rrms).to(x_dtype) * self.scale`).
pub fn rms_norm<B: Backend>(x: FloatTensor<B>, weight: FloatTensor<B>, eps: f64) -> FloatTensor<B> {
    let x = tensor::<B, 4>(x);
    let dtype = x.dtype();
    let x = x.cast(compute_dtype(dtype));
    let rrms = inverse_sqrt(x.clone().powi_scalar(2).mean_dim(3), eps);
    let normed = (x * rrms).cast(dtype);
    primitive(normed * tensor::<B, 1>(weight).cast(dtype).reshape([1, 1, 1, -1]))
}

/// Whether `dtype` is a half type, which FLUX's norms and rotations leave for f32.
pub fn is_half(dtype: DType) -> bool {
    matches!(dtype, DType::F16 | DType::BF16)
}

/// The float type a norm or rotation of `dtype` activations computes in: f32 for half types
/// (as BFL casts with `.float()`), else `dtype`.
pub fn compute_dtype(dtype: DType) -> DType {
    if is_half(dtype) {
        DType::F32
    } else {
        dtype
    }
}

/// (dx, dweight) of [`rms_norm`]: with r = rsqrt(mean(x²) + eps) and gw = dy ∘ weight,
/// dx = r · (gw − x · r² · mean(gw ∘ x)), dweight = Σ dy ∘ x · r over every row.
pub fn rms_norm_backward<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    grad_out: FloatTensor<B>,
    eps: f64,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let (x, grad_out) = (tensor::<B, 4>(x), tensor::<B, 4>(grad_out));
    let width = x.dims()[3];
    let rrms = inverse_sqrt(x.clone().powi_scalar(2).mean_dim(3), eps);
    let gw = grad_out.clone() * tensor::<B, 1>(weight).reshape([1, 1, 1, -1]);
    let inner = (gw.clone() * x.clone()).mean_dim(3);
    let dx = rrms.clone() * (gw - x.clone() * rrms.clone().powi_scalar(2) * inner);
    let dweight = (grad_out * x * rrms).reshape([-1, width as i32]).sum_dim(0);
    (primitive(dx), primitive(dweight.reshape([width])))
}

/// RoPE: each channel pair `(2k, 2k+1)` of every head rotated by its angle,
/// `out_even = cos·x_even − sin·x_odd`, `out_odd = sin·x_even + cos·x_odd`.
/// x: `[B, H, T, D]`; cos, sin: `[B, T, D]`, each angle twice in a row → `[B, H, T, D]`.
/// Half-precision x rotates in f32 and is rounded back, as BFL's `apply_rope` does.
pub fn rope<B: Backend>(
    x: FloatTensor<B>,
    cos: FloatTensor<B>,
    sin: FloatTensor<B>,
) -> FloatTensor<B> {
    let x = tensor::<B, 4>(x);
    let dtype = x.dtype();
    let x = x.cast(compute_dtype(dtype));
    let [b, h, t, d] = x.dims();
    let pairs = x.clone().reshape([b, h, t, d / 2, 2]);
    let (even, odd) = (pairs.clone().narrow(4, 0, 1), pairs.narrow(4, 1, 1));
    // (−x_odd, x_even) per pair: exact, so x · cos + swapped · sin is BFL's rotation.
    let swapped = Tensor::cat(vec![odd.neg(), even], 4).reshape([b, h, t, d]);
    let table = |c: FloatTensor<B>| {
        tensor::<B, 3>(c)
            .cast(compute_dtype(dtype))
            .unsqueeze_dim::<4>(1)
    };
    let (cos, sin) = (table(cos), table(sin));
    primitive((x * cos + swapped * sin).cast(dtype))
}

/// RMSNorm, then RoPE ([`rms_norm`], [`rope`]): FLUX's QK-norm of a query or key and its
/// rotation. x: `[B, H, T, D]`, weight: `[D]`, cos, sin: `[B, T, D]` → `[B, H, T, D]`.
pub fn rms_norm_rope<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    cos: FloatTensor<B>,
    sin: FloatTensor<B>,
    eps: f64,
) -> FloatTensor<B> {
    rope::<B>(rms_norm::<B>(x, weight, eps), cos, sin)
}

/// (dx, dweight) of [`rms_norm_rope`]: the output gradient rotated back (RoPE by −angle, the
/// transpose of each pair's rotation), then [`rms_norm_backward`].
pub fn rms_norm_rope_backward<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    cos: FloatTensor<B>,
    sin: FloatTensor<B>,
    grad_out: FloatTensor<B>,
    eps: f64,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let dtype = tensor::<B, 4>(x.clone()).dtype();
    if is_half(dtype) {
        // The backward of the f32 computation, its results rounded to the inputs' types.
        let up = |t: FloatTensor<B>| primitive(tensor::<B, 4>(t).cast(DType::F32));
        let weight = tensor::<B, 1>(weight);
        let weight_dtype = weight.dtype();
        let (dx, dweight) = rms_norm_rope_backward::<B>(
            up(x),
            primitive(weight.cast(DType::F32)),
            cos,
            sin,
            up(grad_out),
            eps,
        );
        return (
            primitive(tensor::<B, 4>(dx).cast(dtype)),
            primitive(tensor::<B, 1>(dweight).cast(weight_dtype)),
        );
    }
    let unrotated = rope::<B>(grad_out, cos, primitive(tensor::<B, 3>(sin).neg()));
    rms_norm_backward::<B>(x, weight, unrotated, eps)
}

/// `x + gate · y`. x, y: `[B, T, D]`; gate: `[B, 1 or T, D]` → `[B, T, D]`.
pub fn gated_residual<B: Backend>(
    x: FloatTensor<B>,
    gate: FloatTensor<B>,
    y: FloatTensor<B>,
) -> FloatTensor<B> {
    primitive(tensor::<B, 3>(x) + tensor::<B, 3>(gate) * tensor::<B, 3>(y))
}

/// (dx, dgate, dy) of [`gated_residual`]: dx = dout, dy = dout ∘ gate, dgate = Σ dout ∘ y over
/// the tokens a broadcast gate shares.
pub fn gated_residual_backward<B: Backend>(
    gate: FloatTensor<B>,
    y: FloatTensor<B>,
    grad_out: FloatTensor<B>,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let (gate, y, grad_out) = (
        tensor::<B, 3>(gate),
        tensor::<B, 3>(y),
        tensor::<B, 3>(grad_out),
    );
    let shared = gate.dims()[1] == 1;
    let dy = grad_out.clone() * gate;
    let dgate = grad_out.clone() * y;
    let dgate = if shared { dgate.sum_dim(1) } else { dgate };
    (primitive(grad_out), primitive(dgate), primitive(dy))
}

/// Part `part` (0: q, 1: k, 2: v) of qkv `[B, T, 3·H·D]` as heads `[B, H, T, D]`, copied out of
/// the strided view (a reshape to 1-D copies it).
pub fn qkv_part<B: Backend>(qkv: FloatTensor<B>, heads: usize, part: usize) -> FloatTensor<B> {
    let qkv = tensor::<B, 3>(qkv);
    let [b, t, width] = qkv.dims();
    let d = width / (3 * heads);
    let x = qkv
        .reshape([b, t, 3, heads, d])
        .narrow(2, part, 1)
        .reshape([b, t, heads, d])
        .swap_dims(1, 2);
    primitive(x.reshape([b * heads * t * d]).reshape([b, heads, t, d]))
}

/// The gradient of qkv `[B, T, 3·H·D]` from part `part`'s gradient `[B, H, T, D]`, zero in the
/// other parts.
pub fn qkv_part_backward<B: Backend>(grad: FloatTensor<B>, part: usize) -> FloatTensor<B> {
    let grad = tensor::<B, 4>(grad);
    let [b, h, t, d] = grad.dims();
    let grad = grad.swap_dims(1, 2).unsqueeze_dim::<5>(2); // [B, T, 1, H, D]
    let zeros = grad.zeros_like();
    let parts = (0..3)
        .map(|i| {
            if i == part {
                grad.clone()
            } else {
                zeros.clone()
            }
        })
        .collect();
    primitive(Tensor::cat(parts, 2).reshape([b, t, 3 * h * d]))
}

/// GELU(tanh)'s constants: u = √(2/π)(x + 0.044715x³); the Flex kernel uses them too.
pub(crate) const GELU_SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
pub(crate) const GELU_CUBIC: f64 = 0.044715;

/// GELU with the tanh approximation (PyTorch `GELU(approximate="tanh")`), written as
/// `x · σ(2u)` with `u = √(2/π)(x + 0.044715x³)`, which equals `0.5x(1 + tanh(u))` and runs
/// several times faster than a tanh on CPU backends. burn's sigmoid keeps the backward finite for
/// large |u| (an `x / (1 + exp(-2u))` form would give inf/inf gradients). The default of
/// [`super::FluxOps::flux_gelu_tanh`], and what T5's gated GELU runs on any backend.
///
/// x: any shape.
pub fn gelu_tanh<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let u2 =
        (x.clone() * x.clone() * x.clone() * GELU_CUBIC + x.clone()) * (2.0 * GELU_SQRT_2_OVER_PI);
    x * sigmoid(u2)
}

/// dx of [`gelu_tanh`] from x and the output gradient (any shape, the same for both): with
/// s = σ(2u), dy/dx = s + 2x · s(1 − s) · √(2/π)(1 + 3 · 0.044715x²).
pub fn gelu_tanh_backward<B: Backend>(
    x: FloatTensor<B>,
    grad_out: FloatTensor<B>,
) -> FloatTensor<B> {
    let shape = x.shape();
    let (x, grad_out) = (flat::<B>(x), flat::<B>(grad_out));
    let s = sigmoid(
        (x.clone() * x.clone() * x.clone() * GELU_CUBIC + x.clone()) * (2.0 * GELU_SQRT_2_OVER_PI),
    );
    let du2 = (x.clone() * x.clone() * (3.0 * GELU_CUBIC) + 1.0) * (2.0 * GELU_SQRT_2_OVER_PI);
    let slope = s.clone() + x * s.clone() * (s.neg() + 1.0) * du2;
    B::float_reshape(primitive(grad_out * slope), shape)
}

/// [`gelu_tanh`] on a float primitive of any rank.
pub fn gelu_tanh_primitive<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
    let shape = x.shape();
    B::float_reshape(primitive(gelu_tanh(flat::<B>(x))), shape)
}

/// x of any rank as `[n]`.
fn flat<B: Backend>(x: FloatTensor<B>) -> Tensor<B, 1> {
    let n = x.shape().num_elements();
    tensor(B::float_reshape(x, [n].into()))
}

/// Prodigy's moments as tensor ops, in prodigyopt's order of operations (SPEC §6).
pub fn prodigy_moments<B: Backend>(
    p: FloatTensor<B>,
    g: FloatTensor<B>,
    p0: Option<FloatTensor<B>>,
    moments: super::ProdigyMoments<B>,
    c: super::ProdigyCoefs,
) -> (super::ProdigyMoments<B>, super::ProdigySums) {
    let (p, g) = (tensor::<B, 1>(p), tensor::<B, 1>(g));
    let delta = match p0 {
        Some(p0) => tensor::<B, 1>(p0) - p,
        None => p.neg(),
    };
    let g_dot_delta = widened((g.clone() * delta).sum());
    let mut exp_avg = tensor::<B, 1>(moments.exp_avg);
    if c.beta1 > 0.0 {
        exp_avg = exp_avg * c.beta1 + g.clone() * c.avg;
    }
    let exp_avg_sq =
        tensor::<B, 1>(moments.exp_avg_sq) * c.beta2 + (g.clone() * c.avg_sq) * g.clone();
    let s = tensor::<B, 1>(moments.s) * c.beta3 + g * c.s_coef;
    let s_abs = widened(s.clone().abs().sum());
    (
        super::ProdigyMoments {
            exp_avg: primitive(exp_avg),
            exp_avg_sq: primitive(exp_avg_sq),
            s: primitive(s),
        },
        super::ProdigySums { g_dot_delta, s_abs },
    )
}

/// A one-element tensor's value, read in its own precision (`into_scalar` would go through the
/// backend's default float type).
fn widened<B: Backend>(x: Tensor<B, 1>) -> f64 {
    x.into_data()
        .convert::<f64>()
        .into_vec::<f64>()
        .map_or(f64::NAN, |v| v[0])
}

/// Prodigy's parameter update as tensor ops.
pub fn prodigy_update<B: Backend>(
    p: FloatTensor<B>,
    direction: FloatTensor<B>,
    exp_avg_sq: FloatTensor<B>,
    u: super::ProdigyUpdate,
) -> FloatTensor<B> {
    let p = tensor::<B, 1>(p);
    let denom = tensor::<B, 1>(exp_avg_sq).sqrt() + u.eps;
    let p = if u.decay != 0.0 {
        p.clone() + p * u.decay
    } else {
        p
    };
    primitive(p + (tensor::<B, 1>(direction) / denom) * u.step)
}
