"""Registry of architecture families: one declarative file each, one line here each."""

from __future__ import annotations

from probe.errors import GatescopeError
from probe.families import gemma, gpt2, hooked_transformer, llama, qwen3_next
from probe.families.base import Family, Tap

FAMILIES: tuple[Family, ...] = (
    qwen3_next.FAMILY,
    llama.FAMILY,
    *gemma.FAMILIES,
    gpt2.FAMILY,
    *hooked_transformer.FAMILIES,
)

_BY_MODEL_TYPE = {mt: fam for fam in FAMILIES for mt in fam.model_types}


def supported_model_types() -> list[str]:
    return sorted(_BY_MODEL_TYPE)


def family_for_config(config) -> Family:
    """The family of a Hugging Face config, after checking its flags; refuse what is unknown."""
    model_type = getattr(config, "model_type", None)
    fam = _BY_MODEL_TYPE.get(model_type)
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


__all__ = ["FAMILIES", "Family", "Tap", "family_for_config", "supported_model_types"]
