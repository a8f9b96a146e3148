"""Registry of architecture families: one declarative file each, one line here each."""

from __future__ import annotations

from probe.errors import GatescopeError
from probe.families import (
    afmoe,
    gated_attention,
    gemma,
    gpt2,
    gpt_oss,
    hooked_transformer,
    lfm2,
    lfm3,
    llama,
    mixtral,
    olmo_hybrid,
    olmoe,
    qwen2_moe,
    qwen3_moe,
    qwen3_next,
)
from probe.families.base import Family, LayerInfo, Tap

FAMILIES: tuple[Family, ...] = (
    *qwen3_next.FAMILIES,
    gated_attention.FAMILY,
    qwen3_moe.FAMILY,
    qwen2_moe.FAMILY,
    olmoe.FAMILY,
    mixtral.FAMILY,
    gpt_oss.FAMILY,
    afmoe.FAMILY,
    lfm3.FAMILY,
    *lfm2.FAMILIES,
    olmo_hybrid.FAMILY,
    llama.FAMILY,
    *gemma.FAMILIES,
    gpt2.FAMILY,
    *hooked_transformer.FAMILIES,
)


def _check_registry(families: tuple[Family, ...]) -> None:
    """Two families may share a model type only if each tells its configs apart (``match``)."""
    seen: dict[str, Family] = {}
    for fam in families:
        for mt in fam.model_types:
            other = seen.get(mt)
            if other is not None and (other.match is None or fam.match is None):
                raise GatescopeError(
                    f"families {other.name} and {fam.name} both register model_type '{mt}' "
                    "and at least one has no config predicate (match=): give each a match"
                )
            seen[mt] = fam


_check_registry(FAMILIES)


def supported_model_types() -> list[str]:
    return sorted({mt for fam in FAMILIES for mt in fam.model_types})


def family_for_config(config) -> Family:
    """The family of a Hugging Face config, after checking its flags; refuse what is unknown.

    A family matches by model type and its config predicate; a config two families claim is
    refused (a registry error, not a guess).
    """
    model_type = getattr(config, "model_type", None)
    found = [fam for fam in FAMILIES if fam.matches(config)]
    if len(found) > 1:
        raise GatescopeError(
            f"config of model_type '{model_type}' matches families "
            f"{', '.join(f.name for f in found)}: the family registry is ambiguous"
        )
    fam = found[0] if found else None
    if fam is None:
        raise GatescopeError(
            f"unsupported architecture: model_type '{model_type}' "
            f"({', '.join(getattr(config, 'architectures', None) or [])}). "
            f"gatescope supports: {', '.join(supported_model_types())}"
        )
    problems = [
        f"{flag}={getattr(config, flag)!r} (supported: {', '.join(map(repr, ok))})"
        for flag, ok in fam.refuse.items()
        if getattr(config, flag, ok[0]) not in ok
    ]
    if problems:
        raise GatescopeError(f"unsupported config for family {fam.name}: {'; '.join(problems)}")
    return fam


__all__ = [
    "FAMILIES",
    "Family",
    "LayerInfo",
    "Tap",
    "family_for_config",
    "supported_model_types",
]
