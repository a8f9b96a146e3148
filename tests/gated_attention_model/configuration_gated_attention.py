"""Configuration of a tiny test model with the "Gated Attention" paper's layout (model_type
``qwen3`` plus the paper's two gate flags)."""

from transformers import Qwen3Config


class GatedAttentionConfig(Qwen3Config):
    """Qwen3 with an attention output gate read from extra ``q_proj`` rows.

    ``headwise_attn_output_gate``: one gate per head; ``elementwise_attn_output_gate``: one
    per head dimension. At most one is true.
    """

    model_type = "qwen3"
    headwise_attn_output_gate: bool = False
    elementwise_attn_output_gate: bool = False


__all__ = ["GatedAttentionConfig"]
