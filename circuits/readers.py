"""Reader-input edits: one reader (a head's q / k / v / gate input, a block's input, the
logits) reads the residual stream plus a shift, every other reader the stream as it is.
Edge patching (:mod:`circuits.mib`) and path patching (:mod:`circuits.path_patching`) are
both this mechanism.

1. ``shift(reader, x)`` is asked at each reader during the forward pass, with ``x`` the
   residual stream the reader would read (``(N, T, d_model)``, before its input norm); it
   returns ``None`` (read ``x``) or ``(key, s)``: the reader reads ``x + s``. Readers whose
   shifts share a key share one recomputation.
2. A whole block's input, the logits: a pre-hook on the block's input norm (the final norm)
   adds the shift.
3. A head's channel: the attention block's input norm records ``x``; at the attention module
   each distinct shifted input ``x + s`` goes through the norm and the module once in capture
   mode (:mod:`circuits.attention`: q / k / v recorded, per query head, and nothing else
   computed; the output-gate logits recorded at ``attn_gate_logit``), and the real call then
   takes, for each shifted head and channel, that head's recorded query, key, value or gate
   logits (the attention function substitutes q / k / v; a write hook on ``attn_gate_logit``
   the gate). Every other head and channel reads the stream as is.

The edit of a head's input cannot be an :class:`interventions.edits.Edit`: no site names a
head's query, key or value input (they exist only inside the attention call), so it goes
through the circuits attention function, while writers are read with ``hook_sites``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import torch

from circuits.attention import attention, attention_module
from circuits.nodes import LOGITS, Port, graph_ports
from probe.errors import GatescopeError
from probe.hooks import hook_sites
from probe.locate import resolve_path
from probe.model import Model
from probe.sites import Site

Shift = Callable[[Port, torch.Tensor], tuple[object, torch.Tensor] | None]
_DROP = ("past_key_values", "past_key_value", "cache", "layer_past", "hidden_states")


def _input_arg(args, kwargs) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _with_input(args, kwargs, x):
    if args:
        return (x, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": x}


class ReaderEdits:
    """Hooks that apply ``shift`` to every reader of ``model`` (module docstring); use
    :meth:`installed` around the forward passes, and :attr:`capturing` to tell capture calls
    from the real forward in other hooks (writers must not record them)."""

    def __init__(self, model: Model, shift: Shift) -> None:
        self.model, self.shift = model, shift
        fam = model.family
        _, readers = graph_ports(model)
        self.heads: dict[int, list[Port]] = {}
        blocks: list[tuple[torch.nn.Module | None, Port]] = []
        for r in readers:
            if r == LOGITS:
                blocks.append((resolve_path(model.hf, fam.final_norm), r))
            elif r.channel == "in":
                site = r.writer_site
                path = fam.mlp_input if site.kind == "mlp_out" else fam.attn_input
                blocks.append((resolve_path(model.layer(site.layer), (path,)), r))
            else:
                self.heads.setdefault(r.writer_site.layer, []).append(r)
        norms = {i: resolve_path(model.layer(i), (fam.attn_input,)) for i in self.heads}
        missing = [str(r) for m, r in blocks if m is None]
        missing += [f"attention input of layer {i}" for i, m in norms.items() if m is None]
        if missing:
            raise GatescopeError(f"reader edits need the input norms; not found: {missing}")
        self.blocks = [(m, r) for m, r in blocks if m is not None]
        self.norms = {i: m for i, m in norms.items() if m is not None}
        self.modules = {i: attention_module(model, i) for i in self.heads}
        self.capturing = False
        self._x: dict[int, torch.Tensor] = {}
        self._subs: dict[int, dict] = {}
        self._gates: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._captured_gate: torch.Tensor | None = None

    def _block_hook(self, reader: Port):
        def pre(module, args, kwargs):
            if self.capturing:
                return None
            x = _input_arg(args, kwargs)
            got = self.shift(reader, x)
            return None if got is None else _with_input(args, kwargs, x + got[1].to(x.dtype))

        return pre

    def _norm_hook(self, layer: int):
        def pre(module, args, kwargs):
            if not self.capturing:
                self._x[layer] = _input_arg(args, kwargs)

        return pre

    def _capture(
        self, layer: int, module, args, kwargs, x: torch.Tensor
    ) -> tuple[dict, torch.Tensor | None]:
        """q / k / v (per query head) and gate logits of the block on residual input ``x``."""
        h = self.norms[layer](x)
        kw = {k: v for k, v in kwargs.items() if k not in _DROP}
        if "use_cache" in kw:
            kw["use_cache"] = False
        record: dict = {}
        self.capturing, self._captured_gate = True, None
        try:
            with attention(self.model, capture=True, record_qkv=record, substitute=None):
                if args:
                    module(h, *args[1:], **kw)
                else:
                    module(hidden_states=h, **kw)
        finally:
            self.capturing = False
        return record[layer], self._captured_gate

    def _attention_hook(self, layer: int):
        def pre(module, args, kwargs):
            if self.capturing:
                return None
            self._subs.pop(layer, None)
            self._gates.pop(layer, None)
            x = self._x.pop(layer)
            groups: dict[object, tuple[torch.Tensor, list[Port]]] = {}
            for r in self.heads[layer]:
                got = self.shift(r, x)
                if got is not None:
                    groups.setdefault(got[0], (got[1], []))[1].append(r)
            if not groups:
                return None
            n_heads = self.model.dims.n_heads
            subs: dict[str, list] = {}
            gate_tensor, gate_mask = None, torch.zeros(n_heads, dtype=torch.bool)
            for s, readers in groups.values():
                qkv, gate = self._capture(layer, module, args, kwargs, x + s.to(x.dtype))
                for r in readers:
                    h, c = r.writer_site.head, r.channel
                    assert c is not None  # a head's reader: q / k / v / g
                    if c == "g":
                        if gate is None:
                            raise GatescopeError(f"{r}: no gate logits recorded at layer {layer}")
                        gate_tensor = gate.clone() if gate_tensor is None else gate_tensor
                        gate_tensor[:, :, h] = gate[:, :, h]
                        gate_mask[h] = True
                        continue
                    if c not in subs:
                        subs[c] = [qkv[c].clone(), torch.zeros(n_heads, dtype=torch.bool)]
                    subs[c][0][:, h] = qkv[c][:, h]
                    subs[c][1][h] = True
            self._subs[layer] = {c: (t, m) for c, (t, m) in subs.items()}
            if gate_tensor is not None:
                self._gates[layer] = (gate_tensor, gate_mask)
            return None

        return pre

    def _gate_hook(self, layer: int):
        def fn(value, info):
            if self.capturing:
                self._captured_gate = value.detach()
                return None
            given = self._gates.get(layer)
            if given is None:
                return None
            tensor, mask = given
            return torch.where(mask.view(1, 1, -1, 1).to(value.device), tensor.to(value), value)

        return fn

    @contextmanager
    def installed(self) -> Iterator[None]:
        """The hooks, for the forward passes run inside (removed on exit, also on error)."""
        with ExitStack() as stack:
            handles = []
            stack.callback(lambda: [h.remove() for h in handles])
            for module, reader in self.blocks:
                handles.append(
                    module.register_forward_pre_hook(self._block_hook(reader), with_kwargs=True)
                )
            for layer in self.heads:
                handles.append(
                    self.norms[layer].register_forward_pre_hook(
                        self._norm_hook(layer), with_kwargs=True
                    )
                )
                handles.append(
                    self.modules[layer].register_forward_pre_hook(
                        self._attention_hook(layer), with_kwargs=True
                    )
                )
            gated = [
                (Site("attn_gate_logit", i), self._gate_hook(i))
                for i in self.heads
                if self.model.has_site(Site("attn_gate_logit", i))
            ]
            if gated:
                stack.enter_context(hook_sites(self.model, gated, write=True))
            stack.enter_context(attention(self.model, substitute=self._subs))
            yield
