"""Tiny random models of every family, built in-process from configs (no downloads), models
with known behaviour for exact checks, and the toy tasks and texts the tests share."""

from __future__ import annotations

import torch
import transformers as tf
from torch import nn

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


# ---- models with known behaviour (exact checks of attribution, path patching, concepts) ----


class Zero(nn.Module):
    """A module that outputs zeros (an MLP switched off)."""

    def forward(self, x):
        return torch.zeros_like(x)


class Ones(nn.Module):
    """A module that outputs ones (a constant GLU gate)."""

    def forward(self, x):
        return torch.ones_like(x)


def attention_only(layers: int = 1):
    """A Llama model with identity norms and no MLP: only attention's softmax is nonlinear
    (q, k, v, rotary, o_proj, the unembedding and the logit difference are linear)."""
    from probe import load_model

    torch.manual_seed(1)
    cfg = tf.LlamaConfig(**_common(num_hidden_layers=layers))
    cfg._attn_implementation = "eager"
    hf = tf.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for layer in hf.model.layers:
            layer.input_layernorm = nn.Identity()
            layer.post_attention_layernorm = nn.Identity()
            layer.mlp = Zero()
            layer.self_attn.q_proj.weight.mul_(30.0)  # sharp, saturating attention
            layer.self_attn.k_proj.weight.mul_(30.0)
            layer.self_attn.v_proj.weight.mul_(30.0)
        hf.model.norm = nn.Identity()
    return load_model(hf, tokenizer=tiny_tokenizer())


def linear_model():
    """A Qwen3-Next model made linear in its residual stream: identity norms, q = k = 0
    (uniform attention, so attention is linear in the values), and a constant GLU gate (the
    MLP is its linear up/down path)."""
    from probe import load_model

    torch.manual_seed(0)
    hf = tf.Qwen3NextForCausalLM(qwen3_next_config()).eval()
    with torch.no_grad():
        for layer in hf.model.layers:
            layer.input_layernorm = nn.Identity()
            layer.post_attention_layernorm = nn.Identity()
            layer.self_attn.q_norm = nn.Identity()
            layer.self_attn.k_norm = nn.Identity()
            query_rows = layer.self_attn.q_proj.weight.view(4, 2, 16, -1)[:, 0]
            query_rows.zero_()
            layer.self_attn.k_proj.weight.zero_()
            layer.mlp.act_fn = Ones()
        hf.model.norm = nn.Identity()
    return load_model(hf, tokenizer=tiny_tokenizer())


#: Gated-DeltaNet sizes of test_families' hybrid models (wider heads than DELTA).
LINEAR = dict(
    linear_num_value_heads=4,
    linear_num_key_heads=2,
    linear_key_head_dim=16,
    linear_value_head_dim=16,
)


# ---- tasks and texts over the tiny vocabulary ------------------------------------------------


def toy_task(n: int = 4):
    """Six-word prompts whose corrupt run swaps the first two words."""
    from probe.tasks import Task

    g = torch.Generator().manual_seed(3)
    clean, corrupt, ans, wrong = [], [], [], []
    for _ in range(n):
        w = [f"w{int(i)}" for i in torch.randint(10, 200, (6,), generator=g)]
        clean.append(" ".join(w))
        corrupt.append(" ".join([w[1], w[0], *w[2:]]))
        ans.append(f"w{int(torch.randint(10, 200, (1,), generator=g))}")
        wrong.append(f"w{int(torch.randint(10, 200, (1,), generator=g))}")
    return Task(name="toy", clean=clean, corrupt=corrupt, answers=ans, wrongs=wrong)


def late_task(n: int = 4, length: int = 8, seed: int = 5):
    """Clean and corrupt prompts that differ only at position length - 3 (a shared prefix)."""
    from probe.tasks import Task

    g = torch.Generator().manual_seed(seed)
    clean, corrupt, ans, wrong = [], [], [], []
    for _ in range(n):
        w = [f"w{int(i)}" for i in torch.randint(10, 200, (length,), generator=g)]
        clean.append(" ".join(w))
        swap = f"w{int(torch.randint(10, 200, (1,), generator=g))}"
        corrupt.append(" ".join([*w[:-3], swap, *w[-2:]]))
        ans.append(f"w{int(torch.randint(10, 200, (1,), generator=g))}")
        wrong.append(f"w{int(torch.randint(10, 200, (1,), generator=g))}")
    return Task(name="late", clean=clean, corrupt=corrupt, answers=ans, wrongs=wrong)


def replace_task():
    """:func:`toy_task`'s prompts whose third word is replaced in the corrupt run."""
    from probe.tasks import Task

    base = toy_task()
    corrupt = []
    for c in base.clean:
        w = c.split(" ")
        corrupt.append(" ".join([*w[:2], "w7", *w[3:]]))
    return Task(
        name="replace", clean=base.clean, corrupt=corrupt, answers=base.answers, wrongs=base.wrongs
    )


def sentences(seed: int, n: int = 12, words=range(3, 200)) -> list[str]:
    """``n`` five-word sentences of random tiny-vocabulary words."""
    import numpy as np

    rng = np.random.default_rng(seed)
    pool = list(words)
    return [" ".join(f"w{rng.choice(pool)}" for _ in range(5)) for _ in range(n)]


def tiny_hooked(gated: bool = False):
    """A tiny TransformerLens HookedTransformer (gated: SiLU GLU MLPs with RMSNorm)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=L,
        d_model=D,
        n_ctx=CTX,
        d_head=DH,
        n_heads=H,
        d_mlp=MLP,
        d_vocab=V,
        act_fn="silu" if gated else "gelu",
        gated_mlp=gated,
        normalization_type="RMS" if gated else "LN",
        seed=0,
    )
    return HookedTransformer(cfg)
