"""Agreement study: activation patching (the ground truth) vs each attribution method.

For a task and site kinds, patch every component (per layer x position; heads per layer x
head over all positions), score the same components with every method of
:func:`methods_for` (objects of :mod:`circuits.methods`), and report per site kind and
method: Pearson r, Spearman r, the number of components n, and the top-k overlap
``|top_k(patching) & top_k(method)| / k`` by absolute value (k = 5, 10). Components at
positions before the first token where clean and corrupt differ are left out (both are
exactly 0 there, and would inflate every figure). Each method's wall time is recorded with
the patching sweep's, and a Plotly scatter labels every point.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from circuits.attribution import attribute
from circuits.methods import IG, AtP, AtPStar, Method, RelP, RelPStar
from interventions.patching import activation_patching
from probe.model import Model
from probe.sites import HEADED_KINDS
from probe.tasks import Task

TOP_K = (5, 10)
FIGURES = ("pearson", "spearman", "n", "top5", "top10")


@dataclass
class AgreementResult:
    """``stats[kind][method]`` -> ``{pearson, spearman, n, top5, top10}``; paired scores,
    point labels, seconds per method and kind (``seconds[kind]["patching"]`` the sweep)."""

    model: str
    task: str
    stats: dict[str, dict[str, dict[str, float]]]
    patching: dict[str, list[float]]
    scores: dict[str, dict[str, list[float]]]
    labels: dict[str, list[str]]
    seconds: dict[str, dict[str, float]] = field(default_factory=dict)
    methods: dict[str, dict] = field(default_factory=dict)

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

    def table(self) -> str:
        """One block per site kind: a row per method with every figure and its time as a
        ratio to the patching sweep."""
        lines = []
        for kind, row in self.stats.items():
            sweep = self.seconds.get(kind, {}).get("patching")
            lines.append(f"{kind}  (patching sweep {sweep:.2f} s)" if sweep else kind)
            lines.append(
                "  method".ljust(34) + "".join(f.rjust(9) for f in FIGURES) + "time/patch".rjust(12)
            )
            for method, s in row.items():
                t = self.seconds.get(kind, {}).get(method)
                ratio = f"{t / sweep:12.3f}" if t and sweep else " " * 12
                cells = "".join(f"{int(s[f]):9d}" if f == "n" else f"{s[f]:9.3f}" for f in FIGURES)
                lines.append(f"  {method}".ljust(34) + cells + ratio)
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
    """Column name -> method object: AtP, AtP*, RelP with attention held constant (both gate
    rules on gated models) and without, RelP*, IG (5 steps, and 2: 3 forward and 2 backward
    passes)."""
    methods: dict[str, Method] = {"atp": AtP(), "atp*": AtPStar()}
    gates = ("half", "constant") if model.is_gated else ("half",)
    for gate in gates:
        suffix = f" gate={gate}" if model.is_gated else ""
        methods[f"relp AH{suffix}"] = RelP(gate_rule=gate)
        methods[f"relp{suffix}"] = RelP(gate_rule=gate, hold_attention=False)
        methods[f"relp*{suffix}"] = RelPStar(gate_rule=gate)
    methods["ig"] = IG(steps=5)
    methods["ig steps=2"] = IG(steps=2)
    return methods


def overlap(x: list[float], y: list[float], k: int) -> float:
    """``|top_k(x) & top_k(y)| / k`` by absolute value (k capped at the length)."""
    k = min(k, len(x))
    top = lambda v: set(sorted(range(len(v)), key=lambda i: -abs(v[i]))[:k])  # noqa: E731
    return len(top(x) & top(y)) / k if k else float("nan")


def compare(x: list[float], y: list[float]) -> dict[str, float]:
    """Pearson, Spearman, n and top-k overlaps of ``y`` against ``x``."""
    from scipy.stats import pearsonr, spearmanr

    out = {"pearson": float(pearsonr(x, y)[0]), "spearman": float(spearmanr(x, y)[0])}
    out["n"] = len(x)
    for k in TOP_K:
        out[f"top{k}"] = overlap(x, y, k)
    return out


def agreement(
    model: Model,
    task: Task,
    kinds=("resid_pre", "attn_out", "mlp_out", "head_out"),
    progress: bool = True,
    methods: dict[str, Method | dict] | None = None,
    on_step: Callable[[str, int, int], None] | None = None,
) -> AgreementResult:
    """Every figure of the module docstring per site kind and method.

    ``methods`` maps a column name to a method object (or to ``attribute()`` keyword
    arguments, e.g. ``{"relp glu=grad": {"method": "relp", "glu_rule": "gradient"}}``);
    default :func:`methods_for`. ``on_step(what, done, total)`` is told after the patching
    sweep and after each method (a progress bar's hook)."""
    methods = methods_for(model) if methods is None else methods
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
        for name, m in methods.items():
            kwargs = dict(m) if isinstance(m, dict) else {"method": m}
            start = time.perf_counter()
            result = attribute(model, task, sites, positions=positions, **kwargs)
            seconds[kind][name] = time.perf_counter() - start
            y = [result.components[i].effect for i in keep]
            scores_all[kind][name] = y
            stats[kind][name] = compare(x, y)
            step(f"{name} on {kind}")
    described = {n: (m.to_dict() if isinstance(m, Method) else dict(m)) for n, m in methods.items()}
    return AgreementResult(
        model.name, task.name, stats, patched_all, scores_all, labels, seconds, described
    )
