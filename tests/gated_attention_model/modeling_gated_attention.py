"""A tiny model with the "Gated Attention" paper's layout, for tests (remote code).

Each KV group's rows of ``q_proj`` are ``[queries of its r heads | gates of its r heads]``:
``r * d_head`` query rows, then ``r`` gate rows (headwise) or ``r * d_head`` (elementwise).
The attention output of each head is multiplied by ``sigmoid(gate)`` before ``o_proj``.
Everything else is transformers' own Qwen3.
"""

import torch
from torch import nn
from transformers import Qwen3ForCausalLM
from transformers.models.qwen3 import modeling_qwen3 as q3

from .configuration_gated_attention import GatedAttentionConfig


class GatedAttention(q3.Qwen3Attention):
    def __init__(self, config, layer_idx):
        super().__init__(config, layer_idx)
        self.headwise = bool(config.headwise_attn_output_gate)
        self.elementwise = bool(config.elementwise_attn_output_gate)
        n_heads = config.num_attention_heads
        extra = n_heads if self.headwise else n_heads * self.head_dim if self.elementwise else 0
        self.q_proj = nn.Linear(
            config.hidden_size, n_heads * self.head_dim + extra, bias=config.attention_bias
        )

    def forward(self, hidden_states, position_embeddings, attention_mask, cache=None, **kwargs):
        kwargs.pop("past_key_values", None)
        b, t = hidden_states.shape[:2]
        d, r = self.head_dim, self.num_key_value_groups
        q = self.q_proj(hidden_states)
        gate = None
        if self.headwise or self.elementwise:
            per_group = q.view(b, t, self.config.num_key_value_heads, -1)
            q, gate = torch.split(per_group, [r * d, r if self.headwise else r * d], dim=-1)
            gate = gate.reshape(b, t, -1, 1 if self.headwise else d)
        query = self.q_norm(q.reshape(b, t, -1, d)).transpose(1, 2)
        key = self.k_norm(self.k_proj(hidden_states).view(b, t, -1, d)).transpose(1, 2)
        value = self.v_proj(hidden_states).view(b, t, -1, d).transpose(1, 2)
        cos, sin = position_embeddings
        query, key = q3.apply_rotary_pos_emb(query, key, cos, sin)
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx)
        attend = q3.ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, q3.eager_attention_forward
        )
        out, weights = attend(
            self, query, key, value, attention_mask, scaling=self.scaling, **kwargs
        )  # (B, T, H, d)
        if gate is not None:
            out = out * torch.sigmoid(gate)
        return self.o_proj(out.reshape(b, t, -1).contiguous()), weights


class GatedAttentionForCausalLM(Qwen3ForCausalLM):
    config_class = GatedAttentionConfig

    def __init__(self, config):
        super().__init__(config)
        for i, layer in enumerate(self.model.layers):
            layer.self_attn = GatedAttention(config, i)
        self.post_init()


__all__ = ["GatedAttentionForCausalLM"]
