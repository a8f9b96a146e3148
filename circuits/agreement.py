"""Agreement study: activation patching (the ground truth) vs each attribution method.

For a task and site kinds, patch every component (per layer x position; heads per layer x
head over all positions), score the same components with every method of
:func:`methods_for` (every node method of the registry :mod:`circuits.methods`, with the
settings each names in ``variants``), and report per site kind and method: Pearson r,
Spearman r (ranks, ties averaged), the number of components n, and the top-k overlap
``|top_k(patching) & top_k(method)| / k`` by absolute value (k = 5, 10). Methods whose scores
are magnitudes (GradDrop) are compared with |patching effect|. Components at positions
before the first token where clean and corrupt differ are left out (both are exactly 0
there, and would inflate every figure). Each method's wall time is recorded with the
patching sweep's, and a Plotly scatter labels every point.

The target (issue 18): a *fast* method (at most 3 forward and 2 backward passes,
:attr:`circuits.methods.Method.fast`) with Pearson r >= 0.95 and top-10 overlap >= 0.8;
:meth:`AgreementResult.verdict` names the best one per site kind.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from circuits.attribution import attribute
from circuits.methods import METHODS, NODE_METHODS, Method, make
from interventions.patching import activation_patching
from probe.model import Model
from probe.sites import HEADED_KINDS
from probe.tasks import Task

TOP_K = (5, 10)
FIGURES = ("pearson", "spearman", "n", "top5", "top10")
TARGET = {"pearson": 0.95, "top10": 0.8}


def meets_target(stats: dict[str, float]) -> bool:
    """Pearson r >= 0.95 and top-10 overlap >= 0.8 (:data:`TARGET`)."""
    return all(stats[k] >= v for k, v in TARGET.items())


@dataclass
class AgreementResult:
    """``stats[kind][method]`` -> ``{pearson, spearman, n, top5, top10}``; paired scores,
    point labels, seconds per method and kind (``seconds[kind]["patching"]`` the sweep);
    ``methods``: each column's method object (``to_dict``); ``fast``: the columns whose method
    takes at most 3 forward and 2 backward passes."""

    model: str
    task: str
    stats: dict[str, dict[str, dict[str, float]]]
    patching: dict[str, list[float]]
    scores: dict[str, dict[str, list[float]]]
    labels: dict[str, list[str]]
    seconds: dict[str, dict[str, float]] = field(default_factory=dict)
    methods: dict[str, dict] = field(default_factory=dict)
    fast: list[str] = field(default_factory=list)

    @property
    def pearson(self) -> dict[str, dict[str, float]]:
        return {k: {m: s["pearson"] for m, s in row.items()} for k, row in self.stats.items()}

    @property
    def spearman(self) -> dict[str, dict[str, float]]:
        return {k: {m: s["spearman"] for m, s in row.items()} for k, row in self.stats.items()}

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def best(self, kind: str, fast: tuple[str, ...] | None = None) -> str:
        """The method with the highest Pearson r on ``kind`` (among ``fast`` if given)."""
        row = {m: s for m, s in self.stats[kind].items() if fast is None or m in fast}
        return max(row, key=lambda m: row[m]["pearson"])

    def verdict(self, kind: str) -> tuple[str | None, list[str]]:
        """(the fast method meeting the target with the highest Pearson r, or None; every
        fast method meeting it) on ``kind``."""
        row = self.stats[kind]
        meeting = [m for m in self.fast if m in row and meets_target(row[m])]
        best = max(meeting, key=lambda m: row[m]["pearson"]) if meeting else None
        return best, meeting

    def verdicts(self) -> str:
        """One line per site kind: which fast method is best by the target, or that none
        meets it (and the fast method nearest to it)."""
        lines = []
        for kind, row in self.stats.items():
            best, meeting = self.verdict(kind)
            if best is not None:
                s = row[best]
                lines.append(
                    f"{kind}: {best} (r {s['pearson']:.3f}, top-10 {s['top10']:.2f}); "
                    f"meeting the target: {', '.join(meeting)}"
                )
                continue
            fast = [m for m in self.fast if m in row]
            near = max(fast, key=lambda m: row[m]["pearson"]) if fast else None
            tail = (
                f"; highest fast r: {near} (r {row[near]['pearson']:.3f}, "
                f"top-10 {row[near]['top10']:.2f})"
                if near
                else ""
            )
            lines.append(f"{kind}: no fast method meets r >= 0.95 and top-10 >= 0.8{tail}")
        return "\n".join(lines)

    def table(self) -> str:
        """One block per site kind: a row per method with every figure and its time as a
        ratio to the patching sweep."""
        lines = []
        for kind, row in self.stats.items():
            sweep = self.seconds.get(kind, {}).get("patching")
            lines.append(f"{kind}  (patching sweep {sweep:.2f} s)" if sweep else kind)
            lines.append(
                "  method".ljust(52) + "".join(f.rjust(9) for f in FIGURES) + "time/patch".rjust(12)
            )
            for method, s in row.items():
                t = self.seconds.get(kind, {}).get(method)
                ratio = f"{t / sweep:12.3f}" if t and sweep else " " * 12
                cells = "".join(f"{int(s[f]):9d}" if f == "n" else f"{s[f]:9.3f}" for f in FIGURES)
                mark = "" if method in self.fast else " (slow)"
                lines.append(f"  {method}{mark}".ljust(52) + cells + ratio)
        return "\n".join(lines)

    def figure(self, kind: str, method: str | None = None):
        """Scatter of attribution vs patching on ``kind``, every point labelled (one method,
        or all of them)."""
        import plotly.graph_objects as go

        fig = go.Figure()
        for name, values in self.scores[kind].items():
            if method is not None and name != method:
                continue
            s = self.stats[kind][name]
            fig.add_trace(
                go.Scatter(
                    x=self.patching[kind],
                    y=values,
                    mode="markers+text",
                    text=self.labels[kind],
                    textposition="top center",
                    textfont={"size": 8},
                    name=f"{name} (r={s['pearson']:.2f}, rho={s['spearman']:.2f}, "
                    f"top10={s['top10']:.1f})",
                )
            )
        lo = min(self.patching[kind] + [0.0])
        hi = max(self.patching[kind] + [0.0])
        fig.add_trace(
            go.Scatter(
                x=[lo, hi],
                y=[lo, hi],
                mode="lines",
                name="y = x",
                line={"dash": "dot", "color": "gray"},
            )
        )
        fig.update_layout(
            title=f"{kind}: attribution vs activation patching ({self.task})",
            xaxis_title="activation patching effect",
            yaxis_title="attribution score",
        )
        return fig


def methods_for(model: Model) -> dict[str, Method]:
    """Column name (the method's label) -> method object: every node method of the registry,
    in the settings its ``variants`` names for ``model`` (e.g. RelP with and without the AH
    rule and both gate rules on gated models, IG with 5 and 2 steps, AtP* with GradDrop)."""
    out: dict[str, Method] = {}
    for name in NODE_METHODS:
        for method in METHODS[name].variants(model):
            out[method.label] = method
    return out


def _ranks(v: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties given their average rank."""
    order = np.argsort(v, kind="mergesort")
    ranks = np.empty(len(v), dtype=float)
    sorted_v = v[order]
    i = 0
    while i < len(v):
        j = i
        while j + 1 < len(v) and sorted_v[j + 1] == sorted_v[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def pearson(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Pearson's r (NaN where either is constant or there are fewer than two points)."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(a) < 2:
        return float("nan")
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rho: Pearson's r of the ranks (ties averaged)."""
    return pearson(_ranks(np.asarray(x, dtype=float)), _ranks(np.asarray(y, dtype=float)))


def overlap(x: list[float], y: list[float], k: int) -> float:
    """``|top_k(x) & top_k(y)| / k`` by absolute value (k capped at the length; ties broken
    by position)."""
    k = min(k, len(x))
    top = lambda v: set(sorted(range(len(v)), key=lambda i: -abs(v[i]))[:k])  # noqa: E731
    return len(top(x) & top(y)) / k if k else float("nan")


def compare(x: list[float], y: list[float]) -> dict[str, float]:
    """Pearson, Spearman, n and top-k overlaps of ``y`` against ``x``."""
    out: dict[str, float] = {"pearson": pearson(x, y), "spearman": spearman(x, y), "n": len(x)}
    for k in TOP_K:
        out[f"top{k}"] = overlap(x, y, k)
    return out


def agreement(
    model: Model,
    task: Task,
    kinds=("resid_pre", "attn_out", "mlp_out", "head_out"),
    progress: bool = True,
    methods: Mapping[str, Method | dict] | None = None,
    on_step: Callable[[str, int, int], None] | None = None,
) -> AgreementResult:
    """Every figure of the module docstring per site kind and method.

    ``methods`` maps a column name to a method object (or to ``attribute()`` keyword
    arguments, e.g. ``{"relp glu=grad": {"method": "relp", "glu_rule": "gradient"}}``);
    default :func:`methods_for`. ``on_step(what, done, total)`` is told after the patching
    sweep and after each method (a progress bar's hook)."""
    methods = methods_for(model) if methods is None else methods
    objects = {name: m if isinstance(m, Method) else make(**dict(m)) for name, m in methods.items()}
    total, done = len(kinds) * (1 + len(methods)), 0

    def step(what: str) -> None:
        nonlocal done
        done += 1
        if on_step is not None:
            on_step(what, done, total)

    stats, patched_all, scores_all, labels, seconds = {}, {}, {}, {}, {}
    for kind in kinds:
        sites = f"{kind}.*"
        positions = None if kind in HEADED_KINDS else "each"
        start = time.perf_counter()
        truth = activation_patching(model, task, sites, positions=positions, progress=progress)
        seconds[kind] = {"patching": time.perf_counter() - start}
        step(f"patched {kind}")
        keep = [
            i
            for i, c in enumerate(truth.components)
            if c.position is None or c.position >= truth.shared_prefix
        ]
        x = [truth.components[i].effect for i in keep]
        patched_all[kind] = x
        labels[kind] = [truth.components[i].label for i in keep]
        stats[kind], scores_all[kind] = {}, {}
        for name, m in objects.items():
            start = time.perf_counter()
            result = attribute(model, task, sites, m, positions=positions)
            seconds[kind][name] = time.perf_counter() - start
            y = [result.components[i].effect for i in keep]
            scores_all[kind][name] = y
            stats[kind][name] = compare(x if m.signed else [abs(v) for v in x], y)
            step(f"{name} on {kind}")
    return AgreementResult(
        model=model.name,
        task=task.name,
        stats=stats,
        patching=patched_all,
        scores=scores_all,
        labels=labels,
        seconds=seconds,
        methods={n: m.to_dict() for n, m in objects.items()},
        fast=[n for n, m in objects.items() if m.fast],
    )
