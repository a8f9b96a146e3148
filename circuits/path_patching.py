"""Path patching: the effect of a sender along one path into one receiver (Wang et al. 2022,
arXiv 2211.00593; Goldowsky-Dill et al. 2023, arXiv 2304.05969).

Senders are writers into the residual stream (``embed``, ``head.L.H``, ``mlp.L``); a
receiver is one head's query, key or value input (``head.L.H.q`` / ``.k`` / ``.v``) or the
logits (``logits``, the final norm's input). Denoising, like activation patching:

1. The corrupt run is the base; the sender's write changes by ``D = write_clean -
   write_corrupt`` (a head's write through its slice of ``o_proj``).
2. The path sender -> receiver is the direct one through the skip stream: the receiver head
   reads ``resid_pre.R + D`` on that input only (its other two inputs stay the corrupt
   run's, every other component is untouched); its new output is computed by calling the
   attention block on that input (:mod:`circuits.atp_star`'s attention function replaces
   the other inputs).
3. The receiver's new output is patched in with :func:`interventions.edits.intervene`
   (``Patch`` on ``head_out.R.H``; for the logits ``Patch`` on the last ``resid_post``),
   and everything downstream of the receiver runs freely. Effect: ``(LD - LD_corrupt) /
   (LD_clean - LD_corrupt)``.

On a model that is linear apart from attention with constant patterns, a sender's path
effects into every receiver sum to its activation-patching effect (tested).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch

from circuits.atp_star import _Blocks
from circuits.projections import o_proj_slices
from interventions.edits import Patch, intervene
from probe.errors import GatescopeError
from probe.hooks import locate
from probe.model import Model
from probe.sites import Site
from probe.tasks import Task, logit_diff
from probe.tracer import Tracer

CHANNELS = ("q", "k", "v")


@dataclass
class PathPatchingResult:
    """``effects[sender][receiver]``: the normalised effect of each path."""

    model: str
    task: str
    clean_logit_diff: float
    corrupt_logit_diff: float
    effects: dict[str, dict[str, float]]

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def _parse_sender(model: Model, name: str) -> tuple[int, str]:
    """(layer the write enters the stream after, kind) for a sender name."""
    parts = name.split(".")
    n, h = model.dims.n_layers, model.dims.n_heads
    if name == "embed":
        return -1, "embed"
    if parts[0] == "head" and len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
        if int(parts[1]) < n and int(parts[2]) < h:
            return int(parts[1]), "head"
    if parts[0] == "mlp" and len(parts) == 2 and parts[1].isdigit() and int(parts[1]) < n:
        return int(parts[1]), "mlp"
    raise GatescopeError(
        f"sender '{name}' is not embed, head.L.H or mlp.L of this model ({n} layers, {h} heads)"
    )


def _parse_receiver(model: Model, name: str) -> tuple[int, int, str] | None:
    """(layer, head, channel), or None for the logits."""
    if name == "logits":
        return None
    parts = name.split(".")
    n, h = model.dims.n_layers, model.dims.n_heads
    ok = len(parts) == 4 and parts[0] == "head" and parts[3] in CHANNELS
    if ok and parts[1].isdigit() and parts[2].isdigit():
        if int(parts[1]) < n and int(parts[2]) < h:
            return int(parts[1]), int(parts[2]), parts[3]
    raise GatescopeError(
        f"receiver '{name}' is not head.L.H.q / .k / .v or logits of this model "
        f"({n} layers, {h} heads)"
    )


@torch.no_grad()
def path_patching(
    model: Model, task: Task, senders: list[str], receivers: list[str]
) -> PathPatchingResult:
    """The effect of every sender along its direct path into every receiver downstream of
    it (module docstring); pairs where the receiver is not downstream are left out."""
    batch = task.tokenize(model.tokenizer)
    n = model.dims.n_layers
    parsed_r = {r: _parse_receiver(model, r) for r in receivers}
    parsed_s = {s: _parse_sender(model, s) for s in senders}
    sites = ["resid_pre.*", "head_out.*", "mlp_out.*", f"resid_post.{n - 1}"]
    runs = {}
    for name, ids in (("clean", batch.clean_ids), ("corrupt", batch.corrupt_ids)):
        with Tracer(model, sites) as tr:
            ld = float(logit_diff(model.forward(ids, batch.attention_mask), batch).mean())
        runs[name] = (ld, {s: tr[s].float() for s in model.sites(",".join(sites))})
    (clean_ld, clean), (corrupt_ld, corrupt) = runs["clean"], runs["corrupt"]
    span = clean_ld - corrupt_ld
    if abs(span) < 1e-6:
        raise GatescopeError("clean and corrupt runs give the same logit difference")
    blocks = _Blocks(model, batch)

    def write(name: str) -> torch.Tensor:
        layer, kind = parsed_s[name]
        if kind == "embed":
            site = Site("resid_pre", 0)
            return clean[site] - corrupt[site]
        if kind == "mlp":
            site = Site("mlp_out", layer)
            return clean[site] - corrupt[site]
        head = int(name.split(".")[2])
        site = Site("head_out", layer)
        dz = (clean[site] - corrupt[site])[:, :, head]
        return dz @ o_proj_slices(model, layer)[head].T

    def head_output(layer: int, head: int, channel: str, x: torch.Tensor) -> torch.Tensor:
        seen = {}

        def keep(module, args):
            seen["z"] = args[0].detach()

        handle = locate(model, Site("head_out", layer)).register_forward_pre_hook(keep)
        try:
            blocks(layer, x, only=channel)
        finally:
            handle.remove()
        z = seen["z"]
        return z.view(*z.shape[:2], model.dims.n_heads, -1)[:, :, head]

    def metric(edit) -> float:
        with intervene(model, [edit]):
            logits = model.forward(batch.corrupt_ids, batch.attention_mask)
        return (float(logit_diff(logits, batch).mean()) - corrupt_ld) / span

    effects: dict[str, dict[str, float]] = {}
    for s in senders:
        delta, s_layer = write(s), parsed_s[s][0]
        effects[s] = {}
        for r, where in parsed_r.items():
            if where is None:
                last = Site("resid_post", n - 1)
                effects[s][r] = metric(Patch(last, source=corrupt[last] + delta))
                continue
            layer, head, channel = where
            if layer <= s_layer:
                continue
            x = corrupt[Site("resid_pre", layer)] + delta
            z = head_output(layer, head, channel, x)
            effects[s][r] = metric(Patch(Site("head_out", layer, head), source=z))
    return PathPatchingResult(model.name, task.name, clean_ld, corrupt_ld, effects)
