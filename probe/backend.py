"""Backends: who carries out "run these inputs with these site reads and writes".

The protocol is small: ``hook_sites(model, entries, write)`` (a context manager that makes
every forward pass inside it read/write the given sites) and ``forward(model, input_ids,
attention_mask)`` (run inputs, return logits; gradients flow as usual, so "run backward" is
``logits[...].backward()`` on the result). Every algorithm -- tracing, gate statistics,
patching, steering, AtP/RelP -- is written once against it.

- :class:`HookBackend` (default): PyTorch forward hooks on the local model.
- :class:`probe.nnsight_backend.NNsightBackend`: the same plans carried out inside an
  nnsight trace, locally or on NDIF.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Protocol

import torch

from probe.hooks import ForwardInfo, HookFn, install_torch_hook, plan_hooks, update_info

if TYPE_CHECKING:
    from probe.model import Model
    from probe.sites import Site


class Backend(Protocol):
    """What an algorithm needs from the machinery that runs the model."""

    name: str

    def hook_sites(self, model: Model, entries: Sequence[tuple[Site, HookFn]], write: bool):
        """Context manager: read/write these sites in every forward pass inside it."""
        ...

    def forward(
        self, model: Model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Run inputs, return logits (B, T, vocab)."""
        ...


class HookBackend:
    """Local execution with PyTorch hooks on the unmodified model."""

    name = "hooks"

    @contextmanager
    def hook_sites(
        self, model: Model, entries: Sequence[tuple[Site, HookFn]], write: bool = False
    ) -> Iterator[ForwardInfo]:
        info = ForwardInfo()
        planned = plan_hooks(model, entries, write, info)
        handles, thread = [], threading.get_ident()  # passes of other threads are not ours

        def refresh(module, args, kwargs):
            if threading.get_ident() == thread:
                update_info(info, kwargs)

        try:
            handles.append(model.hf.register_forward_pre_hook(refresh, with_kwargs=True))
            handles.extend(install_torch_hook(p, thread) for p in planned)
            yield info
        finally:
            for handle in handles:
                handle.remove()

    def forward(
        self, model: Model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> torch.Tensor:
        out = model.hf(input_ids, attention_mask=attention_mask)
        return out if isinstance(out, torch.Tensor) else out.logits
