//! Attention on a backend without a kernel of its own: the code path of CUDA and wgpu, run here
//! on burn's NdArray CPU backend. Under Autodiff it is one node that saves the output and the
//! row log-sum-exp and whose backward (the composite) recomputes the probabilities. Checked
//! against burn's differentiated attention, against finite differences in f64, and for what it
//! keeps, against the peak memory of the differentiated composite.

use burn::backend::{Autodiff, NdArray};
use burn::prelude::*;
use burn::tensor::DType;
use premier_mmdit::fused::{composite, flux_attention};
use premier_mmdit::FluxOps;

mod common;
use common::{
    assert_attention_gradients_match_finite_differences, attention_loss_and_grads, attention_qkv,
    attention_through, attention_weights, prim, rel, tensor, values,
};

type Cpu = NdArray<f32>;
type AB = Autodiff<Cpu>;

fn qkv(shape: [usize; 4], dtype: DType, seed: u64) -> [Tensor<Cpu, 4>; 3] {
    attention_qkv(shape, dtype, seed)
}

fn weights(shape: [usize; 4], dtype: DType) -> Tensor<Cpu, 3> {
    attention_weights(shape, dtype)
}

/// The gradients of Σ attention(q, k, v) ∘ w on `AB` ([`attention_loss_and_grads`]).
fn loss_and_grads(
    inputs: [Tensor<Cpu, 4>; 3],
    w: Tensor<Cpu, 3>,
    tracked: [bool; 3],
    node: bool,
) -> [Option<Vec<f64>>; 3] {
    attention_loss_and_grads::<AB>(inputs, w, tracked, node).1
}

#[test]
fn the_node_is_the_path_without_a_kernel() {
    assert!(!<Cpu as FluxOps>::FUSED_ATTENTION);
    assert!(!<AB as FluxOps>::FUSED_ATTENTION);
}

/// In f64 the node and burn's differentiated attention agree to rounding. In f32 each is
/// compared with the f64 gradients of the same inputs: the node must be within 1e-5. (burn's own
/// f32 gradients of q and k are off by up to 2e-4 on these shapes: its softmax backward
/// subtracts nearly equal sums; the node's P ∘ (dP − rowsum(dO ∘ O)) does not.)
#[test]
fn gradients_match_burns_differentiated_attention() {
    for shape in [[1, 1, 1, 1], [3, 2, 7, 5], [1, 3, 65, 16], [2, 1, 130, 3]] {
        let exact_inputs = qkv(shape, DType::F64, 4);
        let exact_w = weights(shape, DType::F64);
        let f32_inputs = exact_inputs.clone().map(|x| x.cast(DType::F32));
        let f32_w = exact_w.clone().cast(DType::F32);
        for tracked in [
            [true; 3],
            [false, false, true],
            [true, false, false],
            [false, true, false],
        ] {
            let exact = loss_and_grads(exact_inputs.clone(), exact_w.clone(), tracked, false);
            let exact_node = loss_and_grads(exact_inputs.clone(), exact_w.clone(), tracked, true);
            let node = loss_and_grads(f32_inputs.clone(), f32_w.clone(), tracked, true);
            let burn = loss_and_grads(f32_inputs.clone(), f32_w.clone(), tracked, false);
            for i in 0..3 {
                assert_eq!(node[i].is_some(), tracked[i], "{shape:?} input {i}");
                assert_eq!(exact_node[i].is_some(), tracked[i], "{shape:?} input {i}");
                let (Some(e), Some(en), Some(n), Some(b)) =
                    (&exact[i], &exact_node[i], &node[i], &burn[i])
                else {
                    continue;
                };
                let r64 = rel(en, e);
                assert!(
                    r64 <= 1e-12,
                    "{shape:?} {tracked:?} input {i}: f64 rel {r64:e}"
                );
                let (rn, rb) = (rel(n, e), rel(b, e));
                eprintln!("{shape:?} {tracked:?} input {i}: f32 node {rn:.2e}, burn {rb:.2e}");
                assert!(
                    rn <= 1e-5,
                    "{shape:?} {tracked:?} input {i}: f32 node {rn:e}, burn's {rb:e}"
                );
            }
        }
    }
}

#[test]
fn gradients_match_finite_differences_in_f64() {
    for shape in [[2, 3, 7, 5], [1, 2, 65, 8]] {
        let inputs = qkv(shape, DType::F64, 5);
        let w = weights(shape, DType::F64);
        let grads = loss_and_grads(inputs.clone(), w.clone(), [true; 3], true);
        assert_attention_gradients_match_finite_differences(&inputs, &grads, |x| {
            let out = flux_attention(x[0].clone(), x[1].clone(), x[2].clone());
            values((out * w.clone()).sum())[0]
        });
    }
}

#[test]
fn untracked_inputs_run_the_plain_attention_bit_for_bit() {
    let [q, k, v] = qkv([2, 2, 65, 8], DType::F32, 6);
    let plain = values(flux_attention(q.clone(), k.clone(), v.clone()));
    let lifted = flux_attention::<AB>(
        Tensor::from_inner(q),
        Tensor::from_inner(k),
        Tensor::from_inner(v),
    );
    assert_eq!(values(lifted.inner()), plain);
}

/// One memory measurement at a time: each resets the process-wide peak.
static MEASURING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Rise of the peak resident memory (`VmHWM`, reset through /proc/self/clear_refs) while `f`
/// runs; `None` where /proc does not allow it.
fn peak_rise(f: impl FnOnce()) -> Option<u64> {
    let _one_at_a_time = MEASURING.lock().unwrap_or_else(|p| p.into_inner());
    let peak = || -> Option<u64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
    };
    std::fs::write("/proc/self/clear_refs", "5").ok()?;
    let start = peak()?;
    f();
    Some(peak()? - start)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

