//! `FluxOps` under `Autodiff`: a fused attention is one graph node whose backward calls the inner
//! backend's `flux_attention_bwd`; it stores the output and the row log-sum-exp, O(T) per row,
//! where differentiating the composite keeps the `[B, H, T, T]` softmax.

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

impl<B: FluxOps, C: CheckpointStrategy> FluxOps for Autodiff<B, C> {
    const FUSED_ATTENTION: bool = B::FUSED_ATTENTION;

    fn flux_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f64,
    ) -> FloatTensor<Self> {
        if !B::FUSED_ATTENTION {
            // No native kernel: differentiate the composite, as before FluxOps.
            return composite::attention::<Self>(q, k, v, scale);
        }
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
