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


def _randomise(model, *names: str):
    """Random values for parameters and buffers the model initialises to zero (router weights,
    biases, expert biases), so that routing is not decided by ties."""
    with torch.no_grad():
        for n, p in [*model.named_parameters(), *model.named_buffers()]:
            if any(n.endswith(name) for name in names):
                p.copy_(torch.randn_like(p))
    return model


def qwen3_moe_config(**extra):
    """3 layers: layer 0 dense (``mlp_only_layers``), layers 1-2 MoE (4 experts, top-2)."""
    kw = _common(num_hidden_layers=3, mlp_only_layers=[0], norm_topk_prob=True, **MOE)
    kw.update(extra)
    return tf.Qwen3MoeConfig(**kw)


def gpt_oss_config(**extra):
    kw = _common(
        num_local_experts=4,
        num_experts_per_tok=2,
        layer_types=["sliding_attention", "full_attention"],
        sliding_window=8,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    kw.update(extra)
    return tf.GptOssConfig(**kw)


def afmoe_config(**extra):
    """3 layers: layer 0 dense (``num_dense_layers``), layers 1-2 MoE with a shared expert;
    sigmoid routing with a route scale != 1."""
    kw = _common(
        num_hidden_layers=3,
        num_dense_layers=1,
        num_shared_experts=1,
        route_scale=2.5,
        global_attn_every_n_layers=2,
        sliding_window=8,
        **MOE,
    )
    kw.update(extra)
    return tf.AfmoeConfig(**kw)


def qwen2_moe_config(**extra):
    """3 layers: layer 0 dense, layers 1-2 MoE (4 experts, top-2) with a gated shared expert."""
    kw = _common(
        num_hidden_layers=3,
        mlp_only_layers=[0],
        norm_topk_prob=False,
        shared_expert_intermediate_size=48,
        **MOE,
    )
    kw.update(extra)
    return tf.Qwen2MoeConfig(**kw)


def olmoe_config(**extra):
    """2 layers, MoE on both (4 experts, top-2, renormalised)."""
    kw = _common(
        num_experts=4, num_experts_per_tok=2, norm_topk_prob=True, pad_token_id=0, eos_token_id=1
    )
    kw.update(extra)
    return tf.OlmoeConfig(**kw)


def mixtral_config(**extra):
    """2 layers, MoE on both (4 experts, top-2)."""
    kw = _common(num_local_experts=4, num_experts_per_tok=2)
    kw.update(extra)
    return tf.MixtralConfig(**kw)


def lfm2_config(**extra):
    """4 layers: conv, attention, conv, attention (no attention gate)."""
    kw = _common(
        num_hidden_layers=4,
        layer_types=["conv", "full_attention", "conv", "full_attention"],
        conv_L_cache=3,
        block_auto_adjust_ff_dim=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=1,
    )
    kw.update(extra)
    return tf.Lfm2Config(**kw)


def lfm2_moe_config(**extra):
    """3 layers: conv (dense MLP), attention (MoE), conv (MoE); sigmoid router with expert bias
    and a routed scaling factor != 1."""
    kw = _common(
        num_hidden_layers=3,
        layer_types=["conv", "full_attention", "conv"],
        conv_L_cache=3,
        num_dense_layers=1,
        routed_scaling_factor=1.5,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=1,
        **MOE,
    )
    kw.update(extra)
    return tf.Lfm2MoeConfig(**kw)


def tiny_gated_hf(name: str, seed: int = 0, config=None):
    """A random tiny model of family ``name`` (routers and expert biases randomised)."""
    builders = {
        "qwen3_moe": (qwen3_moe_config, tf.Qwen3MoeForCausalLM, ("gate.weight",)),
        "qwen2_moe": (qwen2_moe_config, tf.Qwen2MoeForCausalLM, ("gate.weight",)),
        "olmoe": (olmoe_config, tf.OlmoeForCausalLM, ("gate.weight",)),
        "mixtral": (mixtral_config, tf.MixtralForCausalLM, ("gate.weight",)),
        "gpt_oss": (gpt_oss_config, tf.GptOssForCausalLM, ("router.weight", "router.bias")),
        "afmoe": (afmoe_config, tf.AfmoeForCausalLM, ("router.gate.weight", "expert_bias")),
        "lfm2": (lfm2_config, tf.Lfm2ForCausalLM, ()),
        "lfm2_moe": (lfm2_moe_config, tf.Lfm2MoeForCausalLM, ("gate.weight", "expert_bias")),
    }
    make, cls, zeroed = builders[name]
    model = _build(cls, config or make(), seed)
    torch.manual_seed(seed + 1)
    return _randomise(model, *zeroed)


def lfm3_config(**extra):
    """4 layers: conv, sliding attention, full attention, conv (headwise gate, sandwich norms)."""
    kw = _common(
        num_hidden_layers=4,
        layer_types=["conv", "sliding_attention", "full_attention", "conv"],
        sliding_window=8,
        conv_L_cache=3,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=1,
    )
    kw.update(extra)
    return tf.Lfm3Config(**kw)


def tiny_lfm3(seed: int = 0, config=None):
    return _build(tf.Lfm3ForCausalLM, config or lfm3_config(), seed)


def olmo_hybrid_config(**extra):
    """4 layers: DeltaNet, DeltaNet, DeltaNet, attention (2 key heads, 4 value heads)."""
    kw = _common(
        num_hidden_layers=4,
        layer_types=["linear_attention"] * 3 + ["full_attention"],
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        linear_key_head_dim=8,
        linear_value_head_dim=8,
        linear_conv_kernel_dim=4,
        pad_token_id=0,
        eos_token_id=1,
    )
    kw.update(extra)
    return tf.OlmoHybridConfig(**kw)


def tiny_olmo_hybrid(seed: int = 0, config=None):
    return _build(tf.OlmoHybridForCausalLM, config or olmo_hybrid_config(), seed)


def tiny_model(name: str, seed: int = 0):
    """A gatescope Model of any tiny family by name: the ones of ``tiny.CONFIGS`` (Qwen3-Next /
    Qwen3.5 hybrids, ...), of :func:`tiny_gated_hf`, ``lfm3`` or ``olmo_hybrid``."""
    from tiny import CONFIGS, tiny_hf

    from probe import load_model

    if name in CONFIGS:
        hf = tiny_hf(name, seed)
    elif name == "lfm3":
        hf = tiny_lfm3(seed)
    elif name == "olmo_hybrid":
        hf = tiny_olmo_hybrid(seed)
    else:
        hf = tiny_gated_hf(name, seed)
    return load_model(hf, tokenizer=tiny_tokenizer())
