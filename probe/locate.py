"""Where a site lives: the module of a site on its layer, found through the family's taps.

A leaf of the core: it knows module paths only through a :class:`~probe.families.base.Tap`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from probe.errors import GatescopeError
from probe.families.base import Tap
from probe.sites import Site

if TYPE_CHECKING:
    from probe.model import Model


def resolve_path(root: nn.Module, paths: str | Sequence[str]) -> nn.Module | None:
    """The first of ``paths`` (dotted, from ``root``; "" is ``root``) that exists, or None."""
    for path in (paths,) if isinstance(paths, str) else paths:
        try:
            return root.get_submodule(path) if path else root
        except AttributeError:
            continue
    return None


class MissingModule(GatescopeError, AttributeError):
    """A module path of the family that the model lacks (an ``AttributeError`` too, as a
    missing attribute of the model is)."""


def module_at(root: nn.Module, paths: str | Sequence[str]) -> nn.Module:
    """:func:`resolve_path`, refusing a model that has none of ``paths``."""
    module = resolve_path(root, paths)
    if module is None:
        names = [paths] if isinstance(paths, str) else list(paths)
        raise MissingModule(
            f"{type(root).__name__} has no module at {' or '.join(map(repr, names))}; "
            "is the model of the family it was loaded as?"
        )
    return module


def tensor_of(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """The tensor ``module.<name>`` (a parameter or buffer), refusing anything else."""
    value = getattr(module, name, None)
    if not isinstance(value, torch.Tensor):
        raise MissingModule(f"{type(module).__name__} has no tensor '{name}'")
    return value


def _describe_missing(layer: nn.Module, path: str) -> str:
    node, walked = layer, []
    for part in path.split("."):
        child = getattr(node, part, None)
        if not isinstance(child, nn.Module):
            holder = ".".join(walked) or "the layer"
            kind = type(node).__name__
            has = ", ".join(n for n, _ in node.named_children()) or "nothing"
            return f"{holder} ({kind}) has no '{part}' (it has: {has})"
        node, walked = child, [*walked, part]
    return f"'{path}' is not usable"


def locate(model: Model, site: Site, tap: Tap | None = None) -> nn.Module:
    """The module holding ``site`` (or the given tap of its layer); refuse clearly if absent."""
    tap = tap or model.family.taps[site.kind]
    layer = model.layer(site.layer)
    module = resolve_path(layer, tap.modules)
    if module is None:
        where = [
            i
            for i in range(model.dims.n_layers)
            if resolve_path(model.layer(i), tap.modules) is not None
        ]
        span = ", ".join(map(str, where)) if where else "no layer of this model"
        raise GatescopeError(
            f"site '{site}': layer {site.layer} lacks it: "
            f"{_describe_missing(layer, tap.modules[0])}. {site.kind} exists on: {span}"
        )
    return module
