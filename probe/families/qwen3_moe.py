"""Qwen3-MoE: Qwen3 attention (no gate) with sparse MoE MLPs and GLU experts.

An MoE layer's ``mlp`` is a sparse block whose router ``mlp.gate`` returns ``(logits, top-k
weights, indices)``: softmax over all experts, top-k of the probabilities, renormalised when
``norm_topk_prob``. The experts are fused 3-D parameters (no per-expert modules), so the GLU
sites exist on dense layers only (``mlp_only_layers``, ``decoder_sparse_step``). There is no
shared expert.
"""

from probe.families.base import GLU_TAPS, PRE_NORM_TAPS, Family, router_taps
from probe.families.layouts import SoftmaxTopK


def rule(config) -> SoftmaxTopK:
    return SoftmaxTopK(norm=bool(getattr(config, "norm_topk_prob", False)))


FAMILY = Family(
    name="qwen3_moe",
    model_types=("qwen3_moe",),
    layers=("model.layers",),
    taps={
        **PRE_NORM_TAPS,
        **GLU_TAPS,
        **router_taps("mlp.gate", rule),
    },
    moe="mlp.gate",
    description="Qwen3-MoE: softmax top-k router, GLU experts, ungated attention",
)
