//! Fused attention kernels for `Flex` (CPU): a flash forward parallel over (batch, query block)
//! that keeps the row log-sum-exp, and a FlashAttention-2 backward parallel over (batch, head)
//! that recomputes the probabilities a block at a time. Each task writes its own rows, so the
//! results are bit-deterministic whatever the thread count. f32 and f64 natively; half types
//! are computed in f32, as burn-flex's own attention does. The row-wise ops (modulation, QK-norm with RoPE, gated residual) are in `flex/rowwise.rs`.

use burn::backend::flex::FlexTensor;
use burn::backend::Flex;
use burn::tensor::ops::{FloatTensorOps, ModuleOps};
use burn::tensor::{DType, FloatDType, TensorData, TensorMetadata};
use rayon::prelude::*;

use super::{composite, FluxOps, ProdigyCoefs, ProdigyMoments, ProdigySums, ProdigyUpdate};

mod elementwise;
mod heads;
mod linear;
mod optim;
mod rowwise;
mod simd;

use simd::vectorized;

/// Query rows per task of the forward, and key rows per block of its online softmax: large
/// enough that gemm's packing of each K and V block is shared by many query rows (the 256 × 256
/// scores, 256 KiB, stay in L2). 64 × 64 blocks took 13.9 ms on the medium attention, 256 × 256
/// 10.6 ms (`cargo bench --bench flux_forward -- fused_attention`).
const QUERY_BLOCK: usize = 256;
const KEY_BLOCK: usize = 256;

/// Query and key rows per tile of the backward.
const BACKWARD_BLOCK: usize = 128;

impl FluxOps for Flex {
    const FUSED_ATTENTION: bool = true;

    fn flux_attention(q: FlexTensor, k: FlexTensor, v: FlexTensor, scale: f64) -> FlexTensor {
        Self::flux_attention_fwd(q, k, v, scale).0
    }

    fn flux_attention_fwd(
        q: FlexTensor,
        k: FlexTensor,
        v: FlexTensor,
        scale: f64,
    ) -> (FlexTensor, FlexTensor) {
        match q.dtype() {
            DType::F64 => forward::<f64>(&q, &k, &v, scale),
            DType::F32 => forward::<f32>(&q, &k, &v, scale),
            dtype => {
                let (out, lse) = forward::<f32>(&up(q), &up(k), &up(v), scale);
                (down(out, dtype), lse)
            }
        }
    }

    fn flux_attention_bwd(
        q: FlexTensor,
        k: FlexTensor,
        v: FlexTensor,
        out: FlexTensor,
        lse: FlexTensor,
        grad_out: FlexTensor,
        scale: f64,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        match q.dtype() {
            DType::F64 => backward::<f64>([&q, &k, &v, &out, &lse, &grad_out], scale),
            DType::F32 => backward::<f32>([&q, &k, &v, &out, &lse, &grad_out], scale),
            dtype => {
                let [q, k, v, out, lse, grad_out] = [q, k, v, out, lse, grad_out].map(up);
                let (dq, dk, dv) = backward::<f32>([&q, &k, &v, &out, &lse, &grad_out], scale);
                (down(dq, dtype), down(dk, dtype), down(dv, dtype))
            }
        }
    }

    const FUSED_NORMS: bool = true;

    fn flux_modulate(x: FlexTensor, shift: FlexTensor, scale: FlexTensor, eps: f64) -> FlexTensor {
        match x.dtype() {
            DType::F64 => rowwise::modulate::<f64>([&x, &shift, &scale], eps),
            DType::F32 => rowwise::modulate::<f32>([&x, &shift, &scale], eps),
            dtype => {
                let [x, shift, scale] = [x, shift, scale].map(up);
                down(rowwise::modulate::<f32>([&x, &shift, &scale], eps), dtype)
            }
        }
    }

