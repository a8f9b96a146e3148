"""OLMoE: ungated attention (with q/k norms) and a sparse MoE MLP on every layer.

``mlp.gate`` returns ``(logits, top-k weights, indices)``: softmax over all experts, top-k of
the probabilities, renormalised when ``norm_topk_prob``. There is no shared expert, and the
experts are fused 3-D parameters (no GLU site is exposed).
"""

from probe.families.base import PRE_NORM_TAPS, Family, router_taps
from probe.families.layouts import SoftmaxTopK


def rule(config) -> SoftmaxTopK:
    return SoftmaxTopK(norm=bool(getattr(config, "norm_topk_prob", False)))


FAMILY = Family(
    name="olmoe",
    model_types=("olmoe",),
    layers=("model.layers",),
    taps={
        **PRE_NORM_TAPS,
        **router_taps("mlp.gate", rule),
    },
    mlp_act=None,
    moe="mlp.gate",
    description="OLMoE: softmax top-k router on every layer, ungated attention",
)
