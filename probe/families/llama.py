"""Llama, Mistral, Qwen2 and Qwen3: pre-norm decoder, SwiGLU MLP, no attention gate."""

from probe.families.base import GLU_TAPS, PRE_NORM_TAPS, Family

FAMILY = Family(
    name="llama",
    model_types=("llama", "mistral", "qwen2", "qwen3"),
    layers=("model.layers",),
    taps={**PRE_NORM_TAPS, **GLU_TAPS},
    refuse={"mlp_bias": (False,)},
    description="Llama / Mistral / Qwen2 / Qwen3: SwiGLU MLP, ungated attention",
)