    fn flux_modulate_bwd(
        x: FlexTensor,
        scale: FlexTensor,
        grad_out: FlexTensor,
        eps: f64,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        match x.dtype() {
            DType::F64 => rowwise::modulate_backward::<f64>([&x, &scale, &grad_out], eps),
            DType::F32 => rowwise::modulate_backward::<f32>([&x, &scale, &grad_out], eps),
            dtype => {
                let [x, scale, grad_out] = [x, scale, grad_out].map(up);
                let (dx, dshift, dscale) =
                    rowwise::modulate_backward::<f32>([&x, &scale, &grad_out], eps);
                (down(dx, dtype), down(dshift, dtype), down(dscale, dtype))
            }
        }
    }

    fn flux_gated_residual(x: FlexTensor, gate: FlexTensor, y: FlexTensor) -> FlexTensor {
        match x.dtype() {
            DType::F64 => rowwise::gated_residual::<f64>([&x, &gate, &y]),
            DType::F32 => rowwise::gated_residual::<f32>([&x, &gate, &y]),
            dtype => {
                let [x, gate, y] = [x, gate, y].map(up);
                down(rowwise::gated_residual::<f32>([&x, &gate, &y]), dtype)
            }
        }
    }

    fn flux_gated_residual_bwd(
        gate: FlexTensor,
        y: FlexTensor,
        grad_out: FlexTensor,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        match y.dtype() {
            DType::F64 => rowwise::gated_residual_backward::<f64>([&gate, &y, &grad_out]),
            DType::F32 => rowwise::gated_residual_backward::<f32>([&gate, &y, &grad_out]),
            dtype => {
                let [gate, y, grad_out] = [gate, y, grad_out].map(up);
                let (dx, dgate, dy) =
                    rowwise::gated_residual_backward::<f32>([&gate, &y, &grad_out]);
                (down(dx, dtype), down(dgate, dtype), down(dy, dtype))
            }
        }
    }

    fn flux_rms_norm_rope(
        x: FlexTensor,
        weight: FlexTensor,
        cos: FlexTensor,
        sin: FlexTensor,
        eps: f64,
    ) -> FlexTensor {
        match x.dtype() {
            DType::F64 => rowwise::rms_norm_rope::<f64>([&x, &weight, &cos, &sin], eps),
            DType::F32 => rowwise::rms_norm_rope::<f32>([&x, &weight, &cos, &sin], eps),
            // BFL rounds between the norm, its scale and the rotation: the composite does too.
            _ => composite::rms_norm_rope::<Flex>(x, weight, cos, sin, eps),
        }
    }

    fn flux_rms_norm_rope_bwd(
        x: FlexTensor,
        weight: FlexTensor,
        cos: FlexTensor,
        sin: FlexTensor,
        grad_out: FlexTensor,
        eps: f64,
    ) -> (FlexTensor, FlexTensor) {
        let inputs = [x, weight, cos, sin, grad_out];
        match inputs[0].dtype() {
            DType::F64 => rowwise::rms_norm_rope_backward::<f64>(inputs.each_ref(), eps),
            DType::F32 => rowwise::rms_norm_rope_backward::<f32>(inputs.each_ref(), eps),
            _ => {
                let [x, weight, cos, sin, grad_out] = inputs;
                composite::rms_norm_rope_backward::<Flex>(x, weight, cos, sin, grad_out, eps)
            }
        }
    }

    fn flux_qkv_part(qkv: FlexTensor, heads: usize, part: usize) -> FlexTensor {
        match qkv.dtype() {
            DType::F64 => heads::qkv_part::<f64>(&qkv, heads, part),
            DType::F32 => heads::qkv_part::<f32>(&qkv, heads, part),
            dtype => down(heads::qkv_part::<f32>(&up(qkv), heads, part), dtype),
        }
    }

    fn flux_qkv_part_bwd(grad: FlexTensor, part: usize) -> FlexTensor {
        match grad.dtype() {
            DType::F64 => heads::qkv_part_backward::<f64>(&grad, part),
            DType::F32 => heads::qkv_part_backward::<f32>(&grad, part),
            dtype => down(heads::qkv_part_backward::<f32>(&up(grad), part), dtype),
        }
    }

    fn flux_gelu_tanh(x: FlexTensor) -> FlexTensor {
        match x.dtype() {
            DType::F64 => elementwise::gelu_tanh::<f64>(x),
            DType::F32 => elementwise::gelu_tanh::<f32>(x),
            dtype => down(elementwise::gelu_tanh::<f32>(up(x)), dtype),
        }
    }

