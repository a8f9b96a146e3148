"""GPT-OSS: MoE MLP on every layer (top-k-then-softmax router), attention with learned sinks.

``mlp.router`` returns ``(logits, top-k weights, indices)``: logits ``x W^T + b``, top-k of
the logits, softmax over the k chosen. ``mlp`` returns ``(hidden, router scores)``; its first
element is what the MLP adds to the residual stream. The attention has a learned sink logit per
head (a parameter, no activation), no output gate: ``attn_pattern`` (eager) is the probability
of each key with the sink's share left out, so rows sum to less than 1. The experts are fused
3-D parameters with a clamped SwiGLU inside: no GLU site is exposed.
"""

from probe.families.base import PRE_NORM_TAPS, Family, router_taps
from probe.families.layouts import TopKSoftmax


def rule(config) -> TopKSoftmax:
    return TopKSoftmax()


FAMILY = Family(
    name="gpt_oss",
    model_types=("gpt_oss",),
    layers=("model.layers",),
    taps={
        **PRE_NORM_TAPS,
        **router_taps("mlp.router", rule),
    },
    mlp_act=None,
    moe="mlp.router",
    description="GPT-OSS: top-k softmax router on every layer, attention sinks, no gate",
)
