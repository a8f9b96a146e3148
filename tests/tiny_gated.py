"""Tiny random models of the gated families (paper layout, MoE routers, hybrids), from configs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import transformers as tf
from tiny import _common, tiny_tokenizer

GATED_ATTENTION_CODE = Path(__file__).parent / "gated_attention_model"

#: MoE sizes: 4 experts, top-2.
MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)


def _perturb_norms(model):
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.add_(0.1 * torch.randn_like(p))
    return model


def _build(cls, cfg, seed: int, attn: str = "eager"):
    torch.manual_seed(seed)
    cfg._attn_implementation = attn
    return _perturb_norms(cls(cfg).eval())


def save_gated_attention(path, mode: str = "headwise", seed: int = 0, **extra) -> Path:
    """A model directory with the "Gated Attention" paper's layout and its own modelling code
    (``auto_map``): loadable only with ``trust_remote_code=True``. ``mode``: headwise or
    elementwise; ``extra`` overrides config fields (e.g. a contradicting flag)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for f in GATED_ATTENTION_CODE.glob("*.py"):
        shutil.copy(f, path / f.name)
    cfg = dict(
        _common(num_attention_heads=4, num_key_value_heads=2),
        model_type="qwen3",
        architectures=["GatedAttentionForCausalLM"],
        auto_map={
            "AutoConfig": "configuration_gated_attention.GatedAttentionConfig",
            "AutoModelForCausalLM": "modeling_gated_attention.GatedAttentionForCausalLM",
        },
        headwise_attn_output_gate=mode == "headwise",
        elementwise_attn_output_gate=mode == "elementwise",
    )
    (path / "config.json").write_text(json.dumps(cfg))
    config = tf.AutoConfig.from_pretrained(path, trust_remote_code=True)
    torch.manual_seed(seed)
    model = _perturb_norms(tf.AutoModelForCausalLM.from_config(config, trust_remote_code=True))
    model.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    if extra:  # e.g. a gate flag that contradicts the saved q_proj's width
        saved = json.loads((path / "config.json").read_text())
        (path / "config.json").write_text(json.dumps({**saved, **extra}))
    return path
