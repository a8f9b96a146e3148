"""Nested training state (optimizer, schedulers, counters) as safetensors + JSON, no pickle.

1. ``save_state`` walks the nested dict/list: every tensor goes into ``PREFIX.safetensors``
   under a generated key and is replaced in the tree by ``{"__tensor__": key}``; the rest
   (numbers, strings, None) is written as ``PREFIX.json``.
2. ``load_state`` reads both and puts the tensors back. Integer dict keys (PyTorch optimizer
   state is keyed by parameter index) are kept as ``{"__int__": [[k, v], ...]}``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from probe.errors import GatescopeError


def _pack(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        if any(not isinstance(k, str) for k in obj):
            return {"__int__": [[k, _pack(v, tensors)] for k, v in obj.items()]}
        return {k: _pack(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_pack(v, tensors) for v in obj]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise GatescopeError(f"cannot checkpoint a {type(obj).__name__} without pickle")


def _unpack(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            return tensors[obj["__tensor__"]]
        if set(obj) == {"__int__"}:
            return {k: _unpack(v, tensors) for k, v in obj["__int__"]}
        return {k: _unpack(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unpack(v, tensors) for v in obj]
    return obj


def save_state(state: dict, prefix: Path) -> None:
    """Write ``prefix.safetensors`` and ``prefix.json``."""
    from probe.io import save_safetensors, write_json

    tensors: dict[str, torch.Tensor] = {}
    tree = _pack(state, tensors)
    save_safetensors(tensors, prefix.with_suffix(".safetensors"))
    write_json(prefix.with_suffix(".json"), tree, indent=None)


def load_state(prefix: Path, device: str = "cpu") -> dict:
    """Read a state written by :func:`save_state`."""
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(prefix.with_suffix(".safetensors")), device=device)
        tree = json.loads(prefix.with_suffix(".json").read_text())
    except (OSError, json.JSONDecodeError, Exception) as exc:  # safetensors has its own errors
        raise GatescopeError(
            f"checkpoint {prefix.parent} is unreadable ({exc}); delete it to train from scratch"
        ) from None
    return _unpack(tree, tensors)
