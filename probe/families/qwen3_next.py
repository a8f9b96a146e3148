"""Qwen3-Next and Qwen3.5 text models: gated attention, Gated-DeltaNet, GLU and MoE MLPs.

Full-attention layers: ``q_proj`` emits, per head, ``[query | gate]`` (2 x d_head); the model
computes ``attn_out * sigmoid(gate)`` before ``o_proj``. The gate sites read (and write) that
half.

Gated-DeltaNet layers (``linear_attn``): the write strength ``beta = sigmoid(b)`` and the log
decay ``g = -exp(A_log) * softplus(a + dt_bias)`` per value head come from ``in_proj_ba``
(Qwen3-Next: one fused projection laid out per key-head group, ``[b of its r value heads | a of
its r value heads]``) or from ``in_proj_b`` / ``in_proj_a`` (Qwen3.5). The output gate ``z`` and
the recurrence output are the two inputs of the gated norm ``norm(out, z) = rms(out) *
silu(z)``, which the model calls with both flattened to ``(B*T*H_v, d_v)``.

MoE layers (``mlp`` is a sparse MoE block): the router ``mlp.gate`` returns ``(logits, top-k
weights, indices)``; the shared expert's output is scaled by ``sigmoid(shared_expert_gate(x))``.
A site whose module a layer lacks is refused for that layer, naming the layers that have it.
"""

from probe.families.base import GLU_TAPS, PRE_NORM_TAPS, Family, Tap, router_taps
from probe.families.layouts import (
    DeltaDecay,
    GroupedSlice,
    PerHead,
    SoftmaxTopK,
    Tokens,
)


class FusedBA(GroupedSlice):
    """Qwen3-Next ``in_proj_ba``: per key-head group ``[b (r) | a (r)]``, r = H_v / H_k."""

    def __init__(self, part: int) -> None:
        self.part = part  # 0: b, 1: a

    heads = "n_v_heads"

    def spec(self, ctx):
        g = ctx.dims.n_k_heads
        r = ctx.dims.n_v_heads // g
        return g, 2 * r, self.part * r, r, 0


def _rule(config):
    return SoftmaxTopK(norm=bool(getattr(config, "norm_topk_prob", True)))


MIXERS = {"full_attention": "self_attn", "linear_attention": "linear_attn"}
_MIXER_OUT = Tap(("self_attn", "linear_attn"), "output")

#: Sites every family of this file shares: residual stream, attention gate, GLU, MoE, and the
#: two inputs of the gated norm of a Gated-DeltaNet layer.
_SHARED = {
    **PRE_NORM_TAPS,
    "attn_out": _MIXER_OUT,
    "resid_mid": Tap(
        "post_attention_layernorm", "input", write_via=_MIXER_OUT, write_base=Tap("", "input")
    ),
    "attn_gate_logit": Tap("self_attn.q_proj", "output", layout="gate"),
    "attn_gate": Tap("self_attn.q_proj", "output", layout="gate", transform="sigmoid"),
    **GLU_TAPS,
    "delta_gate_pre": Tap(
        "linear_attn.norm",
        "input",
        position=1,
        arg="gate",
        layout=Tokens("n_v_heads", "d_v", heads="n_v_heads"),
    ),
    "delta_gate": Tap(
        "linear_attn.norm",
        "input",
        position=1,
        arg="gate",
        layout=Tokens("n_v_heads", "d_v", heads="n_v_heads"),
        transform="silu",
    ),
    "delta_out": Tap(
        "linear_attn.norm", "input", layout=Tokens("n_v_heads", "d_v", heads="n_v_heads")
    ),
    **router_taps("mlp.gate", _rule),
    "shared_gate": Tap("mlp.shared_expert_gate", "output", layout=Tokens(), transform="sigmoid"),
}

FAMILY = Family(
    name="qwen3_next",
    model_types=("qwen3_next",),
    layers=("model.layers",),
    taps={
        **_SHARED,
        "delta_beta": Tap(
            "linear_attn.in_proj_ba", "output", layout=FusedBA(0), transform="sigmoid"
        ),
        "delta_decay": Tap(
            "linear_attn.in_proj_ba", "output", layout=FusedBA(1), transform=DeltaDecay()
        ),
    },
    mixers=MIXERS,
    moe="mlp.gate",
    description="Qwen3-Next: gated attention, Gated-DeltaNet (fused projections), GLU / MoE MLPs",
)


QWEN3_5 = Family(
    name="qwen3_5",
    model_types=("qwen3_5_text", "qwen3_5_moe_text"),
    layers=("model.layers", "model.language_model.layers"),
    embed=("model.embed_tokens", "model.language_model.embed_tokens"),
    final_norm=("model.norm", "model.language_model.norm"),
    taps={
        **_SHARED,
        "delta_beta": Tap(
            "linear_attn.in_proj_b", "output", layout=PerHead("n_v_heads"), transform="sigmoid"
        ),
        "delta_decay": Tap(
            "linear_attn.in_proj_a", "output", layout=PerHead("n_v_heads"), transform=DeltaDecay()
        ),
    },
    mixers=MIXERS,
    moe="mlp.gate",
    description="Qwen3.5 (dense and MoE): gated attention, Gated-DeltaNet, GLU / MoE MLPs",
)

FAMILIES = (FAMILY, QWEN3_5)
