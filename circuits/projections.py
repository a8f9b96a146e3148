"""Per-head slices of a model's output projection (a leaf helper of the circuits package)."""

from __future__ import annotations

import torch

from probe.locate import locate
from probe.model import Model
from probe.sites import Site


def o_proj_slices(model: Model, layer: int) -> torch.Tensor:
    """(H, d_model, d_head) the per-head slices of the output projection.

    The module is called on the basis vectors (minus its bias), so the layout of its weight
    (``nn.Linear`` (out, in), GPT-2's ``Conv1D`` (in, out), square or not) does not matter."""
    o_proj = locate(model, Site("head_out", layer))
    h, d = model.dims.n_heads, model.dims.d_head
    param = next(o_proj.parameters())
    with torch.no_grad():
        basis = torch.eye(h * d, dtype=param.dtype, device=param.device)
        rows = o_proj(basis) - o_proj(torch.zeros_like(basis[:1]))  # (h*d, d_model)
    return rows.float().view(h, d, -1).transpose(1, 2)
