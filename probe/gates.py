"""Gate statistics: how open the attention output gates are, how sparse the GLU gates are,
and the attention sink and massive activations that gating is reported to remove.

Figures per layer and head (Qiu et al. 2025, arXiv 2505.06708, reported 0.116 mean gate,
sink 0.467 -> 0.048, max activation 1053 -> 94 at 1.7B scale):

1. mean gate value; fraction of gate values below 0.5, 0.1, 0.01;
2. fraction of gated head outputs (``head_out``) below 1e-2 and 1e-3 in magnitude;
3. sink: mean attention probability on the first token, over query positions >= 1;
4. largest absolute residual activation (``resid_post``) per layer;
5. GLU gate sparsity: fraction of ``|mlp_gate|`` below thresholds, per layer.

Everything is computed streaming (a :class:`~probe.tracer.Reducer`), so thousands of prompts
need no stored activations. On a model without an attention gate the gate figures are
``None`` (absent, not zero); sink and max activation are still reported.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from probe.errors import GatescopeError
from probe.model import Model
from probe.sites import Site
from probe.tracer import Tracer

GATE_THRESHOLDS = (0.5, 0.1, 0.01)
OUTPUT_THRESHOLDS = (1e-2, 1e-3)
GLU_THRESHOLDS = (0.1, 0.01, 0.001)


def _masked(value: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Real tokens only: (B, T, ...) -> (N, ...), in float32."""
    value = value.float()
    if mask is not None and not bool(mask.all()):
        return value[mask]
    return value.reshape(-1, *value.shape[2:])


def _count_below(values: torch.Tensor, thresholds, dim=None) -> list[torch.Tensor]:
    """Per threshold, how many ``values`` lie below it (counted over ``dim``; all if None)."""
    return [torch.count_nonzero(values < t, dim=dim) for t in thresholds]


class GateStatsReducer:
    """Streaming sums for every figure above; ``report()`` turns them into a GateReport."""

    def __init__(self, model: Model) -> None:
        self.model = model
        n_layers, n_heads = model.dims.n_layers, model.dims.n_heads
        zeros = lambda *shape: torch.zeros(*shape, dtype=torch.float64)  # noqa: E731
        self.gate_sum, self.gate_n = zeros(n_layers, n_heads), zeros(n_layers, n_heads)
        self.gate_below = zeros(len(GATE_THRESHOLDS), n_layers, n_heads)
        self.out_below, self.out_n = (
            zeros(len(OUTPUT_THRESHOLDS), n_layers, n_heads),
            zeros(n_layers, n_heads),
        )
        self.sink_sum, self.sink_n = zeros(n_layers, n_heads), zeros(n_layers, n_heads)
        self.max_act = zeros(n_layers)
        self.glu_below, self.glu_n = zeros(len(GLU_THRESHOLDS), n_layers), zeros(n_layers)
        self.tokens = 0

    def update(self, site: Site, value: torch.Tensor, mask: torch.Tensor | None) -> None:
        layer = site.layer
        if site.kind == "attn_gate":
            flat = _masked(value, mask)  # (N, H, g)
            self.gate_sum[layer] += flat.sum((0, 2)).double().cpu()
            self.gate_n[layer] += flat.shape[0] * flat.shape[2]
            for i, count in enumerate(_count_below(flat, GATE_THRESHOLDS, dim=(0, 2))):
                self.gate_below[i, layer] += count.double().cpu()
        elif site.kind == "head_out":
            flat = _masked(value, mask).abs()  # (N, H, d)
            self.out_n[layer] += flat.shape[0] * flat.shape[2]
            for i, count in enumerate(_count_below(flat, OUTPUT_THRESHOLDS, dim=(0, 2))):
                self.out_below[i, layer] += count.double().cpu()
        elif site.kind == "attn_pattern":
            first = value[:, 1:, :, 0].float()  # (B, Tq-1, H): attention on token 0
            keep = mask[:, 1:] if mask is not None else None
            flat = first[keep] if keep is not None else first.reshape(-1, first.shape[-1])
            self.sink_sum[layer] += flat.sum(0).double().cpu()
            self.sink_n[layer] += flat.shape[0]
        elif site.kind == "resid_post":
            flat = _masked(value, mask)
            if flat.numel():
                self.max_act[layer] = max(float(self.max_act[layer]), float(flat.abs().max()))
            if layer == 0:
                self.tokens += flat.shape[0]
        elif site.kind == "mlp_gate":
            flat = _masked(value, mask).abs()  # (N, d_mlp)
            self.glu_n[layer] += flat.numel()
            for i, count in enumerate(_count_below(flat, GLU_THRESHOLDS)):
                self.glu_below[i, layer] += float(count)

    def report(self, n_prompts: int) -> GateReport:
        gated = self.model.is_gated
        ratio = lambda a, b: (a / b.clamp(min=1)).tolist()  # noqa: E731
        has_glu = "mlp_gate" in self.model.kinds
        return GateReport(
            model=self.model.name,
            family=self.model.family.name,
            n_prompts=n_prompts,
            n_tokens=self.tokens,
            mean_gate=ratio(self.gate_sum, self.gate_n) if gated else None,
            gate_below={
                str(t): ratio(self.gate_below[i], self.gate_n)
                for i, t in enumerate(GATE_THRESHOLDS)
            }
            if gated
            else None,
            gated_output_below={
                str(t): ratio(self.out_below[i], self.out_n)
                for i, t in enumerate(OUTPUT_THRESHOLDS)
            }
            if gated
            else None,
            sink=ratio(self.sink_sum, self.sink_n),
            max_activation=self.max_act.tolist(),
            glu_below={
                str(t): ratio(self.glu_below[i], self.glu_n) for i, t in enumerate(GLU_THRESHOLDS)
            }
            if has_glu
            else None,
        )


