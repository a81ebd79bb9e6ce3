//! Fused row-wise ops for `Flex`, forward and backward: LayerNorm-modulation, the gated
//! residual and QK-norm with RoPE, one pass over each row where the composites broadcast `[B, T, 1]` and
//! `[B, 1, D]` operands through burn-flex's strided element path, and their autodiff chains
//! reduce every broadcast again. Each task
//! writes its own rows and partial sums are added in a fixed order, so results do not depend
//! on the thread count.

use burn::backend::flex::FlexTensor;
use burn::tensor::TensorMetadata;
use rayon::prelude::*;

use super::simd::{dot, sum, sum_by, vectorized};
use super::{tensor, Real};

/// Rows per parallel task (FLUX rows are 64–3072 wide).
const ROWS: usize = 64;

fn dims<const N: usize>(x: &FlexTensor) -> [usize; N] {
    let shape = x.shape();
    assert_eq!(shape.num_dims(), N, "fused norm: rank {N} expected");
    std::array::from_fn(|i| shape[i])
}

/// The row's mean and `1 / √(mean((x − μ)²) + eps)`, two passes as the composite.
#[inline(always)]
fn layer_norm_stats<T: Real>(row: &[T], eps: T) -> (T, T) {
    let n = T::of(row.len() as f64);
    let mean = sum(row) / n;
    let squares = sum_by(row.len(), |i| {
        let c = row[i] - mean;
        c * c
    });
    (mean, T::ONE / (squares / n + eps).sqrt())
}

/// `1 / √(mean(x²) + eps)`.
#[inline(always)]
fn rms_rstd<T: Real>(row: &[T], eps: T) -> T {
    T::ONE / (dot(row, row) / T::of(row.len() as f64) + eps).sqrt()
}

/// Fills `out`, rows of width `d`, in tasks of [`ROWS`] rows: `row_op(row index, its slice)`.
fn par_rows<T: Real>(out: &mut [T], d: usize, row_op: impl Fn(usize, &mut [T]) + Sync) {
    if d == 0 {
        return;
    }
    out.par_chunks_mut(ROWS * d)
        .enumerate()
        .for_each(|(chunk, rows)| {
            vectorized(
                #[inline(always)]
                || {
                    for (i, o) in rows.chunks_mut(d).enumerate() {
                        row_op(chunk * ROWS + i, o);
                    }
                },
            )
        });
}

/// The row of a `[B, S, D]` modulation (S = 1 or T) that row `row` of x `[B, T, D]` uses.
fn modulation_row(row: usize, t: usize, s: usize) -> usize {
    (row / t) * s + if s == 1 { 0 } else { row % t }
}

/// Checks that a modulation (shift, scale, gate) is `[B, 1 or T, D]` for x `[B, T, D]` and
/// returns its middle dim.
fn modulation_rows(x: [usize; 3], m: [usize; 3]) -> usize {
    assert!(
        m[0] == x[0] && m[2] == x[2] && (m[1] == 1 || m[1] == x[1]),
        "fused row op: modulation {m:?} does not fit x {x:?}"
    );
    m[1]
}

/// `(1 + scale) · LN(x) + shift`. x `[B, T, D]`, shift and scale `[B, 1 or T, D]` → `[B, T, D]`.
pub(super) fn modulate<T: Real>([x, shift, scale]: [&FlexTensor; 3], eps: f64) -> FlexTensor {
    let [b, t, d] = dims::<3>(x);
    let s = modulation_rows([b, t, d], dims::<3>(scale));
    assert_eq!(
        dims::<3>(shift),
        dims::<3>(scale),
        "fused modulate: shift vs scale"
    );
    let (x, shift, scale) = (
        x.to_contiguous(),
        shift.to_contiguous(),
        scale.to_contiguous(),
    );
    let (xs, shifts, scales) = (T::view(&x), T::view(&shift), T::view(&scale));
    let eps = T::of(eps);
    let mut out = vec![T::ZERO; b * t * d];
    par_rows(
        &mut out,
        d,
        #[inline(always)]
        |row, o| {
            let m = modulation_row(row, t, s);
            let xr = &xs[row * d..(row + 1) * d];
            let (sh, sc) = (&shifts[m * d..(m + 1) * d], &scales[m * d..(m + 1) * d]);
            let (mean, rstd) = layer_norm_stats(xr, eps);
            for j in 0..d {
                o[j] = (sc[j] + T::ONE) * ((xr[j] - mean) * rstd) + sh[j];
            }
        },
    );
    tensor(out, [b, t, d])
}