    fn flux_linear(x: FlexTensor, weight: FlexTensor, bias: Option<FlexTensor>) -> FlexTensor {
        // The kernel where every operand has the same native float type (the weights-in-bf16
        // forward keeps burn's, which converts per call).
        let same = |dtype| {
            x.dtype() == dtype
                && weight.dtype() == dtype
                && bias.as_ref().is_none_or(|b| b.dtype() == dtype)
        };
        if same(DType::F32) {
            linear::forward::<f32>(&x, &weight, bias.as_ref())
        } else if same(DType::F64) {
            linear::forward::<f64>(&x, &weight, bias.as_ref())
        } else {
            <Flex as ModuleOps<Flex>>::linear(x, weight, bias)
        }
    }

    fn flux_linear_x_bwd(weight: FlexTensor, grad_out: FlexTensor) -> FlexTensor {
        match (weight.dtype(), grad_out.dtype()) {
            (DType::F32, DType::F32) => linear::x_backward::<f32>(&weight, &grad_out),
            (DType::F64, DType::F64) => linear::x_backward::<f64>(&weight, &grad_out),
            _ => <Flex as ModuleOps<Flex>>::linear_x_backward(weight, grad_out),
        }
    }

    fn flux_linear_weight_bwd(x: FlexTensor, grad_out: FlexTensor) -> FlexTensor {
        match (x.dtype(), grad_out.dtype()) {
            (DType::F32, DType::F32) => linear::weight_backward::<f32>(&x, &grad_out),
            (DType::F64, DType::F64) => linear::weight_backward::<f64>(&x, &grad_out),
            _ => <Flex as ModuleOps<Flex>>::linear_weight_backward(x, grad_out),
        }
    }

    fn flux_prodigy_moments(
        p: FlexTensor,
        g: FlexTensor,
        p0: Option<FlexTensor>,
        moments: ProdigyMoments<Flex>,
        coefs: ProdigyCoefs,
    ) -> (ProdigyMoments<Flex>, ProdigySums) {
        let dtype = p.dtype();
        let native = [&g, &moments.exp_avg, &moments.exp_avg_sq, &moments.s]
            .into_iter()
            .chain(&p0)
            .all(|x| x.dtype() == dtype);
        match dtype {
            DType::F32 if native => optim::moments::<f32>(&p, &g, p0.as_ref(), moments, coefs),
            DType::F64 if native => optim::moments::<f64>(&p, &g, p0.as_ref(), moments, coefs),
            _ => composite::prodigy_moments::<Flex>(p, g, p0, moments, coefs),
        }
    }

    fn flux_prodigy_update(
        p: FlexTensor,
        direction: FlexTensor,
        exp_avg_sq: FlexTensor,
        update: ProdigyUpdate,
    ) -> FlexTensor {
        let dtype = p.dtype();
        let native = direction.dtype() == dtype && exp_avg_sq.dtype() == dtype;
        match dtype {
            DType::F32 if native => optim::update::<f32>(p, &direction, &exp_avg_sq, update),
            DType::F64 if native => optim::update::<f64>(p, &direction, &exp_avg_sq, update),
            _ => composite::prodigy_update::<Flex>(p, direction, exp_avg_sq, update),
        }
    }

    fn flux_gelu_tanh_bwd(x: FlexTensor, grad_out: FlexTensor) -> FlexTensor {
        match x.dtype() {
            DType::F64 => elementwise::gelu_tanh_backward::<f64>([&x, &grad_out]),
            DType::F32 => elementwise::gelu_tanh_backward::<f32>([&x, &grad_out]),
            dtype => {
                let [x, grad_out] = [x, grad_out].map(up);
                down(
                    elementwise::gelu_tanh_backward::<f32>([&x, &grad_out]),
                    dtype,
                )
            }
        }
    }
}

fn up(x: FlexTensor) -> FlexTensor {
    if x.dtype() == DType::F32 {
        x
    } else {
        Flex::float_cast(x, FloatDType::F32)
    }
}

fn down(x: FlexTensor, dtype: DType) -> FlexTensor {
    Flex::float_cast(x, dtype.into())
}

