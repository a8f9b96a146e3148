"""Mixtral: ungated attention and a sparse MoE MLP on every layer.

``mlp.gate`` returns ``(logits, top-k weights, indices)``: softmax over all experts (in
float32), top-k of the probabilities, always renormalised, and the weights stay in float32
(they are not cast back to the logits' dtype). There is no shared expert, and the experts are
fused 3-D parameters (no GLU site is exposed). Router jitter noise applies in training only.
"""

from probe.families.base import PRE_NORM_TAPS, Family, router_taps
from probe.families.layouts import SoftmaxTopK


def rule(config) -> SoftmaxTopK:
    return SoftmaxTopK(norm=True, cast=False)


FAMILY = Family(
    name="mixtral",
    model_types=("mixtral",),
    layers=("model.layers",),
    taps={
        **PRE_NORM_TAPS,
        **router_taps("mlp.gate", rule),
    },
    mlp_act=None,
    moe="mlp.gate",
    description="Mixtral: softmax top-k router on every layer, ungated attention",
)
