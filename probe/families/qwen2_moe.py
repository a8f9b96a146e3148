"""Qwen2-MoE: ungated attention, sparse MoE MLPs with a softmax router and a gated shared expert.

An MoE layer's ``mlp`` is a sparse block (``mlp_only_layers``, ``decoder_sparse_step``): its
router ``mlp.gate`` returns ``(logits, top-k weights, indices)`` (softmax over all experts,
top-k of the probabilities, renormalised when ``norm_topk_prob``), and the shared expert's
output is scaled by ``sigmoid(shared_expert_gate(x))``, which the block computes with the tokens
flattened to ``(B*T, d)``: the same gates as Qwen3-Next's MoE layers. The routed experts are
fused 3-D parameters, so the GLU sites exist on dense layers only.
"""

from probe.families.base import GLU_TAPS, PRE_NORM_TAPS, Family, Tap, router_taps
from probe.families.layouts import SoftmaxTopK, Tokens


def rule(config) -> SoftmaxTopK:
    return SoftmaxTopK(norm=bool(getattr(config, "norm_topk_prob", False)))


FAMILY = Family(
    name="qwen2_moe",
    model_types=("qwen2_moe",),
    layers=("model.layers",),
    taps={
        **PRE_NORM_TAPS,
        **GLU_TAPS,
        **router_taps("mlp.gate", rule),
        "shared_gate": Tap(
            "mlp.shared_expert_gate", "output", layout=Tokens(), transform="sigmoid"
        ),
    },
    moe="mlp.gate",
    description="Qwen2-MoE: softmax top-k router, sigmoid-gated shared expert, ungated attention",
)
