"""AFMoE (Arcee): attention with an output gate module of its own, sigmoid-routed MoE MLPs.

Attention: ``self_attn.gate_proj`` (d_model -> n_heads * d_head) and the model computes
``attn * sigmoid(gate_proj(x))`` before ``o_proj``; the gate sites are that module's output,
split into heads. Decoder layers carry sandwich norms (a norm after attention and after the
MLP): what attention adds to the residual stream is ``post_attention_layernorm``'s output,
what the MLP adds is ``post_mlp_layernorm``'s, and ``resid_mid`` is ``pre_mlp_layernorm``'s
input. The first ``num_dense_layers`` layers have a dense GLU MLP; the others an MoE block
whose router ``mlp.router`` returns ``(logits, top-k weights, indices)``: ``sigmoid(logits)``
per expert, experts chosen by top-k of ``sigmoid(logits) + expert_bias`` (the block's
``expert_bias`` buffer-like parameter), weights the chosen sigmoids renormalised (``+1e-20``)
and multiplied by ``route_scale``. The shared experts are always on (no gate).
"""

from probe.families.base import GLU_TAPS, PRE_NORM_TAPS, Family, Tap
from probe.families.layouts import Heads, Router, SigmoidTopK


class AfmoeRouter(Router):
    """The router of an AFMoE block: its rule (:class:`SigmoidTopK`, eps ``1e-20``) reads the
    block's ``expert_bias``."""

    def rule(self, ctx):
        block = ctx.layer.mlp
        return SigmoidTopK(block.expert_bias, float(ctx.config.route_scale))


def _router(part: str) -> Tap:
    return Tap("mlp.router", "output", layout=AfmoeRouter(part, None))


_ATTN_OUT = Tap("post_attention_layernorm", "output")

FAMILY = Family(
    name="afmoe",
    model_types=("afmoe",),
    layers=("model.layers",),
    taps={
        **PRE_NORM_TAPS,
        "attn_out": _ATTN_OUT,
        "mlp_out": Tap("post_mlp_layernorm", "output"),
        "resid_mid": Tap(
            "pre_mlp_layernorm", "input", write_via=_ATTN_OUT, write_base=Tap("", "input")
        ),
        "attn_gate_logit": Tap("self_attn.gate_proj", "output", layout=Heads()),
        "attn_gate": Tap("self_attn.gate_proj", "output", layout=Heads(), transform="sigmoid"),
        **GLU_TAPS,
        "router_logit": _router("logit"),
        "router_prob": _router("prob"),
        "router_weight": _router("weight"),
    },
    norms=(
        "input_layernorm",
        "post_attention_layernorm",
        "pre_mlp_layernorm",
        "post_mlp_layernorm",
    ),
    mlp_input="pre_mlp_layernorm",
    moe="mlp.router",
    description="AFMoE: attention gate module (gate_proj), sigmoid-routed MoE, sandwich norms",
)
