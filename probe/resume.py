"""Resumable forward passes: reuse a shared prompt prefix and restart a pass at any layer.

Many patched passes differ from one base run only after some point: clean and corrupt
prompts share their first tokens (an IOI corrupt prompt changes one name near the end), and a
patch at layer ``L`` leaves layers ``0 .. L-1`` as they were. TransformerLens offers
``start_at_layer`` on its own models; this does the same on the unmodified Hugging Face model.

1. The shared prefix ``ids[:, :start]`` runs once through the model's own forward with a KV
   cache (:class:`ResumablePass`).
2. ``forward(ids)`` runs the suffix ``ids[:, start:]`` of prompts with that prefix (one or
   more blocks of the same rows) from a copy of the cache, stopping after the last decoder
   layer; with ``record=j`` a pre-hook on every decoder layer records what the model passed
   it (hidden states, position embeddings, mask, ...), block ``j`` being the rows to resume.
3. ``run(entries, k, layer)`` tiles the recorded rows ``k`` times (block ``j`` = rows
   ``j*n .. (j+1)*n``) and calls decoder layers ``layer .. n-1`` directly with the recorded
   arguments and a tiled copy of the cache, with the given site hooks installed.

Both return the last layer's output ``(rows, T - start, d_model)``; hooks see
``info.offset == start``, so site values cover positions ``start ..`` only. Only the local
hook backend can resume. Callers check the results against the full forward (patching does,
on two prompts for the suffix and with an unpatched tile in its first resumed pass) and run
full passes where they differ.
"""

from __future__ import annotations

import copy
import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from probe.hooks import HookFn, hook_sites
from probe.locate import resolve_path
from probe.model import Model
from probe.sites import Site

log = logging.getLogger(__name__)
_HIDDEN = "hidden_states"  # the keyword of a decoder layer's input when not positional


def shared_prefix(a: torch.Tensor, b: torch.Tensor) -> int:
    """Number of leading positions where the token ids ``a`` and ``b`` (B, T) agree in every
    row. A causal model computes identical activations there for both."""
    differs = (a != b).any(0)  # (T,)
    hits = torch.nonzero(differs).flatten()
    return int(hits[0]) if len(hits) else a.shape[1]


