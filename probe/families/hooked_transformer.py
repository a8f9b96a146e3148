"""TransformerLens ``HookedTransformer``: its ``HookPoint``s are identity modules in the data
path, so gatescope hooks their outputs like any other module (and writes through them).

``head_out`` is ``attn.hook_z``, ``attn_pattern`` is ``attn.hook_pattern``. A gated MLP
(``cfg.gated_mlp``) exposes ``hook_pre`` (gate pre-activation), ``hook_pre_linear`` (the
linear branch) and ``hook_post`` (the product); the activated gate alone has no hook point.
A plain MLP exposes only ``hook_post`` as ``mlp_hidden``.
"""

from probe.families.base import Family, Tap

_TAPS = {
    "resid_pre": Tap("hook_resid_pre", "output"),
    "resid_mid": Tap("hook_resid_mid", "output"),
    "resid_post": Tap("hook_resid_post", "output"),
    "attn_out": Tap("hook_attn_out", "output"),
    "mlp_out": Tap("hook_mlp_out", "output"),
    "head_out": Tap("attn.hook_z", "output", layout="heads"),
    "attn_pattern": Tap("attn.hook_pattern", "output", layout="pattern"),
    "mlp_hidden": Tap("mlp.hook_post", "output"),
}

_COMMON = dict(
    layers=("blocks",),
    embed=("embed",),
    final_norm=("ln_final",),
    unembed=("unembed",),
    norms=("ln1", "ln2"),
    mlp_act=None,
    attn_input="ln1",
    mlp_input="ln2",
)

PLAIN = Family(
    name="hooked_transformer",
    model_types=("hooked_transformer",),
    taps=_TAPS,
    description="TransformerLens HookedTransformer (plain MLP)",
    **_COMMON,  # pyright: ignore[reportArgumentType]
)

GATED = Family(
    name="hooked_transformer",
    model_types=("hooked_transformer_gated",),
    taps={
        **_TAPS,
        "mlp_gate_pre": Tap("mlp.hook_pre", "output"),
        "mlp_up": Tap("mlp.hook_pre_linear", "output"),
    },
    description="TransformerLens HookedTransformer (gated MLP)",
    **_COMMON,  # pyright: ignore[reportArgumentType]
)

FAMILIES = (PLAIN, GATED)
