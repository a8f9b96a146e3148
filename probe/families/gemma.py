"""Gemma 1, 2 and 3 (text): GeGLU MLP, no attention gate.

Gemma 1 is a plain pre-norm decoder. Gemma 2 and 3 add a norm after attention and after the
MLP (sandwich norms): what attention adds to the residual stream is the output of
``post_attention_layernorm``, what the MLP adds is the output of ``post_feedforward_layernorm``,
and ``resid_mid`` is the input of ``pre_feedforward_layernorm``.
"""

from probe.families.base import GLU_TAPS, PRE_NORM_TAPS, Family, Tap

GEMMA1 = Family(
    name="gemma",
    model_types=("gemma",),
    layers=("model.layers",),
    taps={**PRE_NORM_TAPS, **GLU_TAPS},
    description="Gemma 1: GeGLU MLP, ungated attention",
)

GEMMA2 = Family(
    name="gemma",
    model_types=("gemma2", "gemma3_text"),
    layers=("model.layers",),
    taps={
        **PRE_NORM_TAPS,
        "attn_out": Tap("post_attention_layernorm", "output"),
        "mlp_out": Tap("post_feedforward_layernorm", "output"),
        "resid_mid": Tap(
            "pre_feedforward_layernorm",
            "input",
            write_via=Tap("post_attention_layernorm", "output"),
            write_base=Tap("", "input"),
        ),
        **GLU_TAPS,
    },
    norms=(
        "input_layernorm",
        "post_attention_layernorm",
        "pre_feedforward_layernorm",
        "post_feedforward_layernorm",
    ),
    mlp_input="pre_feedforward_layernorm",
    description="Gemma 2 / 3 text: GeGLU MLP with sandwich norms, ungated attention",
)

FAMILIES = (GEMMA1, GEMMA2)
