"""The one eager attention function of the circuits package, registered with transformers'
attention interface and switched on for a scope.

Every circuits algorithm that looks inside attention goes through :func:`attention`: the LRP
rules' AH rule (probabilities held constant), AtP*'s exact block recomputation (probabilities
recorded or frozen, the other inputs substituted), per-head reader gradients of the circuit
graph (each head's query, key and value tracked in the autograd graph) and reader-input
edits of edge patching and path patching (one head's query, key or value replaced).

1. The function receives the query ``(B, H, T, d)`` and key / value ``(B, H_kv, S, d)`` after
   the model's projections, norms and rotary embedding; key and value are first repeated to
   one copy per query head ``(B, H, S, d)``, so every per-head operation below addresses a
   query head (with grouped-query attention, each query head's copy of its group's key).
2. ``substitute[layer][c] = (tensor (B, H, ., d), heads)`` replaces channel ``c`` (``q``,
   ``k``, ``v``) of the heads in ``heads`` (a bool mask; ``None``: all heads).
3. ``record_qkv[layer]`` keeps q / k / v detached; ``track[layer]`` keeps them attached to the
   autograd graph (gradients with respect to them are each head's reader gradient).
4. Scores ``q k^T * scaling`` (with the family's logit soft-cap, if any) plus the mask, a
   float32 softmax; ``hold`` detaches it (the AH rule), ``frozen[layer]`` replaces it,
   ``record_probs[layer]`` keeps it. ``capture`` returns zeros after recording (a call made
   only to read q / k / v). Output ``probs @ v`` as ``(B, T, H, d)``.

Scopes nest: an inner :func:`attention` call overrides the fields it names for its duration.
The model's attention implementation is restored when the outermost scope exits.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch

from probe.errors import GatescopeError
from probe.model import Model

NAME = "gatescope_circuits"


@dataclass(frozen=True)
class AttentionState:
    """What the attention function does (module docstring; every field optional)."""

    hold: bool = False
    record_probs: dict | None = None
    frozen: dict | None = None
    record_qkv: dict | None = None
    track: dict | None = None
    substitute: dict | None = None
    capture: bool = False


_STACK: list[AttentionState] = []


def _replace_heads(current: torch.Tensor, given) -> torch.Tensor:
    tensor, heads = given
    tensor = tensor.to(device=current.device, dtype=current.dtype)
    if heads is None:
        return tensor
    mask = heads.to(current.device).view(1, -1, 1, 1)  # (1, H, 1, 1)
    return torch.where(mask, tensor, current)


def _function(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    state = _STACK[-1] if _STACK else AttentionState()
    if kwargs.get("s_aux") is not None or kwargs.get("sinks") is not None:
        raise GatescopeError(
            "attention with learned sinks is not supported by the circuits attention function"
        )
    layer = getattr(module, "layer_idx", None)
    groups = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(groups, dim=1)  # (B, H, S, d)
    value = value.repeat_interleave(groups, dim=1)  # (B, H, S, d)
    channels = {"q": query, "k": key, "v": value}
    given = (state.substitute or {}).get(layer, {})
    for name in channels:
        if name in given:
            channels[name] = _replace_heads(channels[name], given[name])
    if state.record_qkv is not None:
        state.record_qkv[layer] = {k: v.detach() for k, v in channels.items()}
    if state.track is not None:
        state.track[layer] = dict(channels)
    query, key, value = channels["q"], channels["k"], channels["v"]
    if state.capture:
        b, h, t, _ = query.shape
        return query.new_zeros(b, t, h, value.shape[-1]), None
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling  # (B, H, T, S)
    softcap = kwargs.get("softcap")
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask[..., : key.shape[-2]]
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    if state.hold:
        probs = probs.detach()
    if state.frozen is not None:
        probs = state.frozen[layer].to(query.dtype)
    if state.record_probs is not None:
        state.record_probs[layer] = probs.detach()
    out = torch.matmul(probs, value).transpose(1, 2).contiguous()  # (B, T, H, d)
    return out, probs


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    if NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(NAME, _function)
        AttentionMaskInterface.register(NAME, eager_mask)


@contextmanager
def attention(model: Model, **fields) -> Iterator[AttentionState]:
    """Run ``model``'s attention through :func:`_function` with ``fields`` of
    :class:`AttentionState` set (over the enclosing scope's); restored on exit."""
    if not hasattr(model.hf, "config"):
        raise GatescopeError(
            "looking inside attention needs a transformers model (not a HookedTransformer)"
        )
    _register()
    state = replace(_STACK[-1] if _STACK else AttentionState(), **fields)
    outermost = not _STACK
    configs: list[Any] = []  # the modules' transformers configs
    before: list[Any] = []
    if outermost:
        configs = list(
            {id(m.config): m.config for m in model.hf.modules() if hasattr(m, "config")}.values()
        )
        before = [c._attn_implementation for c in configs]
    _STACK.append(state)
    try:
        for c in configs:
            c._attn_implementation = NAME
        yield state
    finally:
        _STACK.pop()
        for c, b in zip(configs, before, strict=True):
            c._attn_implementation = b


def attention_module(model: Model, layer: int):
    """The attention block of ``layer`` (the parent of its ``head_out`` projection); refused
    where ``attn_out`` is not that block's output (sandwich-norm families)."""
    from probe.locate import resolve_path

    taps = model.family.taps
    head_path = taps["head_out"].modules[0]
    path = head_path.rsplit(".", 1)[0]
    module = resolve_path(model.layer(layer), (path,))
    if module is None or path not in taps["attn_out"].modules:
        raise GatescopeError(
            f"looking inside attention needs attn_out to be the attention block's output; "
            f"family {model.family.name} differs (use a method without attention corrections)"
        )
    return module
