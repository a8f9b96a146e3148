"""How the patched passes of an activation-patching sweep run (see ``interventions.patching``).

- :class:`_Scorer`: per-row logit difference of a pass, by the fast formula
  ``unembed(final_norm(x_last))`` at two tokens once it has reproduced the full forward.
- :func:`full_runs` / :func:`resumed_runs`: the source run (cached at every patched site) and
  the base run, either in full or past the shared prefix (``probe.resume``).
- :func:`sweep`: components in passes of many patches each (block ``j`` of rows, rows
  ``j*n .. (j+1)*n``, carrying component ``j``), resumed at their layer where possible, the
  first resumed pass checked by two unpatched rows; effects are raw mean logit differences.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from probe.errors import GatescopeError
from probe.hooks import hook_sites
from probe.locate import resolve_path
from probe.model import Model
from probe.resume import ResumablePass, StopPass
from probe.sites import Site
from probe.tasks import TaskBatch, logit_diff
from probe.tracer import Tracer

if TYPE_CHECKING:
    from interventions.patching import Component

log = logging.getLogger(__name__)


def select_rows(batch: TaskBatch, rows: torch.Tensor) -> TaskBatch:
    n = int(batch.lengths[rows].max())
    return TaskBatch(
        batch.clean_ids[rows, :n],
        batch.corrupt_ids[rows, :n],
        batch.attention_mask[rows, :n],
        batch.lengths[rows],
        batch.answer_ids[rows],
        batch.wrong_ids[rows],
    )


def hook_site(c: Component) -> Site:
    kind = "attn_gate_logit" if c.kind == "attn_gate" else c.kind
    return Site(kind, c.layer)


def _patch_fn(jobs: list[tuple[int, Component]], cache: torch.Tensor, n: int, src_off: int):
    """Block j of rows takes component j's value from ``cache`` (the source run from position
    ``src_off`` on). A pass that starts at ``info.offset`` (resumed past the shared prefix)
    covers positions ``offset ..`` only; positions before it are equal in both runs."""

    def fn(value, info):
        new, off = value.clone(), info.offset
        src = cache[:, off - src_off : off - src_off + value.shape[1]]  # this pass's positions
        for j, c in jobs:
            rows = slice(j * n, (j + 1) * n)
            if c.position is not None and c.position < off:
                continue
            pos = slice(None) if c.position is None else c.position - off
            if c.head is None:
                new[rows, pos] = src[:, pos]
            else:
                new[rows, pos, c.head] = src[:, pos, c.head]
        return new

    return fn


class _Scorer:
    """Per-row logit difference of forward passes with some hooks installed.

    The fast path stops each pass after the last layer and computes only the two logits the
    metric needs: ``unembed(final_norm(x_last))`` at the answer and wrong tokens. It is used
    only if that formula reproduced the full forward's logit difference (within 1e-4) on the
    source run, so a model whose logits are more than that (softcapping, a non-linear head)
    keeps the full forward; so does a backend on which a pass cannot be stopped.
    """

    def __init__(self, model: Model, batch: TaskBatch, hidden: torch.Tensor, full_ld) -> None:
        self.model, self.fast = model, False
        try:
            got = self.from_hidden(hidden, batch)
            self.fast = bool(torch.allclose(got, full_ld, rtol=1e-4, atol=1e-4))
        except Exception as exc:  # noqa: BLE001 -- any failure means: use the full forward
            log.debug("patching: no fast logit path (%s)", exc)

    @classmethod
    def trusted(cls, model: Model) -> _Scorer:
        """A fast scorer for a model whose fast formula has been checked before."""
        score = cls.__new__(cls)
        score.model, score.fast = model, True
        return score

    def from_hidden(self, hidden: torch.Tensor, batch: TaskBatch, offset: int = 0) -> torch.Tensor:
        """Per-row logit difference from the last layer's output ``hidden`` (B, T', d), whose
        first position is ``offset``."""
        model = self.model
        rows = torch.arange(len(batch.lengths), device=hidden.device)
        x = hidden[rows, batch.lengths.to(hidden.device) - 1 - offset]  # (B, d_model)
        unembed = resolve_path(model.hf, model.family.unembed)
        w_u = unembed.weight  # (V, d_model)
        h = resolve_path(model.hf, model.family.final_norm)(x.to(w_u.device))  # (B, d_model)
        ans, wrong = batch.answer_ids.to(w_u.device), batch.wrong_ids.to(w_u.device)
        ld = (h * (w_u[ans] - w_u[wrong])).sum(-1)  # (B,)
        if getattr(unembed, "bias", None) is not None:
            ld = ld + unembed.bias[ans] - unembed.bias[wrong]
        return ld.float().cpu()

    def _fast(self, ids, mask, entries, batch: TaskBatch) -> torch.Tensor:
        last = Site("resid_post", self.model.dims.n_layers - 1)

        def stop(value, info):
            raise StopPass(value)

        try:
            with hook_sites(self.model, [*entries, (last, stop)], write=True):
                self.model.forward(ids, mask)
        except StopPass as caught:
            return self.from_hidden(caught.value, batch)
        raise RuntimeError("the forward pass never reached the last layer")

    def __call__(self, ids, mask, entries, batch: TaskBatch) -> torch.Tensor:
        if self.fast:
            try:
                return self._fast(ids, mask, entries, batch)
            except Exception as exc:  # noqa: BLE001 -- a real error recurs on the full path
                log.debug("patching: fast path failed (%s); using the full forward", exc)
                self.fast = False
        with hook_sites(self.model, entries, write=True):
            return logit_diff(self.model.forward(ids, mask), batch).float().cpu()


def _tiled(batch: TaskBatch, base: torch.Tensor, k: int) -> TaskBatch:
    """The base prompts repeated ``k`` times (block j = rows j*n .. (j+1)*n)."""
    return TaskBatch(
        base.repeat(k, 1),  # (k * n, T)
        base.repeat(k, 1),
        batch.attention_mask.repeat(k, 1),
        batch.lengths.repeat(k),
        batch.answer_ids.repeat(k),
        batch.wrong_ids.repeat(k),
    )


def _patched_logit_diffs(
    chunk: list[Component], runs: _Runs, base, batch: TaskBatch, check: bool = False
):
    """Mean logit difference with each component of ``chunk`` patched, in one forward pass:
    the base prompts repeated once per component, block j of rows carrying patch j. With
    ``runs.resumed``, the pass starts at the chunk's first layer, after the shared prefix;
    ``check`` adds two unpatched rows that must reproduce the base run."""
    n, k = len(batch), len(chunk)
    jobs: dict[Site, list] = {}
    for j, c in enumerate(chunk):
        jobs.setdefault(hook_site(c), []).append((j, c))
    entries = [(s, _patch_fn(js, runs.cache[s], n, runs.src_off)) for s, js in jobs.items()]
    if runs.resumed is None:
        expanded = _tiled(batch, base, k)
        ld = runs.score(expanded.clean_ids, expanded.attention_mask, entries, expanded)
        return ld.view(k, n).mean(1).tolist()  # (k,)
    extra = min(2, n) if check else 0
    hidden = runs.resumed.run(entries, k, min(c.layer for c in chunk), extra)
    ld = runs.score.from_hidden(hidden[: k * n], _tiled(batch, base, k), runs.resumed.start)
    if check:
        sub = select_rows(batch, torch.arange(extra))
        got = runs.score.from_hidden(hidden[k * n :], sub, runs.resumed.start)
        if not torch.allclose(got, runs.base_rows[:extra], rtol=1e-4, atol=1e-4):
            raise ResumeMismatch
    return ld.view(k, n).mean(1).tolist()  # (k,)


@dataclass
class _Runs:
    """The source and base runs a sweep patches between, and how its passes run."""

    cache: Tracer | dict  # source values of every patched site, from position ``src_off`` on
    src_off: int
    score: _Scorer
    source_rows: torch.Tensor  # (n,) logit difference per prompt
    base_rows: torch.Tensor
    resumed: ResumablePass | None = None


def full_runs(model: Model, batch: TaskBatch, base, source, sites: list[Site]) -> _Runs:
    last = Site("resid_post", model.dims.n_layers - 1)
    with Tracer(model, sorted({*sites, last})) as cache:
        source_rows = logit_diff(model.forward(source, batch.attention_mask), batch).float().cpu()
    score = _Scorer(model, batch, cache[last], source_rows)
    return _Runs(cache, 0, score, source_rows, score(base, batch.attention_mask, [], batch))


RESUME_CHECK = "patching.resumed_passes"  # the key of the check in ``Model.verified``


def _full_forward_of_two(model: Model, batch: TaskBatch, base):
    """The first two prompts of ``batch`` run in full: ``(rows, logit differences, scorer)``,
    the scorer fast if its formula reproduced those logit differences."""
    sub = select_rows(batch, torch.arange(min(2, len(batch))))
    last = Site("resid_post", model.dims.n_layers - 1)
    with Tracer(model, [last]) as probe:
        full = logit_diff(model.forward(base[: len(sub), : sub.clean_ids.shape[1]],
                                        sub.attention_mask), sub).float().cpu()  # fmt: skip
    return sub, full, _Scorer(model, sub, probe[last], full)


def resumed_runs(model, batch: TaskBatch, base, source, sites, start: int) -> _Runs | None:
    """Source and base runs past the shared prefix, or ``None`` where passes cannot resume.

    The first time on a model, the fast logit formula and the resumed base run must
    reproduce the full forward of the first two prompts; the outcome is kept in
    ``model.verified`` (the first resumed pass of every sweep is checked as well)."""
    if model.backend.name != "hooks" or not 0 < start < int(batch.lengths.min()):
        return None
    verdict = model.verified.get(RESUME_CHECK)
    if verdict is False:
        return None
    if verdict is None:
        sub, full, score = _full_forward_of_two(model, batch, base)
        if not score.fast:
            model.verified[RESUME_CHECK] = False
            return None
    else:
        score = _Scorer.trusted(model)
    try:
        resumed = ResumablePass(model, base, batch.attention_mask, start)
        with Tracer(model, sorted(set(sites))) as traced:  # source and base in one pass
            hidden = resumed.forward(torch.cat([source, base]), record=1)  # (2n, T', d)
        n = len(batch)
        cache = {s: traced[s][:n] for s in traced.sites}
        source_rows = score.from_hidden(hidden[:n], batch, start)
        base_rows = score.from_hidden(hidden[n:], batch, start)
    except Exception as exc:  # noqa: BLE001 -- any failure means: run full passes
        log.debug("patching: cannot resume passes (%s)", exc)
        return None
    if verdict is None:
        same = torch.allclose(base_rows[: len(sub)], full, rtol=1e-4, atol=1e-4)
        model.verified[RESUME_CHECK] = same
        if not same:
            log.debug("patching: the resumed base run differs from the full forward")
            return None
    return _Runs(cache, start, score, source_rows, base_rows, resumed)


class ResumeMismatch(Exception):
    """A resumed pass's unpatched tile differs from the base run."""


