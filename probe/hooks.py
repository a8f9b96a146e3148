"""The one hook mechanism: turn a :class:`Site` into a PyTorch hook that reads or writes it.

1. ``locate`` finds the module of a site on its layer (via the family's :class:`Tap`), or
   refuses with what the layer has instead (a gated-DeltaNet layer has no attention gate).
2. ``read_site`` views the module's input/output tensor as the site's value
   (``(B, T, ...)``: ``(B, T, d)`` or ``(B, T, H, d)`` per head, one head if the site names one).
3. ``write_site`` builds the new tensor from an edited value; sigmoid sites are written in
   logit space (so gate values 0 and 1 are exact) and only where the value changed.
4. ``hook_sites`` registers hooks for many (site, fn) pairs and removes them in ``finally``.

Hook functions receive ``(value, info)`` and return ``None`` (read only) or a new value.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from probe.errors import GatescopeError
from probe.families.base import Tap
from probe.families.layouts import Ctx, Layout, Transform
from probe.locate import locate
from probe.model import Model
from probe.sites import Site


@dataclass
class ForwardInfo:
    """What a hook may need to know about the forward pass it runs in.

    Attributes:
        attention_mask: the mask passed to the model, ``(B, T_total)`` (``None`` if none).
        offset: absolute position of this pass's first token (> 0 under a KV cache).
    """

    attention_mask: torch.Tensor | None = None
    offset: int = 0


HookFn = Callable[[torch.Tensor, ForwardInfo], torch.Tensor | None]


def _layout(tap: Tap) -> Layout:
    return cast(Layout, tap.layout)  # Tap.__post_init__ turns a layout's name into the Layout


def _transform(tap: Tap) -> Transform:
    return cast(Transform, tap.transform)  # called where the tap has one (a name is resolved)


def _ctx(model: Model, site: Site, module: nn.Module, tokens=None) -> Ctx:
    return Ctx(model.dims, model.text_config, model.layer(site.layer), module, tokens)


def read_site(raw, tap: Tap, ctx: Ctx, head: int | None) -> torch.Tensor:
    """The site's value from the module tensor ``raw`` (the layout's view, transformed)."""
    value = _layout(tap).read(raw, ctx)
    if tap.transform is not None:
        value = _transform(tap).forward(value, ctx)
    if head is not None:
        value = value[:, :, head]
    return value


def write_site(raw, tap: Tap, ctx: Ctx, site: Site, new: torch.Tensor):
    """A new module tensor equal to ``raw`` with the site's value replaced by ``new``.

    Transformed sites (sigmoid gates, decays) are written through the transform's inverse,
    and only where the value changed, so unchanged entries stay bit-identical.
    """
    if not tap.writable:
        raise GatescopeError(f"site '{site}' is read-only: {site.kind} cannot be edited")
    pre = _layout(tap).read(raw, ctx)
    old = pre if tap.transform is None else _transform(tap).forward(pre, ctx)
    target = old if site.head is None else old[:, :, site.head]
    if new.shape != target.shape:
        try:
            new = new.expand_as(target)
        except RuntimeError:
            raise GatescopeError(
                f"site '{site}': the edit's value has shape {tuple(new.shape)}, which does not "
                f"fit the site's value {tuple(target.shape)} (batch, tokens, ...); give a "
                f"vector of the site's width ({tuple(target.shape[2:])})"
                + headwise_hint(site, tuple(target.shape[2:]), tuple(new.shape))
            ) from None
    new = new.to(device=old.device)
    if site.head is not None:
        full = old.clone()
        full[:, :, site.head] = new.to(full.dtype)
        new = full
    if tap.transform is not None:
        new = new.to(old.dtype)
        new = torch.where(
            new != old, _transform(tap).inverse(new, ctx, str(site)).to(pre.dtype), pre
        )
    return _layout(tap).write(raw, ctx, new.to(dtype=pre.dtype))


def headwise_hint(site: Site, want: tuple, got: tuple) -> str:
    """A note for a headwise gate (one value per head, last axis 1) written per dimension."""
    if site.kind.startswith("attn_gate") and want and want[-1] == 1 and got and got[-1] != 1:
        return (
            f". This model's attention gate is headwise: one value per head (last axis 1), "
            f"not one per head dimension ({got[-1]} given)"
        )
    return ""


def get_raw(tap: Tap, args: tuple, kwargs: dict, output=None) -> torch.Tensor | None:
    if tap.side == "output":
        if _layout(tap).whole_output:
            return output
        return output[tap.index] if isinstance(output, tuple | list) else output
    if len(args) > tap.position:
        return args[tap.position]
    return kwargs.get(tap.arg)


def put_raw(tap: Tap, args: tuple, kwargs: dict, output, new: torch.Tensor) -> Any:
    if tap.side == "output":
        if _layout(tap).whole_output:
            return type(output)(new) if isinstance(output, tuple) else new
        if isinstance(output, tuple | list):
            items = list(output)
            items[tap.index] = new
            return type(output)(items) if isinstance(output, tuple) else items
        return new
    if len(args) > tap.position:
        return (*args[: tap.position], new, *args[tap.position + 1 :]), kwargs
    return args, {**kwargs, tap.arg: new}


@dataclass
class Planned:
    """One planned hook: on ``module``'s input or output (per ``tap``), ``apply`` maps the raw
    tensor to a new raw tensor (a write) or ``None`` (a read). Backends install these."""

    module: nn.Module
    tap: Tap
    apply: Callable[[torch.Tensor | None], torch.Tensor | None]


def _planned(model: Model, site: Site, tap: Tap, fn: HookFn, info: ForwardInfo) -> list[Planned]:
    """The hook(s) of one site: its module's, plus a read of the layer's input shape when the
    module sees tokens flattened (``(B*T, ...)``)."""
    module = locate(model, site, tap)
    shape: dict[str, tuple[int, int]] = {}

    def apply(raw):
        if raw is None:
            need = f" ({tap.needs}: load with attn_implementation='eager')" if tap.needs else ""
            raise GatescopeError(f"site '{site}' is not produced by this forward pass{need}")
        ctx = _ctx(model, site, module, shape.get("tokens"))
        new = fn(read_site(raw, tap, ctx, site.head), info)
        return None if new is None else write_site(raw, tap, ctx, site, new)

    plans = [Planned(module, tap, apply)]
    if _layout(tap).needs_tokens:

        def record(raw):
            shape["tokens"] = (int(raw.shape[0]), int(raw.shape[1]))

        plans.insert(0, Planned(model.layer(site.layer), _LAYER_INPUT, record))
    return plans


_LAYER_INPUT = Tap("", "input", writable=False)


def _sum_write_plan(model: Model, site: Site, tap: Tap, fn: HookFn, info: ForwardInfo):
    """Hooks writing a residual sum (``resid_mid = base + addend``) through its addend."""
    store: dict[str, torch.Tensor] = {}

    def keep_base(value, _info):
        store["base"] = value

    def write_addend(addend, info_):
        base = store.pop("base")
        current = base + addend
        new = fn(current, info_)
        if new is None:
            return None
        new = new.to(dtype=addend.dtype).expand_as(current)
        # exact where nothing changed (adds 0), and differentiable with respect to ``new``
        return addend + (new - current)

    assert tap.write_base is not None and tap.write_via is not None  # a sum's taps
    return [
        *_planned(model, site, tap.write_base, keep_base, info),
        *_planned(model, site, tap.write_via, write_addend, info),
    ]


def plan_hooks(
    model: Model, entries: Sequence[tuple[Site, HookFn]], write: bool, info: ForwardInfo
) -> list[Planned]:
    """Check every site and plan its hook(s); shared by every backend."""
    planned: list[Planned] = []
    for site, fn in entries:
        model.check_site(site)
        tap = model.family.taps[site.kind]
        if write and not tap.writable:
            raise GatescopeError(f"site '{site}' is read-only: {site.kind} cannot be edited")
        if write and tap.write_via is not None:
            planned.extend(_sum_write_plan(model, site, tap, fn, info))
        else:
            planned.extend(_planned(model, site, tap, fn, info))
    return planned


def update_info(info: ForwardInfo, kwargs: dict) -> None:
    """Refresh ``info`` from the keyword arguments of a model call."""
    info.attention_mask = kwargs.get("attention_mask")
    pos = kwargs.get("cache_position")
    past = kwargs.get("past_key_values")
    if past is None:
        past = kwargs.get("cache")  # the name transformers >= 5.2x gives the KV cache
    if pos is not None and pos.numel():
        info.offset = int(pos.reshape(-1)[0])
    elif past is not None and hasattr(past, "get_seq_length"):
        info.offset = int(past.get_seq_length())
    else:
        info.offset = 0


def install_torch_hook(p: Planned, thread: int | None = None) -> torch.utils.hooks.RemovableHandle:
    """Install a planned hook as a PyTorch forward (pre-)hook; returns its handle.

    With ``thread`` (a ``threading.get_ident()``), forward passes run by other threads on the
    same model (a web app serving two requests) pass through untouched.
    """
    tap = p.tap
    if tap.side == "output":

        def post(module, args, kwargs, output):
            if thread is not None and threading.get_ident() != thread:
                return None
            new = p.apply(get_raw(tap, args, kwargs, output))
            return None if new is None else put_raw(tap, args, kwargs, output, new)

        return p.module.register_forward_hook(post, with_kwargs=True)

    def pre(module, args, kwargs) -> Any:
        if thread is not None and threading.get_ident() != thread:
            return None
        new = p.apply(get_raw(tap, args, kwargs))
        return None if new is None else put_raw(tap, args, kwargs, None, new)

    return p.module.register_forward_pre_hook(pre, with_kwargs=True)


def hook_sites(model: Model, entries: Sequence[tuple[Site, HookFn]], write: bool = False):
    """Context manager: hook every ``(site, fn)`` for the forward passes run inside it.

    ``fn(value, info)`` returns ``None`` (read) or a new value (write, needs ``write=True``);
    sites that are sums in the residual stream are then written through their addend so the
    edit reaches the stream. Yields the :class:`ForwardInfo` the hooks see. Everything is
    removed on exit, also on error. The model's backend (local hooks by default, or nnsight)
    carries it out.
    """
    return model.backend.hook_sites(model, entries, write)