/// (dx `[B, T, D]`, dshift, dscale `[B, 1 or T, D]`) of [`modulate`]; a task per batch element
/// owns its rows of all three (composite formulas in `fused::composite::modulate_backward`).
pub(super) fn modulate_backward<T: Real>(
    [x, scale, grad_out]: [&FlexTensor; 3],
    eps: f64,
) -> (FlexTensor, FlexTensor, FlexTensor) {
    let [b, t, d] = dims::<3>(x);
    let s = modulation_rows([b, t, d], dims::<3>(scale));
    assert_eq!(dims::<3>(grad_out), [b, t, d], "fused modulate: grad vs x");
    let (x, scale, grad_out) = (
        x.to_contiguous(),
        scale.to_contiguous(),
        grad_out.to_contiguous(),
    );
    let (xs, scales, grads) = (T::view(&x), T::view(&scale), T::view(&grad_out));
    let eps = T::of(eps);
    let n = T::of(d as f64);
    let mut dx = vec![T::ZERO; b * t * d];
    let mut dshift = vec![T::ZERO; b * s * d];
    let mut dscale = vec![T::ZERO; b * s * d];
    if t * d > 0 {
        dx.par_chunks_mut(t * d)
            .zip(dshift.par_chunks_mut(s * d))
            .zip(dscale.par_chunks_mut(s * d))
            .enumerate()
            .for_each(|(bi, ((dx_b, dshift_b), dscale_b))| {
                vectorized(
                    #[inline(always)]
                    || {
                        let mut normed = vec![T::ZERO; d];
                        let mut g = vec![T::ZERO; d];
                        for ti in 0..t {
                            let row = bi * t + ti;
                            let m = if s == 1 { 0 } else { ti };
                            let xr = &xs[row * d..(row + 1) * d];
                            let gr = &grads[row * d..(row + 1) * d];
                            let sc = &scales[(bi * s + m) * d..(bi * s + m + 1) * d];
                            let (mean, rstd) = layer_norm_stats(xr, eps);
                            for j in 0..d {
                                normed[j] = (xr[j] - mean) * rstd;
                                g[j] = gr[j] * (sc[j] + T::ONE);
                            }
                            let (g_mean, gn_mean) = (sum(&g) / n, dot(&g, &normed) / n);
                            for (j, dxj) in dx_b[ti * d..(ti + 1) * d].iter_mut().enumerate() {
                                *dxj = rstd * (g[j] - g_mean - normed[j] * gn_mean);
                            }
                            let dsh = &mut dshift_b[m * d..(m + 1) * d];
                            let dsc = &mut dscale_b[m * d..(m + 1) * d];
                            for j in 0..d {
                                dsh[j] += gr[j];
                                dsc[j] += gr[j] * normed[j];
                            }
                        }
                    },
                )
            });
    }
    (
        tensor(dx, [b, t, d]),
        tensor(dshift, [b, s, d]),
        tensor(dscale, [b, s, d]),
    )
}

/// `x + gate · y`. x, y `[B, T, D]`, gate `[B, 1 or T, D]` → `[B, T, D]`.
pub(super) fn gated_residual<T: Real>([x, gate, y]: [&FlexTensor; 3]) -> FlexTensor {
    let [b, t, d] = dims::<3>(x);
    let s = modulation_rows([b, t, d], dims::<3>(gate));
    assert_eq!(dims::<3>(y), [b, t, d], "fused gated residual: y vs x");
    let (x, gate, y) = (x.to_contiguous(), gate.to_contiguous(), y.to_contiguous());
    let (xs, gates, ys) = (T::view(&x), T::view(&gate), T::view(&y));
    let mut out = vec![T::ZERO; b * t * d];
    par_rows(
        &mut out,
        d,
        #[inline(always)]
        |row, o| {
            let m = modulation_row(row, t, s);
            let (xr, yr) = (&xs[row * d..(row + 1) * d], &ys[row * d..(row + 1) * d]);
            let g = &gates[m * d..(m + 1) * d];
            for j in 0..d {
                o[j] = xr[j] + g[j] * yr[j];
            }
        },
    );
    tensor(out, [b, t, d])
}