/// The float types the kernels run in.
trait Real:
    Copy
    + Send
    + Sync
    + PartialOrd
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::AddAssign
    + burn::tensor::Element
    + 'static
{
    const ZERO: Self;
    const ONE: Self;
    const NEG_INFINITY: Self;
    fn of(x: f64) -> Self;
    fn exp(self) -> Self;
    /// e^x in a form that vectorises (f32: [`exp_f32`], Cephes' polynomial, within 7.8e-8
    /// relative (< 1 ulp) on [−87, 0.5], tested; f64: std).
    fn exp_fast(self) -> Self;
    fn ln(self) -> Self;
    fn sqrt(self) -> Self;
    /// The elements of a contiguous tensor (`to_contiguous` is an Arc clone when it already is), borrowed.
    fn view(x: &FlexTensor) -> &[Self];
    /// The whole buffer a tensor views, for strided reads from `layout().start_offset()`.
    fn storage(x: &FlexTensor) -> &[Self];
    /// The elements of a tensor that owns its whole buffer alone and is laid out in order, to
    /// overwrite in place; `None` when it is shared, strided or a view into a larger buffer.
    fn view_mut(x: &mut FlexTensor) -> Option<&mut [Self]>;
}

macro_rules! impl_real {
    ($t:ty, $exp:path) => {
        impl Real for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const NEG_INFINITY: Self = <$t>::NEG_INFINITY;
            fn of(x: f64) -> Self {
                x as $t
            }
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            #[inline(always)]
            fn exp_fast(self) -> Self {
                $exp(self)
            }
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            #[inline(always)]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            fn view(x: &FlexTensor) -> &[Self] {
                x.as_slice::<$t>().expect("contiguous, dtype checked")
            }
            fn storage(x: &FlexTensor) -> &[Self] {
                x.storage::<$t>()
            }
            fn view_mut(x: &mut FlexTensor) -> Option<&mut [Self]> {
                let n = x.shape().num_elements();
                if !x.is_contiguous() || x.layout().start_offset() != 0 {
                    return None;
                }
                x.try_storage_mut::<$t>().filter(|values| values.len() == n)
            }
        }
    };
}
impl_real!(f32, exp_f32);
impl_real!(f64, f64::exp);

/// Cephes' `expf`: x = n·ln 2 + r with |r| ≤ ln 2 / 2, e^r by a degree-6 polynomial, 2^n put
/// into the exponent bits. Branch-free (the rounding is the 1.5·2²³ trick), so it vectorises.
/// Below −87 it gives 0 (e^−∞ too) and above 88 ∞, where e^x leaves f32's normal range.
#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2^23
    let (low, high) = (x < -87.0, x > 88.0);
    let x = x.clamp(-87.0, 88.0);
    let rounded = x * std::f32::consts::LOG2_E + ROUND;
    let n = rounded - ROUND;
    // n as an integer from the mantissa bits: `n as i32` saturates, a branch per element that
    // keeps the loop from vectorising.
    let n_int = rounded.to_bits() as i32 - ROUND.to_bits() as i32;
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let p = (((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2)
        * r
        + 1.666_666_5e-1)
        * r
        + 5.0e-1)
        * (r * r)
        + r
        + 1.0;
    let e = p * f32::from_bits(((n_int + 127) << 23) as u32);
    // Selects, not branches: the loop still vectorises.
    let e = if low { 0.0 } else { e };
    if high {
        f32::INFINITY
    } else {
        e
    }
}

fn dims4(x: &FlexTensor) -> [usize; 4] {
    let shape = x.shape();
    [shape[0], shape[1], shape[2], shape[3]]
}

