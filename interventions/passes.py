"""The engine of an activation-patching sweep (see ``interventions.patching``).

:func:`run_sweep` is the one place that decides how the patched passes run:

1. **Resumed** (``probe.resume``) where the local hook backend runs the model, the clean and
   corrupt prompts share a prefix, and the model passed the check: the fast logit formula
   and the resumed base run reproduce the full forward of two prompts. The verdict is kept
   per loaded model (:data:`_VERDICTS`, keyed weakly by the Hugging Face module), so the
   check runs once per model; every sweep still checks its first resumed pass with two
   unpatched rows and reruns everything in full if they differ.
2. **Full** passes otherwise. Every fallback is logged at INFO with its reason, and the reason
   is returned (``PatchingResult.resume_reason``).

Passes carry many patches each (block ``j`` of rows, rows ``j*n .. (j+1)*n``, carrying
component ``j``), one layer per pass when resumed. Rows per pass come from ``batch_rows``
and the memory budget (:func:`rows_for_budget`): the estimate of one pass's memory is the
tiled prefix cache (KV and linear-attention states), the layer activations and the KV the
pass appends, per row, on top of what the sweep holds once (source values, recorded layer
inputs, prefix cache). Effects are raw mean logit differences; patching normalises them.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass

import torch

from interventions.budget import human, resolve_budget
from interventions.components import Component, value_site
from probe.errors import GatescopeError
from probe.hooks import hook_sites
from probe.locate import module_at, tensor_of
from probe.model import Model
from probe.resume import CannotResume, ResumablePass, StopPass, cache_bytes
from probe.sites import Site
from probe.tasks import TaskBatch, logit_diff
from probe.tracer import Tracer

log = logging.getLogger(__name__)

# hf module -> outcome of the check of resumed passes against the full forward: (ok, reason)
_VERDICTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
TOL = 1e-4  # agreement required of the fast and resumed paths with the full forward (float32)


def _tol(model: Model) -> float:
    """:data:`TOL`, or a few rounding steps of the model's dtype where that is coarser."""
    return max(TOL, 4 * torch.finfo(next(model.hf.parameters()).dtype).eps)


def resume_verdict(model: Model) -> tuple[bool, str] | None:
    """The kept outcome of the check of resumed passes on ``model`` (``None``: not run yet)."""
    return _VERDICTS.get(model.hf)


def forget_verdict(model: Model) -> None:
    """Drop the kept outcome, so the next sweep checks resumed passes again."""
    _VERDICTS.pop(model.hf, None)


def _set_verdict(model: Model, ok: bool, reason: str) -> None:
    _VERDICTS[model.hf] = (ok, reason)


# Old names kept until nothing imports them (use value_site and TaskBatch.select).
hook_site = value_site


