//! `FluxOps` under `Autodiff`: attention is one graph node on every backend, whose backward calls
//! the inner backend's `flux_attention_bwd` (a kernel, or the composite that recomputes the
//! probabilities); it stores the output and the row log-sum-exp, O(T) per row, where
//! differentiating the composite would keep the `[B, H, T, T]` softmax of every block until the
//! backward. The fused modulation,
//! gated residual and QK-norm with RoPE are one node each too, whose backward recomputes the row statistics from the
//! input: one pass, instead of the composite's chain of broadcasting nodes.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::Autodiff;
use burn::tensor::ops::FloatTensor;

use super::{composite, FluxOps};

#[derive(Debug)]
struct FusedAttentionBackward;

impl<B: FluxOps> Backward<B, 3> for FusedAttentionBackward {
    /// q, k, v as checkpoints; the forward's out and lse; the scale.
    type State = (NodeId, NodeId, NodeId, FloatTensor<B>, FloatTensor<B>, f64);

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_q, node_k, node_v] = ops.parents;
        let grad_out = grads.consume::<B>(&ops.node);
        let (q, k, v, out, lse, scale) = ops.state;
        let q: FloatTensor<B> = checkpointer.retrieve_node_output(q);
        let k: FloatTensor<B> = checkpointer.retrieve_node_output(k);
        let v: FloatTensor<B> = checkpointer.retrieve_node_output(v);
        let (dq, dk, dv) = B::flux_attention_bwd(q, k, v, out, lse, grad_out, scale);
        for (node, grad) in [(node_q, dq), (node_k, dk), (node_v, dv)] {
            if let Some(node) = node {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

#[derive(Debug)]
struct FusedModulateBackward;

impl<B: FluxOps> Backward<B, 3> for FusedModulateBackward {
    /// x and scale as checkpoints; the LayerNorm eps.
    type State = (NodeId, NodeId, f64);

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_shift, node_scale] = ops.parents;
        let grad_out = grads.consume::<B>(&ops.node);
        let (x, scale, eps) = ops.state;
        let x: FloatTensor<B> = checkpointer.retrieve_node_output(x);
        let scale: FloatTensor<B> = checkpointer.retrieve_node_output(scale);
        let (dx, dshift, dscale) = B::flux_modulate_bwd(x, scale, grad_out, eps);
        for (node, grad) in [(node_x, dx), (node_shift, dshift), (node_scale, dscale)] {
            if let Some(node) = node {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

#[derive(Debug)]
struct FusedGatedResidualBackward;

impl<B: FluxOps> Backward<B, 3> for FusedGatedResidualBackward {
    /// gate and y as checkpoints.
    type State = (NodeId, NodeId);

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_gate, node_y] = ops.parents;
        let grad_out = grads.consume::<B>(&ops.node);
        let (gate, y) = ops.state;
        let gate: FloatTensor<B> = checkpointer.retrieve_node_output(gate);
        let y: FloatTensor<B> = checkpointer.retrieve_node_output(y);
        let (dx, dgate, dy) = B::flux_gated_residual_bwd(gate, y, grad_out);
        for (node, grad) in [(node_x, dx), (node_gate, dgate), (node_y, dy)] {
            if let Some(node) = node {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

#[derive(Debug)]
struct FusedRmsNormRopeBackward;

impl<B: FluxOps> Backward<B, 2> for FusedRmsNormRopeBackward {
    /// x and weight as checkpoints; the rotation tables (constants); the eps.
    type State = (NodeId, NodeId, FloatTensor<B>, FloatTensor<B>, f64);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_weight] = ops.parents;
        let grad_out = grads.consume::<B>(&ops.node);
        let (x, weight, cos, sin, eps) = ops.state;
        let x: FloatTensor<B> = checkpointer.retrieve_node_output(x);
        let weight: FloatTensor<B> = checkpointer.retrieve_node_output(weight);
        let (dx, dweight) = B::flux_rms_norm_rope_bwd(x, weight, cos, sin, grad_out, eps);
        for (node, grad) in [(node_x, dx), (node_weight, dweight)] {
            if let Some(node) = node {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

#[derive(Debug)]
struct QkvPartBackward;

impl<B: FluxOps> Backward<B, 1> for QkvPartBackward {
    /// The part (0: q, 1: k, 2: v).
    type State = usize;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_qkv] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        if let Some(node) = node_qkv {
            grads.register::<B>(node.id, B::flux_qkv_part_bwd(grad, ops.state));
        }
    }
}

#[derive(Debug)]
struct FusedGeluBackward;

impl<B: FluxOps> Backward<B, 1> for FusedGeluBackward {
    /// x as a checkpoint.
    type State = NodeId;

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x] = ops.parents;
        let grad_out = grads.consume::<B>(&ops.node);
        let x: FloatTensor<B> = checkpointer.retrieve_node_output(ops.state);
        if let Some(node) = node_x {
            grads.register::<B>(node.id, B::flux_gelu_tanh_bwd(x, grad_out));
        }
    }
}

#[derive(Debug)]
struct FusedLinearBackward;

/// x (kept when the weight is tracked) and the weight (kept when x is tracked), as checkpoints:
/// a frozen layer keeps nothing of its input.
type LinearState = (Option<NodeId>, Option<NodeId>);

/// The gradients of a fused linear's x, weight and bias (`None`: not tracked, or no bias).
fn linear_backward<B: FluxOps>(
    [node_x, node_weight, node_bias]: [Option<NodeId>; 3],
    (x, weight): LinearState,
    grad: FloatTensor<B>,
    grads: &mut Gradients,
    checkpointer: &mut Checkpointer,
) {
    if let (Some(node), Some(weight)) = (node_x, weight) {
        let weight: FloatTensor<B> = checkpointer.retrieve_node_output(weight);
        grads.register::<B>(node, B::flux_linear_x_bwd(weight, grad.clone()));
    }
    if let (Some(node), Some(x)) = (node_weight, x) {
        let x: FloatTensor<B> = checkpointer.retrieve_node_output(x);
        grads.register::<B>(node, B::flux_linear_weight_bwd(x, grad.clone()));
    }
    if let Some(node) = node_bias {
        grads.register::<B>(node, B::linear_bias_backward(grad));
    }
}

/// With a bias: parents x, weight, bias.
impl<B: FluxOps> Backward<B, 3> for FusedLinearBackward {
    type State = LinearState;

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let grad = grads.consume::<B>(&ops.node);
        let ids = ops.parents.map(|p| p.map(|node| node.id));
        linear_backward::<B>(ids, ops.state, grad, grads, checkpointer);
    }
}

/// Without a bias: parents x, weight.
impl<B: FluxOps> Backward<B, 2> for FusedLinearBackward {
    type State = LinearState;

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let grad = grads.consume::<B>(&ops.node);
        let [x, weight] = ops.parents.map(|p| p.map(|node| node.id));
        linear_backward::<B>([x, weight, None], ops.state, grad, grads, checkpointer);
    }
}

/// Records a fused linear (`N` = 3 with a bias, 2 without) prepared as `kind`.
fn fused_linear_node<B: FluxOps, C: CheckpointStrategy, const N: usize>(
    kind: OpsKind<FusedLinearBackward, B, LinearState, C, N>,
    x: FloatTensor<Autodiff<B, C>>,
    weight: FloatTensor<Autodiff<B, C>>,
    bias: Option<FloatTensor<B>>,
) -> FloatTensor<Autodiff<B, C>>
where
    FusedLinearBackward: Backward<B, N, State = LinearState>,
{
    match kind {
        OpsKind::Tracked(mut prep) => {
            let state = (
                weight.is_tracked().then(|| prep.checkpoint(&x)),
                x.is_tracked().then(|| prep.checkpoint(&weight)),
            );
            prep.finish(state, B::flux_linear(x.primitive, weight.primitive, bias))
        }
        OpsKind::UnTracked(prep) => {
            prep.finish(B::flux_linear(x.primitive, weight.primitive, bias))
        }
    }
}

impl<B: FluxOps, C: CheckpointStrategy> FluxOps for Autodiff<B, C> {
    fn flux_linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        match bias {
            Some(bias) => fused_linear_node(
                FusedLinearBackward
                    .prepare::<C>([x.node.clone(), weight.node.clone(), bias.node.clone()])
                    .compute_bound()
                    .stateful(),
                x,
                weight,
                Some(bias.primitive),
            ),
            None => fused_linear_node(
                FusedLinearBackward
                    .prepare::<C>([x.node.clone(), weight.node.clone()])
                    .compute_bound()
                    .stateful(),
                x,
                weight,
                None,
            ),
        }
    }

    const FUSED_ATTENTION: bool = B::FUSED_ATTENTION;
    const FUSED_NORMS: bool = B::FUSED_NORMS;

    fn flux_qkv_part(qkv: FloatTensor<Self>, heads: usize, part: usize) -> FloatTensor<Self> {
        // A copy: one node for any inner backend, whose backward scatters the gradient back.
        match QkvPartBackward
            .prepare::<C>([qkv.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                prep.finish(part, B::flux_qkv_part(qkv.primitive, heads, part))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::flux_qkv_part(qkv.primitive, heads, part)),
        }
    }

    fn flux_gelu_tanh(x: FloatTensor<Self>) -> FloatTensor<Self> {
        // One node for any inner backend: its backward (a kernel or the composite formula)
        // needs only x, where differentiating the composite keeps three intermediates.
        match FusedGeluBackward
            .prepare::<C>([x.node.clone()])
            // The backward recomputes σ(2u) from x: one pass, and no second tensor kept.
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let state = prep.checkpoint(&x);
                prep.finish(state, B::flux_gelu_tanh(x.primitive))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::flux_gelu_tanh(x.primitive)),
        }
    }

    fn flux_modulate(
        x: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        if !B::FUSED_NORMS {
            return composite::modulate::<Self>(x, shift, scale, eps);
        }
        match FusedModulateBackward
            .prepare::<C>([x.node.clone(), shift.node.clone(), scale.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let state = (prep.checkpoint(&x), prep.checkpoint(&scale), eps);
                let out = B::flux_modulate(x.primitive, shift.primitive, scale.primitive, eps);
                prep.finish(state, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::flux_modulate(
                x.primitive,
                shift.primitive,
                scale.primitive,
                eps,
            )),
        }
    }

    fn flux_gated_residual(
        x: FloatTensor<Self>,
        gate: FloatTensor<Self>,
        y: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        if !B::FUSED_NORMS {
            return composite::gated_residual::<Self>(x, gate, y);
        }
        match FusedGatedResidualBackward
            .prepare::<C>([x.node.clone(), gate.node.clone(), y.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let state = (prep.checkpoint(&gate), prep.checkpoint(&y));
                prep.finish(
                    state,
                    B::flux_gated_residual(x.primitive, gate.primitive, y.primitive),
                )
            }
            OpsKind::UnTracked(prep) => prep.finish(B::flux_gated_residual(
                x.primitive,
                gate.primitive,
                y.primitive,
            )),
        }
    }

    fn flux_rms_norm_rope(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        // The tables are positions' functions, never trained; tracked ones (not built by the
        // model) keep the differentiated composite so that nothing is dropped.
        if !B::FUSED_NORMS || cos.is_tracked() || sin.is_tracked() {
            return composite::rms_norm_rope::<Self>(x, weight, cos, sin, eps);
        }
        let (cos, sin) = (cos.primitive, sin.primitive);
        match FusedRmsNormRopeBackward
            .prepare::<C>([x.node.clone(), weight.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let (x_id, weight_id) = (prep.checkpoint(&x), prep.checkpoint(&weight));
                let out = B::flux_rms_norm_rope(
                    x.primitive,
                    weight.primitive,
                    cos.clone(),
                    sin.clone(),
                    eps,
                );
                prep.finish((x_id, weight_id, cos, sin, eps), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::flux_rms_norm_rope(
                x.primitive,
                weight.primitive,
                cos,
                sin,
                eps,
            )),
        }
    }

    fn flux_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f64,
    ) -> FloatTensor<Self> {
        match FusedAttentionBackward
            .prepare::<C>([q.node.clone(), k.node.clone(), v.node.clone()])
            // Keep (out, lse): recomputing the O(T²) forward in the backward is not cheaper.
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let (q_id, k_id, v_id) = (
                    prep.checkpoint(&q),
                    prep.checkpoint(&k),
                    prep.checkpoint(&v),
                );
                let (out, lse) =
                    B::flux_attention_fwd(q.primitive, k.primitive, v.primitive, scale);
                prep.finish((q_id, k_id, v_id, out.clone(), lse, scale), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::flux_attention(
                q.primitive,
                k.primitive,
                v.primitive,
                scale,
            )),
        }
    }
}
