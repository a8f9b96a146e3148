"""LFM2 and LFM2-MoE (Liquid): gated short-convolution layers and ungated attention layers.

Convolution layers (``conv``): ``in_proj`` emits ``[B | C | x]`` (three d_model chunks) and the
layer computes ``out_proj(C * conv(B * x))``, a depthwise causal convolution between two linear
gates, as in LFM3: ``conv_gate`` is ``B``, ``conv_out_gate`` is ``C``, both read from and
written into ``in_proj``'s output. Attention layers (``self_attn``) have no output gate; their
output projection is ``out_proj``. There are no sandwich norms: a layer adds its token mixer's
output to the residual stream, and ``resid_mid`` is the input of ``ffn_norm``.

The MLP ``feed_forward`` is a SwiGLU with ``w1`` (gate), ``w3`` (up), ``w2`` (down) and
``silu`` applied as a function. On LFM2-MoE the layers from ``num_dense_layers`` on have a
sparse MoE block instead, whose router ``feed_forward.gate`` is called with the block's
``expert_bias`` and returns ``(logits, top-k weights, indices)``: ``sigmoid(logits)`` per
expert, experts chosen by top-k of the scores plus ``expert_bias`` (when ``use_expert_bias``),
the chosen scores over their sum plus 1e-6 (when ``norm_topk_prob``), times
``routed_scaling_factor``.
"""

from typing import Any

from probe.families.base import Family, Tap
from probe.families.layouts import Router, SigmoidTopK
from probe.families.lfm3 import Chunk


class Lfm2MoeRouter(Router):
    """The router of an LFM2-MoE block: its rule reads the block's ``expert_bias``."""

    def rule(self, ctx):
        block, cfg = ctx.layer.feed_forward, ctx.config
        bias = block.expert_bias if getattr(cfg, "use_expert_bias", False) else None
        return SigmoidTopK(
            bias,
            float(cfg.routed_scaling_factor),
            eps=1e-6,
            norm=bool(getattr(cfg, "norm_topk_prob", True)),
        )


_MIXER_OUT = Tap(("self_attn", "conv"), "output")

TAPS = {
    "resid_pre": Tap("", "input"),
    "resid_mid": Tap("ffn_norm", "input", write_via=_MIXER_OUT, write_base=Tap("", "input")),
    "resid_post": Tap("", "output"),
    "attn_out": _MIXER_OUT,
    "mlp_out": Tap("feed_forward", "output"),
    "head_out": Tap("self_attn.out_proj", "input", layout="heads"),
    "attn_pattern": Tap(
        "self_attn", "output", index=1, layout="pattern", writable=False, needs="eager attention"
    ),
    "mlp_gate_pre": Tap("feed_forward.w1", "output"),
    "mlp_gate": Tap("feed_forward.w1", "output", transform="silu"),
    "mlp_up": Tap("feed_forward.w3", "output"),
    "mlp_hidden": Tap("feed_forward.w2", "input"),
    "conv_gate": Tap("conv.in_proj", "output", layout=Chunk(0, 3)),
    "conv_out_gate": Tap("conv.in_proj", "output", layout=Chunk(1, 3)),
}

_COMMON: dict[str, Any] = dict(  # the Family fields FAMILY and MOE share
    layers=("model.layers",),
    final_norm=("model.embedding_norm",),
    norms=("operator_norm", "ffn_norm"),
    mlp_act=None,
    attn_input="operator_norm",
    mlp_input="ffn_norm",
    mixers={"full_attention": "self_attn", "conv": "conv"},
)

FAMILY = Family(
    name="lfm2",
    model_types=("lfm2",),
    taps=TAPS,
    description="LFM2: gated short convolutions, ungated attention, SwiGLU MLP",
    **_COMMON,
)


def _router(part: str) -> Tap:
    return Tap("feed_forward.gate", "output", layout=Lfm2MoeRouter(part, None))


MOE = Family(
    name="lfm2_moe",
    model_types=("lfm2_moe",),
    taps={
        **TAPS,
        "router_logit": _router("logit"),
        "router_prob": _router("prob"),
        "router_weight": _router("weight"),
    },
    moe="feed_forward.gate",
    description="LFM2-MoE: gated short convolutions, sigmoid-routed MoE with expert bias",
    **_COMMON,
)

FAMILIES = (FAMILY, MOE)
