"""Qwen3-Next and Qwen3.5 text models: elementwise attention output gate and GLU MLPs.

``q_proj`` emits, per head, ``[query | gate]`` (2 x d_head); the model computes
``attn_out * sigmoid(gate)`` before ``o_proj``. The gate sites read (and write) that half.
Hybrid checkpoints mix gated-DeltaNet layers (``linear_attn``) with full-attention layers
(``self_attn``), and MoE MLPs with dense ones: a site whose module a layer lacks is refused
for that layer, naming the layers that have it. ``attn_out`` reads either token mixer.
"""

from probe.families.base import GLU_TAPS, PRE_NORM_TAPS, Family, Tap

FAMILY = Family(
    name="qwen3_next",
    model_types=("qwen3_next", "qwen3_5_text", "qwen3_5_moe_text"),
    layers=("model.layers", "model.language_model.layers"),
    embed=("model.embed_tokens", "model.language_model.embed_tokens"),
    final_norm=("model.norm", "model.language_model.norm"),
    taps={
        **PRE_NORM_TAPS,
        "attn_out": Tap(("self_attn", "linear_attn"), "output"),
        "resid_mid": Tap(
            "post_attention_layernorm",
            "input",
            write_via=Tap(("self_attn", "linear_attn"), "output"),
            write_base=Tap("", "input"),
        ),
        "attn_gate_logit": Tap("self_attn.q_proj", "output", layout="gate"),
        "attn_gate": Tap("self_attn.q_proj", "output", layout="gate", transform="sigmoid"),
        **GLU_TAPS,
    },
    description="Qwen3-Next / Qwen3.5: elementwise sigmoid attention output gate, SwiGLU MLP",
)
