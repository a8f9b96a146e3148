"""The nnsight backend: the same planned site reads and writes, carried out inside an
nnsight trace instead of by PyTorch hooks.

1. ``hook_sites`` plans hooks exactly as the local backend does (``probe.hooks.plan_hooks``)
   and keeps them while its context is open (nested contexts stack, outer first).
2. ``forward`` opens ``envoy.trace(input_ids, attention_mask=...)`` and visits the planned
   modules in execution order (recorded once by a dry run), reading ``.inputs``/``.output``,
   applying each plan and assigning the result back when a plan wrote.
3. Logits come back from ``envoy.output``; gradients flow as with the local backend.

``remote=True`` sends the trace to NDIF (nnsight's remote execution): it needs an API key in
``NDIF_API_KEY`` and a model hosted there; without a key it fails before any network call.

Loading by name (:func:`load_lazily`: a hub id or a local directory) goes through nnsight's
``TransformersModel`` (``LanguageModel`` in older nnsight): the model is built on the meta
device from its config, so sites, families and plans work with no weights in memory. Locally
the weights are loaded at once; with ``remote=True`` they never are, and NDIF runs the
traces. The execution order of modules comes from a dry run that works on meta tensors.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import torch

from probe.errors import GatescopeError
from probe.hooks import ForwardInfo, HookFn, Planned, get_raw, plan_hooks, put_raw
from probe.model import Model
from probe.sites import Site

API_KEY_ENV = "NDIF_API_KEY"


def _execution_order(model: Model) -> dict[tuple[int, str], int]:
    """(id(module), 'input'|'output') -> when it happens in a forward pass (dry run)."""
    events: dict[tuple[int, str], int] = {}
    handles = []

    def mark(key):
        def hook(*_args, **_kwargs) -> None:
            events.setdefault(key, len(events))

        return hook

    try:
        for module in model.hf.modules():
            handles.append(module.register_forward_pre_hook(mark((id(module), "input"))))
            handles.append(module.register_forward_hook(mark((id(module), "output"))))
        device = next(model.hf.parameters()).device  # "meta" for a model loaded lazily
        ids = torch.zeros((1, 2), dtype=torch.long, device=device)
        with torch.no_grad():
            model.hf(ids)  # no mask: building one calls .item(), which meta tensors refuse
    finally:
        for h in handles:
            h.remove()
    return events


class NNsightBackend:
    """Run gatescope's site reads and writes through nnsight (locally, or on NDIF)."""

    name = "nnsight"

    def __init__(self, model_hf: Any, remote: bool = False, envoy: Any = None) -> None:
        check_remote_key(remote)
        if envoy is None:
            from nnsight import NNsight

            envoy = NNsight(model_hf)
        self.remote = remote
        self.envoy = envoy
        self._frames: list[tuple[ForwardInfo, list[Planned]]] = []
        self._order: dict[tuple[int, str], int] | None = None
        self._paths = {id(m): name for name, m in model_hf.named_modules()}

    @contextmanager
    def hook_sites(
        self, model: Model, entries: Sequence[tuple[Site, HookFn]], write: bool = False
    ) -> Iterator[ForwardInfo]:
        info = ForwardInfo()
        frame = (info, plan_hooks(model, entries, write, info))
        self._frames.append(frame)
        try:
            yield info
        finally:
            self._frames.remove(frame)

    def _envoy_at(self, module) -> Any:
        node = self.envoy
        path = self._paths[id(module)]
        for part in path.split(".") if path else []:
            node = node[int(part)] if part.isdigit() else getattr(node, part)
        return node

    def _groups(self, model: Model) -> list[tuple[Any, str, list[Planned]]]:
        if self._order is None:
            self._order = _execution_order(model)
        order = self._order
        groups: dict[tuple[int, str], list[Planned]] = {}
        modules = {}
        for _, planned in self._frames:
            for p in planned:
                key = (id(p.module), p.tap.side)
                groups.setdefault(key, []).append(p)
                modules[id(p.module)] = p.module
        ordered = sorted(groups, key=lambda k: order.get(k, len(order)))
        return [(modules[k[0]], k[1], groups[k]) for k in ordered]

    def forward(
        self, model: Model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> torch.Tensor:
        for info, _ in self._frames:
            info.attention_mask, info.offset = attention_mask, 0
        if self.remote:  # NDIF takes the inputs from this machine's memory
            input_ids = input_ids.cpu()
            attention_mask = None if attention_mask is None else attention_mask.cpu()
        groups = self._groups(model)
        with self.envoy.trace(input_ids, attention_mask=attention_mask, remote=self.remote):
            for module, side, plans in groups:
                node = self._envoy_at(module)
                if side == "output":
                    out = node.output
                    new_out = _apply_all(plans, (), {}, out)
                    if new_out is not None:
                        node.output = new_out
                else:
                    args, kwargs = node.inputs
                    new_in = _apply_all(plans, args, kwargs, None)
                    if new_in is not None:
                        node.inputs = new_in
            result = self.envoy.output.save()
        return result if isinstance(result, torch.Tensor) else result.logits


def _apply_all(plans: list[Planned], args: tuple, kwargs: dict, output):
    """Apply plans in order to one module's input or output; the new value or None."""
    changed = False
    for p in plans:
        new = p.apply(get_raw(p.tap, args, kwargs, output))
        if new is None:
            continue
        changed = True
        if p.tap.side == "output":
            output = put_raw(p.tap, args, kwargs, output, new)
        else:
            args, kwargs = put_raw(p.tap, args, kwargs, None, new)
    if not changed:
        return None
    return output if plans[0].tap.side == "output" else (args, kwargs)


def check_remote_key(remote: bool) -> None:
    """Refuse remote execution without an NDIF API key (before anything reaches a network)."""
    if remote and not os.environ.get(API_KEY_ENV):
        raise GatescopeError(
            f"remote execution on NDIF needs an API key: set {API_KEY_ENV} "
            "(get one at https://login.ndif.us), or run with remote=False"
        )


def _nnsight_model_class():
    try:
        from nnsight.modeling.transformers import TransformersModel

        return TransformersModel, {"task": "text-generation"}
    except ImportError:  # nnsight before TransformersModel
        from nnsight import LanguageModel

        return LanguageModel, {}


def load_lazily(
    source: str, tokenizer: Any, remote: bool, **load_kwargs: Any
) -> tuple[Any, Any, Any]:
    """``(envoy, hf_model, tokenizer)`` for a hub id or directory through nnsight: the model
    is built on the meta device; its weights load now unless ``remote`` (callers have
    checked the API key: :func:`check_remote_key`)."""
    cls, extra = _nnsight_model_class()
    if tokenizer is not None:
        extra["tokenizer"] = tokenizer
    envoy = cls(source, dispatch=not remote, **extra, **load_kwargs)
    return envoy, envoy._module, envoy.tokenizer


def use_nnsight(model: Model, remote: bool = False) -> Model:
    """The same model, run through nnsight: every gatescope algorithm works unchanged."""
    return replace(model, backend=NNsightBackend(model.hf, remote=remote))