@dataclass
class GateReport:
    """Gate statistics of one model over a prompt set; lists are indexed [layer][head].

    Attributes:
        mean_gate: mean attention-gate value per layer and head (``None``: no gate).
        gate_below: threshold -> fraction of gate values below it, per layer and head.
        gated_output_below: threshold -> fraction of ``|head_out|`` below it.
        sink: mean attention probability on the first token (queries >= 1).
        max_activation: largest ``|resid_post|`` per layer.
        glu_below: threshold -> fraction of ``|mlp_gate|`` below it, per layer.
    """

    model: str
    family: str
    n_prompts: int
    n_tokens: int
    mean_gate: list[list[float]] | None
    gate_below: dict[str, list[list[float]]] | None
    gated_output_below: dict[str, list[list[float]]] | None
    sink: list[list[float]]
    max_activation: list[float]
    glu_below: dict[str, list[float]] | None

    def layer_mean(self, field: str, threshold: str | None = None) -> list[float] | None:
        """Per-layer mean over heads of a [layer][head] figure (``None`` if absent)."""
        table = getattr(self, field)
        if table is None:
            return None
        table = table[threshold] if threshold is not None else table
        return [sum(row) / len(row) for row in table]

    def summary(self) -> dict:
        """The headline figures: means over layers and heads."""
        mean = lambda xs: None if xs is None else sum(xs) / len(xs)  # noqa: E731
        return {
            "mean_gate": mean(self.layer_mean("mean_gate")),
            "sink": mean(self.layer_mean("sink")),
            "max_activation": max(self.max_activation) if self.max_activation else None,
        }

    def to_dict(self) -> dict:
        return {**asdict(self), "summary": self.summary()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def gate_sites(model: Model) -> list[Site]:
    """The sites gate statistics read on this model (only those it has)."""
    kinds = ["attn_gate", "head_out", "attn_pattern", "resid_post", "mlp_gate"]
    wanted = [k for k in kinds if k in model.kinds and (k != "head_out" or model.is_gated)]
    sites = []
    for kind in wanted:
        for layer in range(model.dims.n_layers):
            try:
                model.check_site(Site(kind, layer))
            except GatescopeError:
                continue  # e.g. no attention gate on a linear-attention layer
            sites.append(Site(kind, layer))
    return sites


@torch.no_grad()
def gate_stats(
    model: Model, prompts: Sequence[str], batch_size: int = 16, progress: bool = True
) -> GateReport:
    """Stream gate statistics over ``prompts`` in batches (nothing stored)."""
    prompts = list(prompts)
    reducer = GateStatsReducer(model)
    with Tracer(model, gate_sites(model), reducers=[reducer], keep=False):
        for batch in model.batches(prompts, batch_size, progress=progress):
            model.forward(batch.input_ids, batch.attention_mask)
    return reducer.report(len(prompts))


@dataclass
class TokenGates:
    """Per-token gate values of one prompt.

    Attributes:
        tokens: the prompt's tokens as strings.
        gates: [layer][token][head] mean gate over the head's dimensions (``None`` if the
            model has no attention gate).
        glu_active: [layer][token] fraction of ``|mlp_gate|`` at or above 0.01.
    """

    tokens: list[str]
    gates: list[list[list[float]]] | None
    glu_active: list[list[float]] | None

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def token_gates(model: Model, prompt: str) -> TokenGates:
    """Gate values per token, head and layer for one prompt (for the app and reports)."""
    batch = model.tokenize(prompt)
    sites = [s for s in gate_sites(model) if s.kind in ("attn_gate", "mlp_gate")]
    with Tracer(model, sites) if sites else _nothing() as tr:
        model.forward(batch.input_ids, batch.attention_mask)
    ids = batch.input_ids[0].tolist()
    tokens = [model.tokenizer.decode([i]) for i in ids]
    gates = glu = None
    if model.is_gated:
        gates = [
            tr[s][0].float().mean(-1).tolist() for s in sites if s.kind == "attn_gate"
        ]  # (T, H) per layer
    if "mlp_gate" in model.kinds:
        glu = [
            (tr[s][0].float().abs() >= 0.01).float().mean(-1).tolist()
            for s in sites
            if s.kind == "mlp_gate"
        ]
    return TokenGates(tokens, gates, glu)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None
