"""GPT-2: LayerNorm, plain GELU MLP, no gates of any kind -- the ungated control."""

from probe.families.base import Family, Tap

FAMILY = Family(
    name="gpt2",
    model_types=("gpt2",),
    layers=("transformer.h",),
    taps={
        "resid_pre": Tap("", "input"),
        "resid_mid": Tap(
            "ln_2", "input", write_via=Tap("attn", "output"), write_base=Tap("", "input")
        ),
        "resid_post": Tap("", "output"),
        "attn_out": Tap("attn", "output"),
        "mlp_out": Tap("mlp", "output"),
        "head_out": Tap("attn.c_proj", "input", layout="heads"),
        "attn_pattern": Tap(
            "attn", "output", index=1, layout="pattern", writable=False, needs="eager attention"
        ),
        "mlp_hidden": Tap("mlp.c_proj", "input"),
    },
    embed=("transformer.wte",),
    final_norm=("transformer.ln_f",),
    norms=("ln_1", "ln_2"),
    mlp_act="mlp.act",
    attn_input="ln_1",
    mlp_input="ln_2",
    refuse={"add_cross_attention": (False,)},
    description="GPT-2: GELU MLP, no gates (the ungated control)",
)