def _chunks(comps: list[Component], per_chunk: int, by_layer: bool) -> list[list[Component]]:
    """Components in passes of at most ``per_chunk``; ``by_layer``: one layer per pass, so a
    resumed pass skips every layer before it."""
    if not by_layer:
        return [comps[i : i + per_chunk] for i in range(0, len(comps), per_chunk)]
    layers: dict[int, list[Component]] = {}
    for c in comps:
        layers.setdefault(c.layer, []).append(c)
    return [
        group[i : i + per_chunk]
        for _, group in sorted(layers.items())
        for i in range(0, len(group), per_chunk)
    ]


def normalisers(runs: _Runs, mode: str) -> tuple[float, float, float]:
    """``(LD_base, LD_clean, LD_corrupt)``, refusing a task whose runs do not differ."""
    base_ld, source_ld = float(runs.base_rows.mean()), float(runs.source_rows.mean())
    clean_ld, corrupt_ld = (source_ld, base_ld) if mode == "denoise" else (base_ld, source_ld)
    if abs(clean_ld - corrupt_ld) < 1e-6:
        raise GatescopeError(
            "clean and corrupt runs give the same logit difference; "
            "nothing to patch (check the corrupt prompts)"
        )
    return base_ld, clean_ld, corrupt_ld


def sweep(todo, runs: _Runs, base, batch: TaskBatch, batch_rows: int, progress, mode) -> None:
    """Set each component's ``effect`` to its patched mean logit difference."""
    chunks = _chunks(todo, max(1, batch_rows // len(batch)), by_layer=runs.resumed is not None)
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc=f"{mode} patching", unit="pass")
    for i, chunk in enumerate(chunks):
        values = _patched_logit_diffs(chunk, runs, base, batch, check=i == 0)
        for c, value in zip(chunk, values, strict=True):
            c.effect = value