/// (dx = dout, dgate `[B, 1 or T, D]`, dy `[B, T, D]`) of [`gated_residual`]; a task per batch
/// element owns its rows of dgate and dy.
pub(super) fn gated_residual_backward<T: Real>(
    [gate, y, grad_out]: [&FlexTensor; 3],
) -> (FlexTensor, FlexTensor, FlexTensor) {
    let [b, t, d] = dims::<3>(y);
    let s = modulation_rows([b, t, d], dims::<3>(gate));
    assert_eq!(
        dims::<3>(grad_out),
        [b, t, d],
        "fused gated residual: grad vs y"
    );
    let (gate, y, grad_out) = (
        gate.to_contiguous(),
        y.to_contiguous(),
        grad_out.to_contiguous(),
    );
    let (gates, ys, grads) = (T::view(&gate), T::view(&y), T::view(&grad_out));
    let mut dy = vec![T::ZERO; b * t * d];
    let mut dgate = vec![T::ZERO; b * s * d];
    if t * d > 0 {
        dy.par_chunks_mut(t * d)
            .zip(dgate.par_chunks_mut(s * d))
            .enumerate()
            .for_each(|(bi, (dy_b, dgate_b))| {
                vectorized(
                    #[inline(always)]
                    || {
                        for ti in 0..t {
                            let row = bi * t + ti;
                            let m = if s == 1 { 0 } else { ti };
                            let (yr, gr) =
                                (&ys[row * d..(row + 1) * d], &grads[row * d..(row + 1) * d]);
                            let g = &gates[(bi * s + m) * d..(bi * s + m + 1) * d];
                            let dyr = &mut dy_b[ti * d..(ti + 1) * d];
                            let dg = &mut dgate_b[m * d..(m + 1) * d];
                            for j in 0..d {
                                dyr[j] = gr[j] * g[j];
                                dg[j] += gr[j] * yr[j];
                            }
                        }
                    },
                )
            });
    }
    (grad_out, tensor(dgate, [b, s, d]), tensor(dy, [b, t, d]))
}

/// Checks x `[B, H, T, D]` against weight `[D]` and the tables `[B, T, D]` (D even).
fn rms_norm_rope_dims(
    x: &FlexTensor,
    weight: &FlexTensor,
    cos: &FlexTensor,
    sin: &FlexTensor,
) -> [usize; 4] {
    let [b, h, t, d] = dims::<4>(x);
    assert_eq!(dims::<1>(weight), [d], "fused QK-norm: weight vs x");
    assert!(d % 2 == 0, "fused RoPE: head dim {d} is odd");
    for table in [cos, sin] {
        assert_eq!(dims::<3>(table), [b, t, d], "fused RoPE: table vs x");
    }
    [b, h, t, d]
}

/// A `[B, T, D]` RoPE table read in place: a double block's text or image tokens are a narrowed
/// view of the joint table, whose rows are contiguous but whose batches are not.
struct Table<'a, T> {
    /// The tensor's whole buffer.
    storage: &'a [T],
    /// Where row (0, 0) starts, and the steps between batches and between tokens.
    start: usize,
    strides: [usize; 2],
}

impl<'a, T: Real> Table<'a, T> {
    /// `table` must have contiguous rows ([`rows_in_place`]).
    fn new(table: &'a FlexTensor) -> Self {
        let strides = table.layout().strides();
        Self {
            storage: T::storage(table),
            start: table.layout().start_offset(),
            strides: [strides[0] as usize, strides[1] as usize],
        }
    }

    /// The D entries for row `row` of x `[B, H, T, D]`.
    #[inline(always)]
    fn row(&self, row: usize, [h, t, d]: [usize; 3]) -> &'a [T] {
        let (b, token) = (row / (h * t), row % t);
        let at = self.start + b * self.strides[0] + token * self.strides[1];
        &self.storage[at..at + d]
    }
}

/// `table` itself when its rows are contiguous (non-negative strides, the last 1), else a
/// contiguous copy.
fn rows_in_place(table: &FlexTensor) -> FlexTensor {
    let strides = table.layout().strides();
    if strides[2] == 1 && strides[0] >= 0 && strides[1] >= 0 {
        table.clone()
    } else {
        table.to_contiguous()
    }
}