def _cache_keyword(hf: torch.nn.Module) -> str:
    params = inspect.signature(hf.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _is_cache(obj) -> bool:
    return hasattr(obj, "get_seq_length") and hasattr(obj, "batch_select_indices")


_STATE_DICTS = ("conv_states", "recurrent_states")  # linear-attention (Gated DeltaNet) layers
_KV = ("keys", "values")  # attention layers


def _state_tensors(layer):
    """``(attribute, key, tensor)`` for every per-row tensor a cache layer holds: the KV of
    attention layers and the convolution and recurrent states of linear-attention layers (a
    state that was never written is ``None`` and skipped)."""
    for name in _KV:
        value = getattr(layer, name, None)
        if isinstance(value, torch.Tensor) and value.dim() >= 2:
            yield name, None, value
    for name in _STATE_DICTS:
        for key, value in (getattr(layer, name, None) or {}).items():
            if isinstance(value, torch.Tensor):
                yield name, key, value


def _replace(layer, fn):
    """A shallow copy of a cache layer with each state tensor ``t`` replaced by ``fn(t)``."""
    new = copy.copy(layer)
    for name in _STATE_DICTS:
        if isinstance(getattr(layer, name, None), dict):
            setattr(new, name, dict(getattr(layer, name)))
    for flag in ("has_previous_state", "is_conv_states_initialized",
                 "is_recurrent_states_initialized"):  # fmt: skip
        if isinstance(getattr(layer, flag, None), dict):
            setattr(new, flag, dict(getattr(layer, flag)))
    for name, key, value in _state_tensors(layer):
        if key is None:
            setattr(new, name, fn(value))
        else:
            getattr(new, name)[key] = fn(value)
    return new


def _layers_of(cache) -> list:
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise CannotResume(f"a {type(cache).__name__} has no per-layer states to tile")
    return layers


def select_cache_rows(cache, index: torch.Tensor):
    """A copy of ``cache`` whose rows are ``index`` (KV of attention layers, convolution and
    recurrent states of linear-attention layers alike); ``cache`` stays as it is."""
    new = copy.copy(cache)
    new.layers = [
        _replace(layer, lambda t: t.index_select(0, index.to(t.device)))
        for layer in _layers_of(cache)
    ]
    return new


def fresh_cache(cache):
    """A copy of ``cache`` that one pass may extend: attention layers append by concatenation
    (their tensors are shared), linear-attention layers overwrite their states in place (those
    are cloned)."""
    new = copy.copy(cache)
    new.layers = []
    for layer in _layers_of(cache):
        states = any(isinstance(getattr(layer, name, None), dict) for name in _STATE_DICTS)
        shared = type(layer).__name__ in _APPENDING
        if not states and not shared:
            new.layers.append(copy.deepcopy(layer))  # a layer type that may write in place
            continue
        copied = _replace(layer, lambda t: t)
        for name in _STATE_DICTS:
            for key, value in (getattr(copied, name, None) or {}).items():
                if isinstance(value, torch.Tensor):
                    getattr(copied, name)[key] = value.clone()
        if not shared:
            for name in _KV:
                if isinstance(getattr(copied, name, None), torch.Tensor):
                    setattr(copied, name, getattr(copied, name).clone())
        new.layers.append(copied)
    return new


# cache layers whose ``update`` replaces their KV tensors by concatenation (never in place)
_APPENDING = {"DynamicLayer", "LinearAttentionAndFullAttentionLayer"}


def cache_bytes(cache) -> int:
    """Bytes held by the per-row state tensors of ``cache``."""
    return sum(t.numel() * t.element_size() for layer in _layers_of(cache)
               for _, _, t in _state_tensors(layer))  # fmt: skip


def _tile(obj: Any, rows: int, index: torch.Tensor, cache) -> Any:
    """``obj`` with every per-row tensor (dim >= 2, first dim ``rows``) gathered by ``index``
    and any KV cache replaced by ``cache``; broadcastable tensors stay as they are."""
    if isinstance(obj, torch.Tensor):
        if obj.dim() >= 2 and obj.shape[0] == rows and rows > 1:
            return obj.index_select(0, index.to(obj.device))
        return obj
    if _is_cache(obj):
        return cache
    if isinstance(obj, tuple | list):
        return type(obj)(_tile(x, rows, index, cache) for x in obj)
    if isinstance(obj, dict):
        return {key: _tile(x, rows, index, cache) for key, x in obj.items()}
    return obj


@dataclass
class _Call:
    """What the model passed one decoder layer."""

    args: tuple
    kwargs: dict

    @property
    def hidden(self) -> torch.Tensor:
        return self.args[0] if self.args else self.kwargs[_HIDDEN]


class CannotResume(RuntimeError):
    """This model or backend cannot resume passes (the reason is the message); callers run
    full passes instead."""


class StopPass(Exception):
    """Raised by a hook after the last layer, carrying its output: the rest of the forward
    pass (final norm, every position's logits) is not needed."""

    def __init__(self, value: torch.Tensor) -> None:
        super().__init__("stop")
        self.value = value


def _output(out) -> torch.Tensor:
    """The hidden states of a decoder layer's output (a tensor, or a tuple led by one)."""
    return out[0] if isinstance(out, tuple | list) else out


class ResumablePass:
    """Prompts sharing ``ids[:, :start]``, resumable past it and at any layer (see module)."""

    def __init__(self, model: Model, ids: torch.Tensor, mask: torch.Tensor, start: int) -> None:
        if model.backend.name != "hooks":
            raise CannotResume(f"the {model.backend.name} backend cannot resume passes")
        self.model, self.start, self.n = model, start, ids.shape[0]
        self.mask = mask.to(model.device)
        layers = resolve_path(model.hf, model.family.layers)
        if layers is None:
            raise CannotResume("no decoder layer list")
        self.layers = list(cast(nn.ModuleList, layers))[: model.dims.n_layers]
        self.cache = self._prefix_cache(ids[:, :start].to(model.device), self.mask[:, :start])
        self.calls: list[_Call] | None = None
        self._recorded = (0, 0)  # (rows of the recorded pass, first row that run() resumes)
        self._tiled: tuple[tuple[int, int], object] | None = None  # ((k, extra), cache)

    def _to_last_layer(
        self, ids, pre_hooks: Mapping[int, Callable[..., Any]], **kwargs
    ) -> torch.Tensor:
        """Run the model's own forward on ``ids`` with ``pre_hooks`` (layer index -> forward
        pre-hook with kwargs) and stop after the last decoder layer; its output."""

        def stop(module, args, output):
            raise StopPass(_output(output))

        handles = [self.layers[-1].register_forward_hook(stop)]
        handles += [
            self.layers[i].register_forward_pre_hook(fn, with_kwargs=True)
            for i, fn in pre_hooks.items()
        ]
        try:
            self.model.hf(ids, use_cache=True, **kwargs)
        except StopPass as caught:
            return caught.value
        finally:
            for handle in handles:
                handle.remove()
        raise RuntimeError("the forward pass never reached the last decoder layer")

    def _prefix_cache(self, ids: torch.Tensor, mask: torch.Tensor):
        """The KV cache of ``ids``: the one the model makes and hands its decoder layers,
        taken from the first layer's call (its logits are not needed)."""
        made = []

        def take(module, args, kwargs):
            made.extend(x for x in (*args, *kwargs.values()) if _is_cache(x))

        self._to_last_layer(ids, {0: take}, attention_mask=mask)
        if not made:
            raise CannotResume("the model passed its decoder layers no KV cache")
        return made[0]

    def _cache_for(self, k: int, extra: int = 0):
        """A cache of the prefix for ``k`` tiles (and ``extra`` rows) that a pass may extend;
        the stored one stays as it is. Only the latest tiling is kept (one tiled cache at a
        time, however many passes a sweep makes)."""
        if self._tiled is None or self._tiled[0] != (k, extra):
            self._tiled = None  # free the previous tiling before making the next
            self._tiled = ((k, extra), select_cache_rows(self.cache, self._index(k, extra)))
        return fresh_cache(self._tiled[1])

    def _index(self, k: int, extra: int = 0) -> torch.Tensor:
        """Prompt row of each row of ``k`` tiles then ``extra`` rows: (k * n + extra,)."""
        return torch.cat([torch.arange(k * self.n) % self.n, torch.arange(extra)])

    def forward(self, ids: torch.Tensor, record: int | None = None) -> torch.Tensor:
        """Last decoder layer's output ``(m * n, T - start, d)`` for prompts ``ids`` (m * n, T):
        ``m`` blocks of ``n`` rows, row ``r`` starting with prefix row ``r % n``. ``record=j``
        keeps every layer's call, with block ``j`` as the rows that :meth:`run` resumes."""
        m = ids.shape[0] // self.n
        if ids.shape[0] != m * self.n or m == 0:
            raise ValueError(f"{ids.shape[0]} rows are not whole blocks of {self.n}")
        calls: list[_Call | None] = [None] * len(self.layers)

        def recorder(i: int):
            def pre(module, args, kwargs):
                calls[i] = _Call(args, kwargs)

            return pre

        hooks = {i: recorder(i) for i in range(len(self.layers))} if record is not None else {}
        suffix = ids[:, self.start :].to(self.model.device)  # (m * n, T - start)
        cache = {_cache_keyword(self.model.hf): self._cache_for(m)}  # m tiles
        hidden = self._to_last_layer(suffix, hooks, attention_mask=self.mask.repeat(m, 1), **cache)
        if record is not None:
            if any(c is None for c in calls):
                raise CannotResume("a decoder layer was not called by the forward pass")
            self.calls, self._recorded = calls, (m * self.n, record * self.n)  # type: ignore
        return hidden

    def run(
        self, entries: Sequence[tuple[Site, HookFn]], k: int, layer: int, extra: int = 0
    ) -> torch.Tensor:
        """The last layer's output ``(k * n + extra, T - start, d)`` of the recorded rows
        tiled ``k`` times (then their first ``extra`` rows once more), resumed at ``layer``
        with the hooks of ``entries`` installed."""
        if self.calls is None:
            raise RuntimeError("run forward(ids, record=0) first")
        if not 0 <= layer < len(self.layers):
            raise ValueError(f"layer {layer} is out of range 0-{len(self.layers) - 1}")
        rows, first = self._recorded
        index = self._index(k, extra)  # (k * n + extra,) tile j = block j
        cache = self._cache_for(k, extra)
        mask = self.mask.index_select(0, index.to(self.mask.device))
        index = index + first
        with hook_sites(self.model, entries, write=True) as info:
            info.offset, info.attention_mask = self.start, mask
            hidden = self.calls[layer].hidden.index_select(0, index.to(self.model.device))
            for i in range(layer, len(self.layers)):
                call = self.calls[i]
                args = _tile(call.args[1:], rows, index, cache)
                kwargs = _tile(call.kwargs, rows, index, cache)
                if call.args:
                    out = self.layers[i](hidden, *args, **kwargs)  # hidden: (k * n, T', d)
                else:
                    out = self.layers[i](**{**kwargs, _HIDDEN: hidden})
                hidden = _output(out)
        return hidden
