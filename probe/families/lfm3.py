"""LFM3 (Liquid): hybrid of gated short-convolution layers and attention with a headwise gate.

Attention layers (``self_attn``, full or sliding): ``g_proj`` (d_model -> n_heads, when
``use_attention_gate``) and the model computes ``attn * sigmoid(g_proj(x))`` per head before
``o_proj``: ``attn_gate`` is ``(B, T, H, 1)``, one value per head.

Convolution layers (``conv``): ``in_proj`` emits ``[B | C | x]`` (three d_model chunks) and the
layer computes ``out_proj(C * conv(B * x))``, a depthwise causal convolution between two linear
(un-activated) gates: ``conv_gate`` is ``B`` (before the convolution), ``conv_out_gate`` is
``C`` (after it), both read from and written into ``in_proj``'s output.

Every layer has sandwich norms (``post_operator_norm`` / ``post_ffn_norm``, identities when
``use_sandwich_norm`` is false) and a SwiGLU MLP ``feed_forward`` with ``w1`` (gate), ``w3``
(up) and ``w2`` (down); the MLP applies ``silu`` as a function, so ``mlp_gate`` is ``silu`` of
``w1``'s output.
"""

from probe.families.base import PRE_NORM_TAPS, Family, Tap
from probe.families.layouts import Heads, ViewLayout


class Chunk(ViewLayout):
    """Chunk ``index`` of ``count`` equal chunks of the last dim: ``(B, T, d)``."""

    def __init__(self, index: int, count: int) -> None:
        self.index, self.count = index, count

    def view(self, raw, ctx):
        width = raw.shape[-1] // self.count
        return raw[..., self.index * width : (self.index + 1) * width]


_ATTN_OUT = Tap("post_operator_norm", "output")

FAMILY = Family(
    name="lfm3",
    model_types=("lfm3",),
    layers=("model.layers",),
    final_norm=("model.embedding_norm",),
    taps={
        **PRE_NORM_TAPS,
        "attn_out": _ATTN_OUT,
        "mlp_out": Tap("post_ffn_norm", "output"),
        "resid_mid": Tap("ffn_norm", "input", write_via=_ATTN_OUT, write_base=Tap("", "input")),
        "attn_gate_logit": Tap("self_attn.g_proj", "output", layout=Heads()),
        "attn_gate": Tap("self_attn.g_proj", "output", layout=Heads(), transform="sigmoid"),
        "mlp_gate_pre": Tap("feed_forward.w1", "output"),
        "mlp_gate": Tap("feed_forward.w1", "output", transform="silu"),
        "mlp_up": Tap("feed_forward.w3", "output"),
        "mlp_hidden": Tap("feed_forward.w2", "input"),
        "conv_gate": Tap("conv.in_proj", "output", layout=Chunk(0, 3)),
        "conv_out_gate": Tap("conv.in_proj", "output", layout=Chunk(1, 3)),
    },
    norms=("operator_norm", "post_operator_norm", "ffn_norm", "post_ffn_norm"),
    mlp_act=None,
    attn_input="operator_norm",
    mlp_input="ffn_norm",
    mixers={"full_attention": "self_attn", "conv": "conv"},
    description="LFM3: gated short convolutions, headwise-gated attention, SwiGLU MLP",
)
