"""Llama, Mistral, Qwen2 and Qwen3: pre-norm decoder, SwiGLU MLP, no attention gate."""

from probe.families.base import GLU_TAPS, PRE_NORM_TAPS, Family

FAMILY = Family(
    name="llama",
    model_types=("llama", "mistral", "qwen2", "qwen3"),
    layers=("model.layers",),
    taps={**PRE_NORM_TAPS, **GLU_TAPS},
    refuse={"mlp_bias": (False,)},
    # the "Gated Attention" paper's checkpoints are qwen3 configs with gate flags: never llama
    match=lambda cfg: (
        not (
            getattr(cfg, "headwise_attn_output_gate", False)
            or getattr(cfg, "elementwise_attn_output_gate", False)
        )
    ),
    description="Llama / Mistral / Qwen2 / Qwen3: SwiGLU MLP, ungated attention",
)
