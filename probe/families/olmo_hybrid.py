"""OLMo Hybrid: Gated-DeltaNet layers and post-norm attention layers, SwiGLU MLP on both.

Gated-DeltaNet layers (``linear_attn``, pre-norm): separate projections per quantity. The write
strength is ``beta = sigmoid(b_proj(x))``, times 2 when ``linear_allow_neg_eigval`` (range
[0, 2]); the log decay is ``g = -exp(A_log) * softplus(a_proj(x) + dt_bias)`` per value head;
the output gate ``z = g_proj(x)`` per value-head dimension enters the gated norm
``o_norm(out, z) = rms(out) * silu(z)``, which the model calls with both flattened to
``(B*T*H_v, d_v)``.

Attention layers (``self_attn``, OLMo-2 post-norm): no input norm; what attention adds to the
residual stream is ``post_attention_layernorm``'s output and what the MLP adds is
``post_feedforward_layernorm``'s. On DeltaNet layers ``post_attention_layernorm`` is the
pre-MLP norm instead, so the taps name modules that exist on one layer type only first.
``resid_mid`` is not declared: the sum between the blocks is the input of ``mlp`` on attention
layers and of ``post_attention_layernorm`` on DeltaNet layers, and a tap cannot pick a module by
layer type when both layers have both modules.
"""

import torch

from probe.errors import GatescopeError
from probe.families.base import GLU_TAPS, Family, Tap
from probe.families.layouts import DeltaDecay, Heads, PerHead, Tokens, Transform


class Beta(Transform):
    """``sigmoid(b)``, times 2 where the config allows negative eigenvalues; written back as
    ``logit(v / scale)``."""

    name = "delta_beta"

    @staticmethod
    def _scale(config) -> float:
        return 2.0 if getattr(config, "linear_allow_neg_eigval", False) else 1.0

    def range(self, config):
        return (0.0, self._scale(config))

    def forward(self, x, ctx):
        beta = x.sigmoid()
        scale = self._scale(ctx.config)
        return beta * scale if scale != 1.0 else beta

    def inverse(self, v, ctx, site):
        scale = self._scale(ctx.config)
        if bool(((v < 0) | (v > scale)).any()):
            raise GatescopeError(
                f"site '{site}': this model's write strength takes values in [0, {scale:g}]"
            )
        return torch.logit(v / scale)


_V_HEADS = Tokens("n_v_heads", "d_v", heads="n_v_heads")

FAMILY = Family(
    name="olmo_hybrid",
    model_types=("olmo_hybrid",),
    layers=("model.layers",),
    taps={
        "resid_pre": Tap("", "input"),
        "resid_post": Tap("", "output"),
        "attn_out": Tap(("linear_attn", "post_attention_layernorm"), "output"),
        "mlp_out": Tap(("post_feedforward_layernorm", "mlp"), "output"),
        "head_out": Tap("self_attn.o_proj", "input", layout="heads"),
        "attn_pattern": Tap(
            "self_attn",
            "output",
            index=1,
            layout="pattern",
            writable=False,
            needs="eager attention",
        ),
        **GLU_TAPS,
        "delta_beta": Tap(
            "linear_attn.b_proj", "output", layout=PerHead("n_v_heads"), transform=Beta()
        ),
        "delta_decay": Tap(
            "linear_attn.a_proj", "output", layout=PerHead("n_v_heads"), transform=DeltaDecay()
        ),
        "delta_gate_pre": Tap("linear_attn.g_proj", "output", layout=Heads("n_v_heads")),
        "delta_gate": Tap(
            "linear_attn.g_proj", "output", layout=Heads("n_v_heads"), transform="silu"
        ),
        "delta_out": Tap("linear_attn.o_norm", "input", layout=_V_HEADS),
    },
    norms=("input_layernorm", "post_attention_layernorm", "post_feedforward_layernorm"),
    mixers={"full_attention": "self_attn", "linear_attention": "linear_attn"},
    description="OLMo Hybrid: Gated-DeltaNet and post-norm attention layers, SwiGLU MLP",
)