def select_rows(batch: TaskBatch, rows: torch.Tensor) -> TaskBatch:
    """Old name of :meth:`TaskBatch.select`."""
    return batch.select(rows)


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

    ``fast``: each pass stops after the last layer and computes only the two logits the
    metric needs, ``unembed(final_norm(x_last))`` at the answer and wrong tokens. Decided once
    (``why_not`` says why not): the local hook backend, and the formula reproducing the full
    forward's logit difference within :data:`TOL` (so softcapping or a non-linear head keeps
    the full forward)."""

    def __init__(self, model: Model, fast: bool, why_not: str = "") -> None:
        self.model, self.fast, self.why_not = model, fast, why_not

    @classmethod
    def checked(cls, model: Model, batch: TaskBatch, hidden, full_ld) -> _Scorer:
        if model.backend.name != "hooks":
            return cls(model, False, f"the {model.backend.name} backend cannot stop a pass")
        probe = cls(model, True)
        try:
            got = probe.from_hidden(hidden, batch)
        except (AttributeError, TypeError) as exc:  # no final norm or unembedding to call
            return cls(model, False, f"no fast logit formula ({type(exc).__name__}: {exc})")
        if not torch.allclose(got, full_ld, rtol=_tol(model), atol=_tol(model)):
            gap = float((got - full_ld).abs().max())
            return cls(model, False, f"unembed(final_norm(x)) is {gap:.2g} off the logits")
        return probe

    def from_hidden(self, hidden: torch.Tensor, batch: TaskBatch, offset: int = 0) -> torch.Tensor:
        """Per-row logit difference from the last layer's output ``hidden`` (B, T', d), whose
        first position is ``offset``."""
        model = self.model
        rows = torch.arange(len(batch.lengths), device=hidden.device)
        x = hidden[rows, batch.lengths.to(hidden.device) - 1 - offset]  # (B, d_model)
        unembed = module_at(model.hf, model.family.unembed)
        w_u = tensor_of(unembed)  # (V, d_model)
        h = module_at(model.hf, model.family.final_norm)(x.to(w_u.device))  # (B, d_model)
        ans, wrong = batch.answer_ids.to(w_u.device), batch.wrong_ids.to(w_u.device)
        ld = (h.float() * (w_u[ans] - w_u[wrong]).float()).sum(-1)  # (B,) in float32
        if getattr(unembed, "bias", None) is not None:
            bias = tensor_of(unembed, "bias")
            ld = ld + (bias[ans] - bias[wrong]).float()
        return ld.cpu()

    def __call__(self, ids, mask, entries, batch: TaskBatch) -> torch.Tensor:
        if not self.fast:
            with hook_sites(self.model, entries, write=True):
                return logit_diff(self.model.forward(ids, mask).float(), batch).cpu()
        last = Site("resid_post", self.model.dims.n_layers - 1)

        def stop(value, info):
            raise StopPass(value)

        try:
            with hook_sites(self.model, [*entries, (last, stop)], write=True):
                self.model.forward(ids, mask)
        except StopPass as caught:
            return self.from_hidden(caught.value, batch)
        raise RuntimeError("the forward pass never reached the last layer")


@dataclass
class _Runs:
    """The source and base runs a sweep patches between, and how its passes run."""

    cache: Tracer | dict  # source values of every patched site, from position ``src_off`` on
    src_off: int
    score: _Scorer
    source_rows: torch.Tensor  # (n,) logit difference per prompt
    base_rows: torch.Tensor
    resumed: ResumablePass | None = None

    def held_bytes(self) -> int:
        """Bytes the sweep holds once: source values, recorded layer inputs, prefix cache."""
        sites = self.cache if isinstance(self.cache, dict) else self.cache.sites
        held = sum(self.cache[s].numel() * self.cache[s].element_size() for s in sites)
        if self.resumed is not None:
            held += cache_bytes(self.resumed.cache)
            calls = self.resumed.calls or []
            held += sum(c.hidden.numel() * c.hidden.element_size() for c in calls)
        return held


def full_runs(model: Model, batch: TaskBatch, base, source, sites: list[Site]) -> _Runs:
    last = Site("resid_post", model.dims.n_layers - 1)
    with Tracer(model, sorted({*sites, last})) as cache:
        source_rows = logit_diff(model.forward(source, batch.attention_mask).float(), batch).cpu()
    score = _Scorer.checked(model, batch, cache[last], source_rows)
    if not score.fast:
        log.info("patching: full logits in every pass: %s", score.why_not)
    base_rows = score(base, batch.attention_mask, [], batch)
    return _Runs(cache=cache, src_off=0, score=score, source_rows=source_rows, base_rows=base_rows)


def _check_on_two(model: Model, batch: TaskBatch, base) -> tuple[TaskBatch, torch.Tensor, _Scorer]:
    """The first two prompts of ``batch`` run in full: ``(rows, logit differences, scorer)``."""
    sub = batch.select(torch.arange(min(2, len(batch))))
    last = Site("resid_post", model.dims.n_layers - 1)
    ids = base[: len(sub), : sub.clean_ids.shape[1]]
    with Tracer(model, [last]) as probe:
        full = logit_diff(model.forward(ids, sub.attention_mask).float(), sub).cpu()
    return sub, full, _Scorer.checked(model, sub, probe[last], full)


def _why_not_resume(model: Model, batch: TaskBatch, start: int, resume: bool) -> str:
    if not resume:
        return "resume=False"
    if model.backend.name != "hooks":
        return f"the {model.backend.name} backend cannot resume passes"
    if start == 0:
        return "the clean and corrupt prompts differ at their first token"
    if start >= int(batch.lengths.min()):
        return "the clean and corrupt prompts do not differ before the last token of a prompt"
    verdict = resume_verdict(model)
    if verdict is not None and not verdict[0]:
        return f"{verdict[1]} (kept from an earlier check of this model)"
    return ""


def resumed_runs(model, batch: TaskBatch, base, source, sites, start: int):
    """``(runs, "")`` past the shared prefix, or ``(None, reason)`` where they cannot resume.

    The first time on a model, the fast logit formula and the resumed base run must
    reproduce the full forward of the first two prompts; the outcome is kept
    (:func:`resume_verdict`)."""
    checked = resume_verdict(model) is not None
    if not checked:
        sub, full, score = _check_on_two(model, batch, base)
        if not score.fast:
            _set_verdict(model, False, score.why_not)
            return None, score.why_not
    else:
        score = _Scorer(model, True)
    try:
        resumed = ResumablePass(model, base, batch.attention_mask, start)
        with Tracer(model, sorted(set(sites))) as traced:  # source and base in one pass
            hidden = resumed.forward(torch.cat([source, base]), record=1)  # (2n, T', d)
    except CannotResume as exc:
        _set_verdict(model, False, str(exc))
        return None, str(exc)
    n = len(batch)
    cache = {s: traced[s][:n] for s in traced.sites}
    source_rows = score.from_hidden(hidden[:n], batch, start)
    base_rows = score.from_hidden(hidden[n:], batch, start)
    if not checked:
        gap = float((base_rows[: len(sub)] - full).abs().max())
        ok = gap <= _tol(model) * (1 + float(full.abs().max()))
        reason = "" if ok else f"the resumed base run is {gap:.2g} off the full forward"
        _set_verdict(model, ok, reason)
        if not ok:
            return None, reason
    runs = _Runs(
        cache=cache,
        src_off=start,
        score=score,
        source_rows=source_rows,
        base_rows=base_rows,
        resumed=resumed,
    )
    return runs, ""


def _patched_logit_diffs(
    chunk: list[Component], runs: _Runs, base, batch: TaskBatch, check: bool = False
) -> list[float] | None:
    """Mean logit difference with each component of ``chunk`` patched, in one forward pass:
    the base prompts repeated once per component, block j of rows carrying patch j. With
    ``runs.resumed``, the pass starts at the chunk's first layer, after the shared prefix;
    ``check`` adds two unpatched rows that must reproduce the base run (``None`` if not)."""
    n, k = len(batch), len(chunk)
    jobs: dict[Site, list] = {}
    for j, c in enumerate(chunk):
        jobs.setdefault(value_site(c), []).append((j, c))
    entries = [(s, _patch_fn(js, runs.cache[s], n, runs.src_off)) for s, js in jobs.items()]
    if runs.resumed is None:
        expanded = batch.tile(k, base)
        ld = runs.score(expanded.clean_ids, expanded.attention_mask, entries, expanded)
        return ld.view(k, n).mean(1).tolist()  # (k,)
    extra = min(2, n) if check else 0
    hidden = runs.resumed.run(entries, k, min(c.layer for c in chunk), extra)
    ld = runs.score.from_hidden(hidden[: k * n], batch.tile(k, base), runs.resumed.start)
    if check:
        sub = batch.select(torch.arange(extra))
        got = runs.score.from_hidden(hidden[k * n :], sub, runs.resumed.start)
        tol = _tol(runs.score.model)
        if not torch.allclose(got, runs.base_rows[:extra], rtol=tol, atol=tol):
            return None
    return ld.view(k, n).mean(1).tolist()  # (k,)


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


# ---- memory (sizes and budgets: interventions.budget) -------------------------------------


def _row_bytes(model: Model, batch: TaskBatch, runs: _Runs, esize: int) -> int:
    """Estimated bytes one row adds to a patched pass (see the module docstring)."""
    dims = model.dims
    t_all = batch.clean_ids.shape[1]
    t = t_all - runs.src_off  # positions a pass covers
    heads, kv, d_head, d_mlp = dims.n_heads, dims.n_kv_heads, dims.d_head, dims.d_mlp
    per_pos = 6 * dims.d_model + 3 * d_mlp + (heads + 2 * kv) * d_head + 2 * heads * t_all
    per_pos += dims.n_layers * 2 * kv * d_head  # KV the pass appends, every layer
    row = t * per_pos * esize
    if runs.resumed is not None:
        row += cache_bytes(runs.resumed.cache) // len(batch)  # the tiled prefix cache
        # linear-attention layers: the chunked delta rule keeps per-chunk states
        row += 4 * cache_bytes(runs.resumed.cache) // len(batch)
    if not runs.score.fast:
        row += t_all * dims.vocab * 4  # every position's logits, in float32
    return int(row)


@dataclass
class Plan:
    """How the sweep's passes run: ``rows`` per pass and the estimated peak bytes."""

    rows: int
    held: int
    per_row: int
    budget: int | None

    @property
    def peak(self) -> int:
        return self.held + self.rows * self.per_row