/// `rope(x · rsqrt(mean(x²) + eps) · weight)`, one pass per row: x `[B, H, T, D]`, weight `[D]`,
/// cos and sin `[B, T, D]` → `[B, H, T, D]`. The composite's order of operations
/// (`composite::rms_norm_rope`), so the same values up to the row's sum of squares.
pub(super) fn rms_norm_rope<T: Real>(
    [x, weight, cos, sin]: [&FlexTensor; 4],
    eps: f64,
) -> FlexTensor {
    let [b, h, t, d] = rms_norm_rope_dims(x, weight, cos, sin);
    let [x, weight] = [x, weight].map(FlexTensor::to_contiguous);
    let [cos, sin] = [cos, sin].map(rows_in_place);
    let (xs, w) = (T::view(&x), T::view(&weight));
    let (cs, ss) = (Table::<T>::new(&cos), Table::<T>::new(&sin));
    let eps = T::of(eps);
    let mut out = vec![T::ZERO; xs.len()];
    par_rows(
        &mut out,
        d,
        #[inline(always)]
        |row, o| {
            let xr = &xs[row * d..(row + 1) * d];
            let (c, s) = (cs.row(row, [h, t, d]), ss.row(row, [h, t, d]));
            let rstd = rms_rstd(xr, eps);
            for j in (0..d).step_by(2) {
                let even = xr[j] * rstd * w[j];
                let odd = xr[j + 1] * rstd * w[j + 1];
                o[j] = even * c[j] - odd * s[j];
                o[j + 1] = odd * c[j + 1] + even * s[j + 1];
            }
        },
    );
    tensor(out, [b, h, t, d])
}

/// (dx `[B, H, T, D]`, dweight `[D]`) of [`rms_norm_rope`]: per row, the gradient rotated back
/// by the transposed pair rotation, then RMSNorm's backward; dweight as partial sums per task of
/// [`ROWS`] rows, added in task order.
pub(super) fn rms_norm_rope_backward<T: Real>(
    [x, weight, cos, sin, grad_out]: [&FlexTensor; 5],
    eps: f64,
) -> (FlexTensor, FlexTensor) {
    let [b, h, t, d] = rms_norm_rope_dims(x, weight, cos, sin);
    assert_eq!(
        dims::<4>(grad_out),
        [b, h, t, d],
        "fused QK-norm: grad vs x"
    );
    let [x, weight, grad_out] = [x, weight, grad_out].map(FlexTensor::to_contiguous);
    let [cos, sin] = [cos, sin].map(rows_in_place);
    let (xs, w, grads) = (T::view(&x), T::view(&weight), T::view(&grad_out));
    let (cs, ss) = (Table::<T>::new(&cos), Table::<T>::new(&sin));
    let eps = T::of(eps);
    let n = T::of(d as f64);
    let mut dx = vec![T::ZERO; xs.len()];
    let mut dweight = vec![T::ZERO; d];
    if d > 0 {
        let partials: Vec<Vec<T>> = dx
            .par_chunks_mut(ROWS * d)
            .enumerate()
            .map(|(chunk, rows)| {
                vectorized(
                    #[inline(always)]
                    || {
                        let mut dw = vec![T::ZERO; d];
                        let mut gr = vec![T::ZERO; d];
                        for (i, dxr) in rows.chunks_mut(d).enumerate() {
                            let row = chunk * ROWS + i;
                            let xr = &xs[row * d..(row + 1) * d];
                            let g = &grads[row * d..(row + 1) * d];
                            let (c, s) = (cs.row(row, [h, t, d]), ss.row(row, [h, t, d]));
                            // The gradient of the normed row: RoPE by −angle.
                            for j in (0..d).step_by(2) {
                                gr[j] = g[j] * c[j] + g[j + 1] * s[j];
                                gr[j + 1] = g[j + 1] * c[j + 1] - g[j] * s[j + 1];
                            }
                            let rstd = rms_rstd(xr, eps);
                            let inner = sum_by(d, |j| gr[j] * w[j] * xr[j]) / n;
                            for j in 0..d {
                                dxr[j] = rstd * (gr[j] * w[j] - xr[j] * (rstd * rstd) * inner);
                                dw[j] += gr[j] * xr[j] * rstd;
                            }
                        }
                        dw
                    },
                )
            })
            .collect();
        for partial in partials {
            for (total, p) in dweight.iter_mut().zip(partial) {
                *total += p;
            }
        }
    }
    (tensor(dx, [b, h, t, d]), tensor(dweight, [d]))
}
