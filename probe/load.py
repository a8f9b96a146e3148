"""Loading: ``load_model`` turns a name, a directory, a hub id or a loaded model into a
:class:`~probe.model.Model`.

It accepts a bundled reference name (``reference``, ``reference-plain``, ``reference-hybrid``),
a local directory, a hub id or an already loaded model. It checks the architecture and config
against the family registry *before* loading weights, and refuses what it does not support with
the list of what it does. The model is never modified: no weight processing, no folding.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from probe.backend import HookBackend
from probe.errors import GatescopeError
from probe.families import family_for_config
from probe.model import Model, dims_from_config
from probe.nnsight_backend import NNsightBackend, check_remote_key, load_lazily, use_nnsight
from probe.paths import BUNDLED_MODELS, bundled_model_dir

log = logging.getLogger(__name__)


def _bundled(name: str) -> Path | None:
    if name not in BUNDLED_MODELS:
        return None
    return bundled_model_dir(name)


def _load_tokenizer(source: str | os.PathLike, trust_remote_code: bool) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        log.warning("no tokenizer found at %s: %s", source, exc)
        return None


def _wrap_loaded(obj: nn.Module, tokenizer: Any, name: str) -> Model:
    cfg = getattr(obj, "cfg", None)
    if cfg is not None and hasattr(obj, "blocks"):  # TransformerLens HookedTransformer
        from types import SimpleNamespace

        gated = bool(getattr(cfg, "gated_mlp", False))
        mt = "hooked_transformer_gated" if gated else "hooked_transformer"
        family = family_for_config(SimpleNamespace(model_type=mt))
        dims = dims_from_config(cfg)
        return Model(
            hf=obj.eval(),
            tokenizer=tokenizer or obj.tokenizer,
            family=family,
            dims=dims,
            name=name,
            backend=HookBackend(),
        )
    config = getattr(obj, "config", None)
    if config is None:
        raise GatescopeError(
            f"{type(obj).__name__} is neither a transformers model nor a HookedTransformer"
        )
    text_cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    family = family_for_config(text_cfg)
    if family.check is not None:
        family.check(text_cfg, obj)
    if tokenizer is None and getattr(config, "_name_or_path", ""):
        path = config._name_or_path
        tokenizer = _load_tokenizer(path, False) if Path(path).is_dir() else None
    name = name or getattr(config, "_name_or_path", "") or type(obj).__name__
    dims = dims_from_config(text_cfg)
    return Model(
        hf=obj.eval(),
        tokenizer=tokenizer,
        family=family,
        dims=dims,
        name=name,
        backend=HookBackend(),
    )


def load_model(
    model: str | os.PathLike | nn.Module,
    *,
    tokenizer: Any = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    device_map: str | dict | None = None,
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
    backend: str = "hooks",
    remote: bool = False,
) -> Model:
    """Load a model for gatescope: a reference name, a local directory, a hub id or a model.

    The architecture and config are checked before any weights load. ``dtype`` is a torch
    dtype or its name (``"bfloat16"``); ``device_map="auto"`` spreads a large model over the
    available GPUs through ``transformers``. ``backend="nnsight"`` runs every algorithm through
    nnsight instead of local hooks (``remote=True``: on NDIF, API key in ``NDIF_API_KEY``); a
    name or directory is then loaded by nnsight itself, on the meta device, its weights read
    only for local runs.
    """
    if backend not in ("hooks", "nnsight"):
        raise GatescopeError(f"backend '{backend}' is unknown; choose 'hooks' or 'nnsight'")
    if remote and backend != "nnsight":
        raise GatescopeError("remote=True needs backend='nnsight' (NDIF runs nnsight)")
    if remote:
        check_remote_key(remote)  # before any config is fetched
    if isinstance(model, nn.Module):
        wrapped = _place(_wrap_loaded(model, tokenizer, ""), device)
        return _with_backend(wrapped, backend, remote)
    source = _checked_source(model, trust_remote_code)
    kwargs = _load_kwargs(dtype, device_map, attn_implementation, trust_remote_code)
    name = str(model)
    if backend == "nnsight":
        return _load_through_nnsight(source, name, tokenizer, device, remote, kwargs)
    from transformers import AutoModelForCausalLM

    try:
        hf = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except RuntimeError as exc:
        if "mismatched" not in str(exc):
            raise
        raise GatescopeError(
            f"model '{model}': its weights do not fit its config (size mismatch, see the load "
            "report above): a size or flag of config.json contradicts the checkpoint (e.g. "
            "headwise_attn_output_gate / elementwise_attn_output_gate against q_proj's width); "
            "fix config.json"
        ) from None
    tok = tokenizer or _load_tokenizer(source, trust_remote_code)
    return _place(_wrap_loaded(hf, tok, name), None if device_map else device)


def _checked_source(model: str | os.PathLike, trust_remote_code: bool) -> str:
    """Where to load ``model`` from (a bundled name resolved), after refusing a missing
    directory and an unsupported architecture or config, before any weights load."""
    source = str(model)
    bundled = _bundled(source)
    if bundled is not None:
        source = str(bundled)
    elif not Path(source).is_dir() and (Path(source).exists() or source.startswith((".", "/"))):
        raise GatescopeError(
            f"model '{model}': not a model directory (no such directory or not a directory); "
            "give a directory saved with save_pretrained, a hub id, or 'reference'"
        )
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        if "trust_remote_code" in str(exc):
            raise _needs_remote_code(model) from None
        raise GatescopeError(
            f"model '{model}': could not read its config ({exc}). Give 'reference', "
            "'reference-plain', a local model directory, or a hub id with network access"
        ) from None
    text_cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    family = family_for_config(text_cfg)  # refuse before loading weights
    if family.remote_code and not trust_remote_code:
        raise _needs_remote_code(model, family.name)
    return source


def _needs_remote_code(model, family: str = "") -> GatescopeError:
    what = f"transformers has none for family {family}" if family else "its config names it"
    return GatescopeError(
        f"model '{model}' needs its own modelling code ({what}; the checkpoint ships it): "
        "load it with --trust-remote-code (trust_remote_code=True) if you trust its source"
    )


def _load_kwargs(dtype, device_map, attn_implementation, trust_remote_code: bool) -> dict:
    """Keyword arguments for ``from_pretrained`` (only those the caller set)."""
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if device_map is not None:
        kwargs["device_map"] = device_map
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    return kwargs


def _load_through_nnsight(source: str, name: str, tokenizer, device, remote: bool, kwargs):
    """A model loaded by nnsight (lazily: on the meta device, weights only when local)."""
    tok = tokenizer or _load_tokenizer(source, kwargs["trust_remote_code"])
    if device is not None and not remote:
        kwargs = {**kwargs, "device_map": kwargs.get("device_map", device)}
    envoy, hf, tok = load_lazily(source, tok, remote, **kwargs)
    wrapped = _wrap_loaded(hf, tok, name)
    wrapped.backend = NNsightBackend(hf, remote=remote, envoy=envoy)
    return wrapped


def _with_backend(model: Model, backend: str, remote: bool) -> Model:
    if backend == "hooks":
        return model
    return use_nnsight(model, remote=remote)


def _place(model: Model, device: str | torch.device | None) -> Model:
    if device is not None:
        model.hf.to(device)
    return model
