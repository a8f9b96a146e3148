"""The "Gated Attention" paper's checkpoints: Qwen3 with an attention output gate in ``q_proj``.

These are ``model_type`` ``qwen3`` configs with ``headwise_attn_output_gate`` or
``elementwise_attn_output_gate`` true, run by the checkpoint's own modelling code (load with
``trust_remote_code``). ``q_proj`` is laid out per KV group: each group's rows are
``[queries of its r heads | gates of its r heads]`` with r = n_heads / n_kv_heads, i.e.
``r * d_head`` query rows then ``r`` gate rows (headwise: one gate per head) or ``r * d_head``
(elementwise: one per head dimension). The model multiplies each head's attention output by
``sigmoid(gate)`` before ``o_proj``. ``attn_gate`` is ``(B, T, H, 1)`` headwise and
``(B, T, H, d_head)`` elementwise.
"""

from probe.errors import GatescopeError
from probe.families.base import GLU_TAPS, PRE_NORM_TAPS, Family, Tap
from probe.families.layouts import GroupedSlice

FLAGS = ("headwise_attn_output_gate", "elementwise_attn_output_gate")


def _flags(config) -> tuple[bool, bool]:
    return tuple(bool(getattr(config, f, False)) for f in FLAGS)  # pyright: ignore[reportReturnType]


def gate_width(config) -> int:
    """Gate values per head: 1 (headwise) or d_head (elementwise)."""
    headwise, _ = _flags(config)
    d_head = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 1 if headwise else int(d_head)


class PaperGate(GroupedSlice):
    """The gate rows of each KV group of ``q_proj``: ``[queries (r * d) | gates (r * w)]``."""

    heads = "n_heads"

    def spec(self, ctx):
        g, h, d = ctx.dims.n_kv_heads, ctx.dims.n_heads, ctx.dims.d_head
        r, w = h // g, gate_width(ctx.config)
        return g, r * d + r * w, r * d, r, w


def check(config, hf) -> None:
    """Refuse a config whose gate flags contradict the width of the loaded ``q_proj``."""
    headwise, elementwise = _flags(config)
    if headwise and elementwise:
        raise GatescopeError(
            "config sets both headwise_attn_output_gate and elementwise_attn_output_gate; "
            "the paper's layout has one gate type: set one of them to false"
        )
    h = config.num_attention_heads
    d = getattr(config, "head_dim", None) or config.hidden_size // h
    want = h * d + h * gate_width(config)
    for i, layer in enumerate(hf.model.layers):
        got = layer.self_attn.q_proj.out_features
        if got != want:
            flag = FLAGS[0] if headwise else FLAGS[1]
            raise GatescopeError(
                f"layer {i}: self_attn.q_proj emits {got} values per token, but {flag}=true "
                f"with {h} heads of {d} needs {want} ({h}x{d} queries + {want - h * d} gates): "
                "the config's gate flags contradict the checkpoint; fix the flags in config.json"
            )


FAMILY = Family(
    name="gated_attention",
    model_types=("qwen3",),
    layers=("model.layers",),
    taps={
        **PRE_NORM_TAPS,
        **GLU_TAPS,
        "attn_gate_logit": Tap("self_attn.q_proj", "output", layout=PaperGate()),
        "attn_gate": Tap("self_attn.q_proj", "output", layout=PaperGate(), transform="sigmoid"),
    },
    match=lambda cfg: any(_flags(cfg)),
    check=check,
    remote_code=True,
    description="Gated Attention paper (Qwen3 + headwise / elementwise gate rows in q_proj)",
)
