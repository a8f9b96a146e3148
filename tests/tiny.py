"""Tiny random models of every family, built in-process from configs (no downloads)."""

from __future__ import annotations

import torch
import transformers as tf

D, L, H, DH, MLP, V, CTX = 64, 2, 4, 16, 128, 256, 64


def _common(**extra):
    base = dict(
        vocab_size=V,
        hidden_size=D,
        num_hidden_layers=L,
        num_attention_heads=H,
        num_key_value_heads=2,
        head_dim=DH,
        intermediate_size=MLP,
        max_position_embeddings=CTX,
        tie_word_embeddings=False,
    )
    base.update(extra)
    return base


def qwen3_next_config(**extra):
    kw = _common(
        layer_types=["full_attention"] * L,
        num_experts=0,
        mlp_only_layers=list(range(L)),
        partial_rotary_factor=1.0,
    )
    kw.update(extra)
    return tf.Qwen3NextConfig(**kw)


#: Gated-DeltaNet sizes for the hybrid tiny models (2 key heads, 4 value heads).
DELTA = dict(
    linear_num_key_heads=2,
    linear_num_value_heads=4,
    linear_key_head_dim=8,
    linear_value_head_dim=8,
    linear_conv_kernel_dim=4,
)
#: MoE sizes: 4 experts, top-2, a shared expert.
MOE = dict(
    num_experts=4,
    num_experts_per_tok=2,
    moe_intermediate_size=32,
    shared_expert_intermediate_size=48,
)
HYBRID_LAYERS = ["linear_attention", "linear_attention", "linear_attention", "full_attention"]


def qwen3_next_hybrid_config(**extra):
    """Qwen3-Next in its real shape: 3 DeltaNet layers then full attention, MoE MLPs on
    layers 1-3 (layer 0 dense)."""
    kw = _common(
        num_hidden_layers=4,
        layer_types=HYBRID_LAYERS,
        mlp_only_layers=[0],
        decoder_sparse_step=1,
        partial_rotary_factor=1.0,
        norm_topk_prob=True,
        **DELTA,
        **MOE,
    )
    kw.update(extra)
    return tf.Qwen3NextConfig(**kw)


def qwen3_5_config(**extra):
    kw = _common(num_hidden_layers=4, layer_types=HYBRID_LAYERS, partial_rotary_factor=1.0, **DELTA)
    kw.update(extra)
    return tf.Qwen3_5TextConfig(**kw)


def qwen3_5_moe_config(**extra):
    kw = _common(
        num_hidden_layers=4, layer_types=HYBRID_LAYERS, partial_rotary_factor=1.0, **DELTA, **MOE
    )
    kw.update(extra)
    return tf.Qwen3_5MoeTextConfig(**kw)


CONFIGS = {
    "qwen3_next": qwen3_next_config,
    "qwen3_next_hybrid": qwen3_next_hybrid_config,
    "qwen3_5": qwen3_5_config,
    "qwen3_5_moe": qwen3_5_moe_config,
    "llama": lambda: tf.LlamaConfig(**_common()),
    "mistral": lambda: tf.MistralConfig(**_common()),
    "qwen2": lambda: tf.Qwen2Config(**_common()),
    "qwen3": lambda: tf.Qwen3Config(**_common()),
    "gemma": lambda: tf.GemmaConfig(**_common()),
    "gemma2": lambda: tf.Gemma2Config(**_common()),
    "gemma3_text": lambda: tf.Gemma3TextConfig(**_common(sliding_window=16)),
    "gpt2": lambda: tf.GPT2Config(
        vocab_size=V, n_embd=D, n_layer=L, n_head=H, n_positions=CTX, n_inner=MLP
    ),
}

CLASSES = {
    "qwen3_next": tf.Qwen3NextForCausalLM,
    "qwen3_next_hybrid": tf.Qwen3NextForCausalLM,
    "qwen3_5": tf.Qwen3_5ForCausalLM,
    "qwen3_5_moe": tf.Qwen3_5MoeForCausalLM,
    "llama": tf.LlamaForCausalLM,
    "mistral": tf.MistralForCausalLM,
    "qwen2": tf.Qwen2ForCausalLM,
    "qwen3": tf.Qwen3ForCausalLM,
    "gemma": tf.GemmaForCausalLM,
    "gemma2": tf.Gemma2ForCausalLM,
    "gemma3_text": tf.Gemma3ForCausalLM,
    "gpt2": tf.GPT2LMHeadModel,
}


#: The families every invariant test runs on: one homogeneous tiny model per architecture in
#: CONFIGS (the hybrid / MoE variants have tests of their own in test_gate_sites.py).
FAMILIES = [name for name in CONFIGS if name not in ("qwen3_next_hybrid", "qwen3_5", "qwen3_5_moe")]


def tiny_hf(name: str, seed: int = 0, attn: str = "eager", config=None):
    """A random tiny HF model of architecture ``name`` with non-trivial norm weights."""
    torch.manual_seed(seed)
    cfg = config or CONFIGS[name]()
    cfg._attn_implementation = attn
    model = CLASSES[name](cfg).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n or "ln" in n:
                p.add_(0.1 * torch.randn_like(p))
    return model


def tiny_tokenizer():
    """A word-level tokenizer over a small vocabulary, as a PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["<pad>", "<eos>", "<unk>"] + [f"w{i}" for i in range(V - 3)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tf.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )


def save_tiny(path, name: str = "qwen3_next", seed: int = 0):
    """Save a tiny model and tokenizer to ``path`` (a local model directory)."""
    model = tiny_hf(name, seed)
    model.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def prompts(n: int = 3, length: int = 12, seed: int = 0) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    return [
        " ".join(
            f"w{int(i)}" for i in torch.randint(0, V - 3, (length - k % (length - 1),), generator=g)
        )
        for k in range(n)
    ]