/// Rise of the peak resident memory over a forward and backward through `calls` attentions in a
/// chain, each on `[1, 4, 1024, 16]` (one T × T score tensor: 16 MiB in f32).
fn peak_rise_of_a_chain(calls: usize, node: bool) -> Option<u64> {
    let shape = [1, 4, 1024, 16];
    let [q, k, v] = qkv(shape, DType::F32, 11).map(|x| Tensor::<AB, 4>::from_inner(x));
    let q = q.require_grad();
    let (k, v) = (k.require_grad(), v.require_grad());
    peak_rise(|| {
        let mut x = q.clone();
        for _ in 0..calls {
            let out = attention_through(x, k.clone(), v.clone(), node);
            x = out.reshape(shape) * 0.5;
        }
        let grads = x.sum().backward();
        assert!(q.grad(&grads).is_some());
    })
}

/// Kept memory does not grow with the number of attentions: the differentiated composite keeps
/// two score tensors per call until the backward (8 × 32 MiB here), the node none.
#[test]
fn the_node_keeps_no_scores_for_the_backward() {
    let calls = 8;
    let (Some(node), Some(composite)) = (
        peak_rise_of_a_chain(calls, true),
        peak_rise_of_a_chain(calls, false),
    ) else {
        eprintln!("/proc/self/clear_refs not writable here: memory not checked");
        return;
    };
    eprintln!(
        "peak rise over {calls} attentions: node {:.0} MiB, differentiated composite {:.0} MiB",
        mib(node),
        mib(composite)
    );
    // Scores kept for every call by the composite: 2 × 16 MiB each.
    let kept = (calls as u64) * 2 * (16 << 20);
    assert!(
        composite >= node + kept / 2,
        "node {node}, composite {composite}"
    );
    assert!(node < kept / 2, "node {node}");
}

/// The composite in chunks of query rows (as the defaults run it past
/// `ATTENTION_CHUNK_SCORES` per tensor) gives the results of one chunk: out, lse and
/// (dq, dk, dv), for chunks of 1, 7, 64 and 129 of 130 rows.
#[test]
fn chunks_of_query_rows_give_the_results_of_one_chunk() {
    let shape = [2, 3, 130, 8];
    let scale = 0.3;
    for (dtype, tol) in [(DType::F32, 1e-6), (DType::F64, 1e-14)] {
        let [q, k, v] = qkv(shape, dtype, 12);
        let g = weights(shape, dtype);
        let run = |rows: usize| {
            let (out, lse) = composite::attention_with_lse_in_chunks::<Cpu>(
                prim(q.clone()),
                prim(k.clone()),
                prim(v.clone()),
                scale,
                rows,
            );
            let (dq, dk, dv) = composite::attention_backward_in_chunks::<Cpu>(
                prim(q.clone()),
                prim(k.clone()),
                prim(v.clone()),
                out.clone(),
                lse.clone(),
                prim(g.clone()),
                scale,
                rows,
            );
            [
                values(tensor::<Cpu, 3>(out)),
                values(tensor::<Cpu, 3>(lse)),
                values(tensor::<Cpu, 4>(dq)),
                values(tensor::<Cpu, 4>(dk)),
                values(tensor::<Cpu, 4>(dv)),
            ]
        };
        let whole = run(130);
        for rows in [1, 7, 64, 129] {
            for (i, (a, b)) in run(rows).iter().zip(&whole).enumerate() {
                let r = rel(a, b);
                assert!(r <= tol, "{dtype:?} rows {rows}, output {i}: rel {r:e}");
            }
        }
    }
    // FLUX.1-dev: one chunk per sample at 512² (1536 tokens), eight at 1024² (4608).
    assert_eq!(composite::attention_chunk_rows(1, 24, 1536), 1536);
    assert_eq!(composite::attention_chunk_rows(1, 24, 4608), 606);
    assert_eq!(4608usize.div_ceil(606), 8);
    assert_eq!(composite::attention_chunk_rows(4, 24, 1 << 20), 1);
}

/// Rise of the peak resident memory over the composite forward and backward of one attention on
/// `[1, 4, 2048, 16]` (a whole T × T tensor: 64 MiB in f32) in chunks of `rows` query rows.
fn peak_rise_in_chunks(rows: usize) -> Option<u64> {
    let shape = [1, 4, 2048, 16];
    let [q, k, v] = qkv(shape, DType::F32, 13);
    let g = weights(shape, DType::F32);
    peak_rise(|| {
        let (out, lse) = composite::attention_with_lse_in_chunks::<Cpu>(
            prim(q.clone()),
            prim(k.clone()),
            prim(v.clone()),
            0.25,
            rows,
        );
        let _ = composite::attention_backward_in_chunks::<Cpu>(
            prim(q),
            prim(k),
            prim(v),
            out,
            lse,
            prim(g),
            0.25,
            rows,
        );
    })
}

/// A chunk holds its rows' scores only: 64 rows of 2048 hold 2 MiB per score tensor where the
/// whole attention holds 64 MiB (and its backward three such tensors).
#[test]
fn chunks_bound_the_scores_held_at_once() {
    let (Some(chunked), Some(whole)) = (peak_rise_in_chunks(64), peak_rise_in_chunks(2048)) else {
        eprintln!("/proc/self/clear_refs not writable here: memory not checked");
        return;
    };
    eprintln!(
        "peak rise of one attention: chunks of 64 rows {:.0} MiB, one chunk {:.0} MiB",
        mib(chunked),
        mib(whole)
    );
    assert!(whole >= 2 * (64 << 20), "whole {whole}");
    assert!(chunked < whole / 4, "chunked {chunked}, whole {whole}");
}