fn tensor<T: Real>(values: Vec<T>, shape: impl Into<burn::tensor::Shape>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

/// dst (m×n) = [dst +] alpha · lhs (m×k) · rhs (k×n), row-major views given by their column
/// and row strides; on one thread (`Parallelism::None`) where a kernel parallelises around it.
#[allow(clippy::too_many_arguments)]
fn gemm<T: Real>(
    [m, n, k]: [usize; 3],
    dst: &mut [T],
    [dst_cs, dst_rs]: [usize; 2],
    accumulate: bool,
    lhs: &[T],
    [lhs_cs, lhs_rs]: [usize; 2],
    rhs: &[T],
    [rhs_cs, rhs_rs]: [usize; 2],
    alpha: T,
    parallelism: gemm::Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    // The last element each operand touches must lie inside its slice.
    let last = |cs: usize, rs: usize, rows: usize, cols: usize| (rows - 1) * rs + (cols - 1) * cs;
    assert!(last(dst_cs, dst_rs, m, n) < dst.len());
    if k > 0 {
        assert!(last(lhs_cs, lhs_rs, m, k) < lhs.len());
        assert!(last(rhs_cs, rhs_rs, k, n) < rhs.len());
    }
    // SAFETY: every index the product reads or writes is bounded above, and dst does not alias
    // lhs or rhs (a &mut and two & borrows).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            dst_cs as isize,
            dst_rs as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            T::ONE,
            alpha,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// q, k, v `[B, H, T, D]` → (out `[B, T, H·D]`, lse `[B, T, H]`), online softmax over key
/// blocks; a task per (batch, block of query rows), the heads in turn.
fn forward<T: Real>(
    q: &FlexTensor,
    k: &FlexTensor,
    v: &FlexTensor,
    scale: f64,
) -> (FlexTensor, FlexTensor) {
    let [b, h, n, d] = dims4(q);
    let (q, k, v) = (q.to_contiguous(), k.to_contiguous(), v.to_contiguous());
    let (qs, ks, vs) = (T::view(&q), T::view(&k), T::view(&v));
    let hd = h * d;
    let scale = T::of(scale);
    let mut out = vec![T::ZERO; b * n * hd];
    let mut lse = vec![T::ZERO; b * n * h];
    if b * n * hd > 0 {
        out.par_chunks_mut(n * hd)
            .zip(lse.par_chunks_mut(n * h))
            .enumerate()
            .for_each(|(bi, (out_b, lse_b))| {
                out_b
                    .par_chunks_mut(QUERY_BLOCK * hd)
                    .zip(lse_b.par_chunks_mut(QUERY_BLOCK * h))
                    .enumerate()
                    .for_each(|(block, (out_rows, lse_rows))| {
                        let q0 = block * QUERY_BLOCK;
                        let rows = out_rows.len() / hd;
                        let mut scores = vec![T::ZERO; rows * KEY_BLOCK];
                        let mut acc = vec![T::ZERO; rows * d];
                        let mut max = vec![T::NEG_INFINITY; rows];
                        let mut sum = vec![T::ZERO; rows];
                        for hi in 0..h {
                            let base = (bi * h + hi) * n * d;
                            let qh = &qs[base + q0 * d..base + (q0 + rows) * d];
                            let (kh, vh) = (&ks[base..base + n * d], &vs[base..base + n * d]);
                            acc.fill(T::ZERO);
                            max.fill(T::NEG_INFINITY);
                            sum.fill(T::ZERO);
                            for k0 in (0..n).step_by(KEY_BLOCK) {
                                let cols = KEY_BLOCK.min(n - k0);
                                let s = &mut scores[..rows * cols];
                                // s = scale · Q_i K_jᵀ (gemm scales its sums as they are
                                // stored: the bits of a separate pass, without the pass)
                                gemm(
                                    [rows, cols, d],
                                    s,
                                    [1, cols],
                                    false,
                                    qh,
                                    [1, d],
                                    &kh[k0 * d..],
                                    [d, 1],
                                    scale,
                                    gemm::Parallelism::None,
                                );
                                vectorized(
                                    #[inline(always)]
                                    || online_softmax(s, &mut max, &mut sum, &mut acc),
                                );
                                // acc += P V_j
                                gemm(
                                    [rows, d, cols],
                                    &mut acc,
                                    [1, d],
                                    true,
                                    s,
                                    [1, cols],
                                    &vh[k0 * d..],
                                    [1, d],
                                    T::ONE,
                                    gemm::Parallelism::None,
                                );
                            }
                            for r in 0..rows {
                                let inv = T::ONE / sum[r];
                                let dst = &mut out_rows[r * hd + hi * d..r * hd + (hi + 1) * d];
                                for (o, a) in dst.iter_mut().zip(&acc[r * d..(r + 1) * d]) {
                                    *o = *a * inv;
                                }
                                lse_rows[r * h + hi] = max[r] + sum[r].ln();
                            }
                        }
                    });
            });
    }
    (tensor(out, [b, n, hd]), tensor(lse, [b, n, h]))
}

/// One key block of the online softmax: each row of the scaled scores `s` (`rows × cols`)
/// becomes exp(s − m) with m its running maximum; the row's running sum and its accumulator row
/// (`rows × d`) are rescaled to the new maximum. Two passes per row: the maximum, then the
/// exponentials and their sum.
#[inline(always)]
fn online_softmax<T: Real>(s: &mut [T], max: &mut [T], sum: &mut [T], acc: &mut [T]) {
    let rows = max.len();
    let (cols, d) = (s.len() / rows, acc.len() / rows);
    for r in 0..rows {
        let row = &mut s[r * cols..(r + 1) * cols];
        let m = simd::max(row, max[r]);
        // exp(−∞) = 0 on the first block.
        let correction = (max[r] - m).exp();
        let block_sum = simd::map_sum(
            row,
            #[inline(always)]
            |x| (x - m).exp_fast(),
        );
        for a in &mut acc[r * d..(r + 1) * d] {
            *a = *a * correction;
        }
        sum[r] = sum[r] * correction + block_sum;
        max[r] = m;
    }
}

/// P = exp(s − lse) in place, for the `rows × cols` scaled scores s of rows with log-sum-exp
/// `lse_at(row)`.
#[inline(always)]
fn probabilities<T: Real>(s: &mut [T], cols: usize, lse_at: impl Fn(usize) -> T) {
    for (r, row) in s.chunks_exact_mut(cols).enumerate() {
        let lse = lse_at(r);
        for x in row.iter_mut() {
            *x = (*x - lse).exp_fast();
        }
    }
}

/// dS = P ∘ (dP − delta) in place in dp, for `rows × cols` blocks, delta one value per row.
#[inline(always)]
fn score_gradient<T: Real>(dp: &mut [T], p: &[T], delta: &[T]) {
    let cols = dp.len() / delta.len();
    for ((dr, pr), &delta) in dp
        .chunks_exact_mut(cols)
        .zip(p.chunks_exact(cols))
        .zip(delta)
    {
        for (g, &p) in dr.iter_mut().zip(pr) {
            *g = p * (*g - delta);
        }
    }
}

/// (dq, dk, dv) `[B, H, T, D]`; a task per (batch, head) owns its three `[T, D]` slices.
fn backward<T: Real>(
    [q, k, v, out, lse, grad_out]: [&FlexTensor; 6],
    scale: f64,
) -> (FlexTensor, FlexTensor, FlexTensor) {
    let [b, h, n, d] = dims4(q);
    let [q, k, v, out, lse, grad_out] =
        [q, k, v, out, lse, grad_out].map(FlexTensor::to_contiguous);
    let (qs, ks, vs) = (T::view(&q), T::view(&k), T::view(&v));
    let (os, dos, ls) = (T::view(&out), T::view(&grad_out), T::view(&lse));
    let hd = h * d;
    let scale = T::of(scale);
    let mut dq = vec![T::ZERO; b * h * n * d];
    let mut dk = vec![T::ZERO; b * h * n * d];
    let mut dv = vec![T::ZERO; b * h * n * d];
    if b * h * n * d > 0 {
        dq.par_chunks_mut(n * d)
            .zip(dk.par_chunks_mut(n * d))
            .zip(dv.par_chunks_mut(n * d))
            .enumerate()
            .for_each(|(task, ((dqh, dkh), dvh))| {
                let (bi, hi) = (task / h, task % h);
                let base = task * n * d;
                let (qh, kh, vh) = (
                    &qs[base..base + n * d],
                    &ks[base..base + n * d],
                    &vs[base..base + n * d],
                );
                // Row t of this head in [B, T, H·D]: offset + t·hd.
                let offset = bi * n * hd + hi * d;
                let (oh, doh) = (&os[offset..], &dos[offset..]);
                let lse_at = |t: usize| ls[(bi * n + t) * h + hi];
                // rowsum(dO ∘ O)
                let delta: Vec<T> = vectorized(
                    #[inline(always)]
                    || {
                        (0..n)
                            .map(|t| simd::dot(&doh[t * hd..t * hd + d], &oh[t * hd..t * hd + d]))
                            .collect()
                    },
                );
                let mut p = vec![T::ZERO; BACKWARD_BLOCK * BACKWARD_BLOCK];
                let mut dp = vec![T::ZERO; BACKWARD_BLOCK * BACKWARD_BLOCK];
                for k0 in (0..n).step_by(BACKWARD_BLOCK) {
                    let cols = BACKWARD_BLOCK.min(n - k0);
                    for q0 in (0..n).step_by(BACKWARD_BLOCK) {
                        let rows = BACKWARD_BLOCK.min(n - q0);
                        let (p, dp) = (&mut p[..rows * cols], &mut dp[..rows * cols]);
                        let qi = &qh[q0 * d..];
                        // P = exp(scale · Q_i K_jᵀ − lse), gemm doing the scaling
                        gemm(
                            [rows, cols, d],
                            p,
                            [1, cols],
                            false,
                            qi,
                            [1, d],
                            &kh[k0 * d..],
                            [d, 1],
                            scale,
                            gemm::Parallelism::None,
                        );
                        vectorized(
                            #[inline(always)]
                            || probabilities(p, cols, |r| lse_at(q0 + r)),
                        );
                        // dV_j += Pᵀ dO_i
                        gemm(
                            [cols, d, rows],
                            &mut dvh[k0 * d..],
                            [1, d],
                            true,
                            p,
                            [cols, 1],
                            &doh[q0 * hd..],
                            [1, hd],
                            T::ONE,
                            gemm::Parallelism::None,
                        );
                        // dP = dO_i V_jᵀ, then dS = P ∘ (dP − delta)
                        gemm(
                            [rows, cols, d],
                            dp,
                            [1, cols],
                            false,
                            &doh[q0 * hd..],
                            [1, hd],
                            &vh[k0 * d..],
                            [d, 1],
                            T::ONE,
                            gemm::Parallelism::None,
                        );
                        vectorized(
                            #[inline(always)]
                            || score_gradient(dp, p, &delta[q0..q0 + rows]),
                        );
                        // dQ_i += scale · dS K_j; dK_j += scale · dSᵀ Q_i
                        gemm(
                            [rows, d, cols],
                            &mut dqh[q0 * d..],
                            [1, d],
                            true,
                            dp,
                            [1, cols],
                            &kh[k0 * d..],
                            [1, d],
                            scale,
                            gemm::Parallelism::None,
                        );
                        gemm(
                            [cols, d, rows],
                            &mut dkh[k0 * d..],
                            [1, d],
                            true,
                            dp,
                            [cols, 1],
                            qi,
                            [1, d],
                            scale,
                            gemm::Parallelism::None,
                        );
                    }
                }
            });
    }
    let shape = [b, h, n, d];
    (tensor(dq, shape), tensor(dk, shape), tensor(dv, shape))
}

#[cfg(test)]
mod tests {
    use super::exp_f32;

    #[test]
    fn fast_exp_is_within_a_few_ulp_of_exp_where_softmax_uses_it() {
        let mut worst: f64 = 0.0;
        for i in 0..=200_000 {
            // Softmax feeds it scores minus their row maximum: [−87, 0], and a little above 0.
            let x = -87.0 + 87.5 * i as f32 / 200_000.0;
            let exact = (x as f64).exp();
            let rel = ((exp_f32(x) as f64 - exact) / exact).abs();
            worst = worst.max(rel);
        }
        eprintln!("worst relative error {worst:e}");
        assert!(worst < 3.0 * f32::EPSILON as f64, "{worst:e}");
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(-88.0), 0.0);
        assert_eq!(exp_f32(89.0), f32::INFINITY);
        assert!(exp_f32(f32::NAN).is_nan());
    }
}