def plan_rows(model, batch: TaskBatch, runs: _Runs, batch_rows: int, budget: int | None) -> Plan:
    """Rows per pass: ``batch_rows`` at most, whole components of ``n`` rows, and within the
    memory ``budget``; a budget that cannot hold one component's rows is refused."""
    n = len(batch)
    esize = next(model.hf.parameters()).element_size()
    per_row, held = _row_bytes(model, batch, runs, esize), runs.held_bytes()
    rows = max(n, batch_rows // n * n)
    if budget is not None:
        fits = (budget - held) // per_row if budget > held else 0
        if fits < n:
            need = held + n * per_row
            raise GatescopeError(
                f"max_memory {budget} bytes cannot hold one patched component ({n} prompts): "
                f"about {need} bytes are needed ({held} held by the sweep, {per_row} per "
                f"row); give at least {need} bytes (e.g. '{human(need, pad=1.05)}') or fewer "
                "prompts"
            )
        rows = min(rows, fits // n * n)
    return Plan(rows=rows, held=held, per_row=per_row, budget=budget)


def _sweep(todo, runs: _Runs, base, batch: TaskBatch, rows: int, progress, mode) -> int:
    """Set each component's ``effect`` to its patched mean logit difference; returns the
    rows of the largest pass, or 0 if the first resumed pass's unpatched rows differ from
    the base run."""
    chunks = _chunks(todo, max(1, rows // len(batch)), by_layer=runs.resumed is not None)
    largest = max((len(c) for c in chunks), default=0) * len(batch)
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc=f"{mode} patching", unit="pass")
    for i, chunk in enumerate(chunks):
        values = _patched_logit_diffs(chunk, runs, base, batch, check=i == 0)
        if values is None:
            return 0
        for c, value in zip(chunk, values, strict=True):
            c.effect = value
    return max(largest, 1)


@dataclass
class SweepOutcome:
    """What :func:`run_sweep` reports next to the effects it set."""

    clean_logit_diff: float
    corrupt_logit_diff: float
    resumed: bool
    resume_reason: str  # why passes did not resume ("" when they did)
    rows_per_pass: int  # rows of the largest pass run
    peak_memory: int  # bytes: measured on CUDA, estimated from shapes elsewhere
    memory: dict  # held, per_row (estimates, bytes), budget, measured (bool)


def run_sweep(
    model: Model,
    batch: TaskBatch,
    base,
    source,
    todo: list[Component],
    start: int,
    mode: str,
    *,
    batch_rows: int = 256,
    resume: bool = True,
    max_memory: int | float | str | None = "auto",
    progress: bool = False,
) -> SweepOutcome:
    """Set the normalised effect of every component in ``todo`` (see the module docstring)."""
    budget = resolve_budget(max_memory, model.device)
    sites = sorted({value_site(c) for c in todo} or {Site("resid_pre", 0)})
    cuda = torch.device(model.device).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(model.device)
        before = torch.cuda.memory_allocated(model.device)
    reason = _why_not_resume(model, batch, start, resume)
    runs = None
    if not reason:
        runs, reason = resumed_runs(model, batch, base, source, sites, start)
    if runs is not None:
        normalisers(runs, mode)  # refuse a task whose runs do not differ before any pass
        plan = plan_rows(model, batch, runs, batch_rows, budget)
        used = _sweep(todo, runs, base, batch, plan.rows, progress, mode)
        if not used:
            reason = "a resumed pass's unpatched rows differed from the base run"
            _set_verdict(model, False, reason)
            runs = None
    if runs is None:
        log.info("patching: full passes: %s", reason)
        runs = full_runs(model, batch, base, source, sites)
        normalisers(runs, mode)
        plan = plan_rows(model, batch, runs, batch_rows, budget)
        used = _sweep(todo, runs, base, batch, plan.rows, progress, mode)
    else:
        log.info("patching: resumed passes after %d shared tokens", start)
    base_ld, clean_ld, corrupt_ld = normalisers(runs, mode)
    for c in todo:
        c.effect = (c.effect - base_ld) / (clean_ld - corrupt_ld)
    peak = plan.held + used * plan.per_row
    if cuda:
        peak = torch.cuda.max_memory_allocated(model.device) - before
    memory = {"held": plan.held, "per_row": plan.per_row, "budget": budget, "measured": cuda}
    return SweepOutcome(
        clean_logit_diff=clean_ld,
        corrupt_logit_diff=corrupt_ld,
        resumed=runs.resumed is not None,
        resume_reason=reason,
        rows_per_pass=used,
        peak_memory=int(peak),
        memory=memory,
    )
