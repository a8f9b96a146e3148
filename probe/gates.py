"""Gate statistics: how open the attention output gates are, how sparse the GLU gates are,
and the attention sink and massive activations that gating is reported to remove.

Figures per layer and head (Qiu et al. 2025, arXiv 2505.06708, reported 0.116 mean gate,
sink 0.467 -> 0.048, max activation 1053 -> 94 at 1.7B scale):

1. mean gate value; fraction of gate values below 0.5, 0.1, 0.01;
2. fraction of gated head outputs (``head_out``) below 1e-2 and 1e-3 in magnitude;
3. sink: mean attention probability on the first token, over query positions >= 1;
4. largest absolute residual activation (``resid_post``) per layer;
5. GLU gate sparsity: fraction of ``|mlp_gate|`` below thresholds, per layer.

On hybrid and MoE models the same report covers every other gate type the model has:

6. Gated-DeltaNet, per layer and value head: mean write strength ``beta``, mean log decay
   ``g``, the retention horizon ``log(0.5) / mean(g)`` (tokens until the product of per-token
   retentions ``exp(g)`` falls below 0.5 at the mean decay), and output-gate sparsity
   (fraction of ``|silu(z)|`` below 0.1 and 0.01);
7. MoE routers, per layer and expert: load (fraction of tokens routed to the expert), experts
   that never fire, mean router entropy (nats), mass of the top-k probabilities. Entropy and
   top-k mass are taken over the router's probabilities normalised to sum 1 per token:
   softmax routers already do; a sigmoid router (AFMoE, LFM2-MoE) scores each expert on its
   own, so its scores are divided by their sum (each expert's share of the token's total score)
   and the entropy is at most ``log(n_experts)``, the top-k mass at most 1;
8. the shared expert's sigmoid gate: its mean per layer;
9. gated short convolutions (LFM2, LFM3), per layer, for the gate before the convolution
   (``conv_gate``, ``B``) and after it (``conv_out_gate``, ``C``): mean, mean absolute value
   and the fraction of ``|gate|`` below 0.1 and 0.01 (these gates are linear, not sigmoids:
   near 0 is closed, the sign flips the channel). Per layer only: a convolution's channels are
   the d_model channels, one depthwise filter each, with no grouping to report by.

Per-layer figures of a gate a layer lacks are ``None`` (JSON ``null``), never 0.

Everything is computed streaming (a :class:`~probe.tracer.Reducer`), so thousands of prompts
need no stored activations. On a model without an attention gate the gate figures are
``None`` (absent, not zero); sink and max activation are still reported.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from probe.model import Model
from probe.sites import Site
from probe.tracer import Tracer

GATE_THRESHOLDS = (0.5, 0.1, 0.01)
OUTPUT_THRESHOLDS = (1e-2, 1e-3)
GLU_THRESHOLDS = (0.1, 0.01, 0.001)
DELTA_GATE_THRESHOLDS = (0.1, 0.01)
CONV_THRESHOLDS = (0.1, 0.01)
CONV_KINDS = ("conv_gate", "conv_out_gate")


def _flat(value: torch.Tensor, mask: torch.Tensor | None):
    """``(B, T, ...)`` -> ``(N, ...)`` in float32, and the ``(N, 1, ...)`` bool of real tokens
    (``None``: every token is real). Padding is masked out by ``where``, not by indexing, so no
    figure waits for the device (no host sync per site)."""
    flat = value.float().reshape(-1, *value.shape[2:])
    if mask is None:
        return flat, None
    return flat, mask.reshape(-1, *([1] * (flat.dim() - 1)))


def _real(x: torch.Tensor, keep: torch.Tensor | None, fill: float = 0.0) -> torch.Tensor:
    """``x`` with padded tokens' entries set to ``fill``."""
    return x if keep is None else torch.where(keep, x, fill)


def _count(x: torch.Tensor, keep: torch.Tensor | None, dim=None):
    """How many real entries ``x`` has (over ``dim``; all if None): a tensor, or an int."""
    if keep is None:
        return x.numel() if dim is None else math.prod(x.shape[d] for d in dim)
    ones = keep.expand_as(x)
    return ones.sum() if dim is None else ones.sum(dim)


def _tokens(flat: torch.Tensor, keep: torch.Tensor | None):
    """How many real tokens the ``(N, ...)`` value holds: a tensor, or an int."""
    return flat.shape[0] if keep is None else keep.sum()


def _count_below(values: torch.Tensor, thresholds, keep=None, dim=None) -> list[torch.Tensor]:
    """Per threshold, how many real ``values`` lie below it (over ``dim``; all if None)."""
    out = []
    for t in thresholds:
        below = values < t
        if keep is not None:
            below = below & keep
        out.append(below.sum(dim) if dim is not None else below.sum())
    return out


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
        self.n_tokens = zeros(1)
        hv, ne = max(model.dims.n_v_heads, 1), max(model.dims.n_experts, 1)
        self.beta_sum, self.decay_sum = zeros(n_layers, hv), zeros(n_layers, hv)
        self.delta_n = zeros(n_layers)
        self.dgate_below = zeros(len(DELTA_GATE_THRESHOLDS), n_layers, hv)
        self.dgate_n = zeros(n_layers)
        self.load, self.route_n = zeros(n_layers, ne), zeros(n_layers)
        self.entropy_sum, self.topk_mass_sum = zeros(n_layers), zeros(n_layers)
        self.shared_sum, self.shared_n = zeros(n_layers), zeros(n_layers)
        self.conv = {
            kind: {
                "sum": zeros(n_layers),
                "abs": zeros(n_layers),
                "below": zeros(len(CONV_THRESHOLDS), n_layers),
                "n": zeros(n_layers),
            }
            for kind in CONV_KINDS
        }
        self._device: torch.device | None = None
        self.kinds = frozenset(model.kinds)  # found once: it walks every layer's modules

    def _accumulators(self) -> dict[str, torch.Tensor]:
        found = {k: v for k, v in vars(self).items() if isinstance(v, torch.Tensor)}
        for kind, acc in self.conv.items():
            found.update({f"conv.{kind}.{k}": v for k, v in acc.items()})
        return found

    def _move(self, device: torch.device) -> None:
        """Keep the sums where the values are: updates then never copy to the host."""
        for name, t in self._accumulators().items():
            moved = t.to(device)
            if name.startswith("conv."):
                _, kind, key = name.split(".")
                self.conv[kind][key] = moved
            else:
                setattr(self, name, moved)
        self._device = device

    def update(self, site: Site, value: torch.Tensor, mask: torch.Tensor | None) -> None:
        if self._device is None:
            self._move(value.device)
        if value.device != self._device:  # a model split over devices: bring it home
            value = value.to(self._device)
            mask = None if mask is None else mask.to(self._device)
        layer = site.layer
        if site.kind == "attn_gate":
            flat, keep = _flat(value, mask)  # (N, H, g)
            self.gate_sum[layer] += _real(flat, keep).sum((0, 2))
            self.gate_n[layer] += _count(flat, keep, (0, 2))
            for i, count in enumerate(_count_below(flat, GATE_THRESHOLDS, keep, (0, 2))):
                self.gate_below[i, layer] += count
        elif site.kind == "head_out":
            flat, keep = _flat(value, mask)  # (N, H, d)
            size = flat.abs()
            self.out_n[layer] += _count(flat, keep, (0, 2))
            for i, count in enumerate(_count_below(size, OUTPUT_THRESHOLDS, keep, (0, 2))):
                self.out_below[i, layer] += count
        elif site.kind == "attn_pattern":  # attention of queries >= 1 on token 0
            first, keep = _flat(value[:, 1:, :, 0], None if mask is None else mask[:, 1:])
            self.sink_sum[layer] += _real(first, keep).sum(0)
            self.sink_n[layer] += _count(first, keep, (0,))
        elif site.kind == "resid_post":
            flat, keep = _flat(value, mask)
            if flat.numel():
                top = _real(flat.abs(), keep).amax()
                self.max_act[layer] = torch.maximum(self.max_act[layer], top.double())
            if layer == 0:
                self.n_tokens += _tokens(flat, keep)
        elif site.kind == "mlp_gate":
            flat, keep = _flat(value, mask)  # (N, d_mlp)
            size = flat.abs()
            self.glu_n[layer] += _count(flat, keep)
            for i, count in enumerate(_count_below(size, GLU_THRESHOLDS, keep)):
                self.glu_below[i, layer] += count
        else:
            self._update_other(site, value, mask)

    def _update_other(self, site: Site, value: torch.Tensor, mask) -> None:
        """The gates of hybrid and MoE layers (DeltaNet, routers, shared expert, conv)."""
        layer = site.layer
        flat, keep = _flat(value, mask)
        if site.kind == "delta_beta":  # (N, Hv)
            self.beta_sum[layer] += _real(flat, keep).sum(0)
            self.delta_n[layer] += _tokens(flat, keep)
        elif site.kind == "delta_decay":
            self.decay_sum[layer] += _real(flat, keep).sum(0)
        elif site.kind == "delta_gate":  # (N, Hv, dv)
            size = flat.abs()
            self.dgate_n[layer] += _tokens(flat, keep) * flat.shape[2]
            for i, count in enumerate(_count_below(size, DELTA_GATE_THRESHOLDS, keep, (0, 2))):
                self.dgate_below[i, layer] += count
        elif site.kind == "router_prob":  # (N, E); sigmoid routers: scores, not a distribution
            q = flat / flat.sum(-1, keepdim=True).clamp(min=1e-30)
            entropy = -(q * q.clamp(min=1e-30).log()).sum(-1, keepdim=True)  # (N, 1)
            k = max(self.model.dims.top_k, 1)
            mass = q.topk(k, dim=-1).values.sum(-1, keepdim=True)
            self.entropy_sum[layer] += _real(entropy, keep).sum()
            self.topk_mass_sum[layer] += _real(mass, keep).sum()
        elif site.kind == "router_weight":  # (N, E), 0 for experts not chosen
            self.load[layer] += _real(flat != 0, keep, False).sum(0)
            self.route_n[layer] += _tokens(flat, keep)
        elif site.kind == "shared_gate":  # (N, 1)
            self.shared_sum[layer] += _real(flat, keep).sum()
            self.shared_n[layer] += _count(flat, keep)
        elif site.kind in CONV_KINDS:  # (N, d_model), linear gates
            acc, size = self.conv[site.kind], flat.abs()
            acc["sum"][layer] += _real(flat, keep).sum(dtype=torch.float64)
            acc["abs"][layer] += _real(size, keep).sum(dtype=torch.float64)
            acc["n"][layer] += _count(flat, keep)
            for i, count in enumerate(_count_below(size, CONV_THRESHOLDS, keep)):
                acc["below"][i, layer] += count

    def report(self, n_prompts: int) -> GateReport:
        self._move(torch.device("cpu"))
        gated = "attn_gate" in self.kinds
        has_glu = "mlp_gate" in self.kinds
        per_head = lambda a, n: _per_layer(a / n.clamp(min=1), n)  # noqa: E731
        layer_n = lambda n: n.reshape(-1, 1).expand(-1, 1)  # noqa: E731
        return GateReport(
            model=self.model.name,
            family=self.model.family.name,
            n_prompts=n_prompts,
            n_tokens=int(self.n_tokens.item()),
            layer_map=[asdict(info) for info in self.model.layer_map()],
            mean_gate=per_head(self.gate_sum, self.gate_n) if gated else None,
            gate_below={
                str(t): per_head(self.gate_below[i], self.gate_n)
                for i, t in enumerate(GATE_THRESHOLDS)
            }
            if gated
            else None,
            gated_output_below={
                str(t): per_head(self.out_below[i], self.out_n)
                for i, t in enumerate(OUTPUT_THRESHOLDS)
            }
            if gated
            else None,
            sink=per_head(self.sink_sum, self.sink_n),
            max_activation=self.max_act.tolist(),
            glu_below={
                str(t): _per_layer(self.glu_below[i] / self.glu_n.clamp(min=1), self.glu_n)
                for i, t in enumerate(GLU_THRESHOLDS)
            }
            if has_glu
            else None,
            deltanet=self._delta_report(per_head, layer_n),
            router=self._router_report(),
            shared_gate=_per_layer(self.shared_sum / self.shared_n.clamp(min=1), self.shared_n)
            if "shared_gate" in self.kinds
            else None,
            conv=self._conv_report(),
        )

    def _conv_report(self) -> dict | None:
        kinds = [k for k in CONV_KINDS if k in self.kinds]
        if not kinds:
            return None
        out = {}
        for kind in kinds:
            acc = self.conv[kind]
            n = acc["n"].clamp(min=1)
            out[kind] = {
                "mean": _per_layer(acc["sum"] / n, acc["n"]),
                "mean_abs": _per_layer(acc["abs"] / n, acc["n"]),
                "below": {
                    str(t): _per_layer(acc["below"][i] / n, acc["n"])
                    for i, t in enumerate(CONV_THRESHOLDS)
                },
            }
        return out

    def _delta_report(self, per_head, layer_n) -> dict | None:
        if "delta_beta" not in self.kinds:
            return None
        n = layer_n(self.delta_n)
        mean_decay = self.decay_sum / self.delta_n.clamp(min=1).unsqueeze(1)
        horizon = torch.where(
            mean_decay < 0, math.log(0.5) / mean_decay.clamp(max=-1e-30), math.inf
        )
        return {
            "mean_beta": per_head(self.beta_sum, n.expand_as(self.beta_sum)),
            "mean_decay": _per_layer(mean_decay, self.delta_n),
            "retention_horizon": _per_layer(horizon, self.delta_n),
            "gate_below": {
                str(t): per_head(
                    self.dgate_below[i], layer_n(self.dgate_n).expand_as(self.dgate_below[i])
                )
                for i, t in enumerate(DELTA_GATE_THRESHOLDS)
            },
        }

    def _router_report(self) -> dict | None:
        if "router_weight" not in self.kinds:
            return None
        n = self.route_n.clamp(min=1)
        load = _per_layer(self.load / n.unsqueeze(1), self.route_n)
        dead = [
            None if self.route_n[i] == 0 else [e for e, c in enumerate(row) if c == 0]
            for i, row in enumerate(self.load.tolist())
        ]
        return {
            "top_k": self.model.dims.top_k,
            "load": load,
            "dead_experts": dead,
            "entropy": _per_layer(self.entropy_sum / n, self.route_n),
            "top_k_mass": _per_layer(self.topk_mass_sum / n, self.route_n),
        }


def _per_layer(values: torch.Tensor, counts: torch.Tensor) -> list:
    """``values`` as nested lists per layer, with ``None`` for layers that saw nothing (a
    layer without that gate), never 0."""
    counts = counts.reshape(counts.shape[0], -1)
    out = []
    for i, row in enumerate(values.tolist()):
        seen = bool((counts[i] > 0).any())
        out.append(row if seen else None)
    return out


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
        layer_map: per layer, its token mixer and MLP kind.
        deltanet: Gated-DeltaNet figures per layer and value head (``mean_beta``,
            ``mean_decay``, ``retention_horizon`` in tokens, ``gate_below``), or ``None``.
        router: MoE figures per layer (``load`` per expert, ``dead_experts``, ``entropy``,
            ``top_k_mass``; entropy and top-k mass over the probabilities normalised per token,
            i.e. each expert's share of a sigmoid router's total score), or ``None``.
        shared_gate: mean shared-expert gate per layer, or ``None``.
        conv: gated short convolutions, per gate kind (``conv_gate``: before the convolution,
            ``conv_out_gate``: after it): ``mean``, ``mean_abs`` and ``below`` (threshold ->
            fraction of ``|gate|`` below it), each a list per layer; ``None`` on a model
            without them.

    A layer without a gate has ``None`` in that gate's lists.
    """

    model: str
    family: str
    n_prompts: int
    n_tokens: int
    mean_gate: list[list[float]] | None
    gate_below: dict[str, list[list[float]]] | None
    gated_output_below: dict[str, list[list[float]]] | None
    sink: list[list[float] | None]
    max_activation: list[float]
    glu_below: dict[str, list[float | None]] | None
    layer_map: list[dict] | None = None
    deltanet: dict | None = None
    router: dict | None = None
    shared_gate: list[float | None] | None = None
    conv: dict | None = None

    def layer_mean(self, field: str, threshold: str | None = None) -> list[float] | None:
        """Per-layer mean over heads of a [layer][head] figure (``None`` if absent)."""
        table = getattr(self, field)
        if table is None:
            return None
        table = table[threshold] if threshold is not None else table
        return [None if row is None else sum(row) / len(row) for row in table]  # pyright: ignore[reportReturnType]

    def summary(self) -> dict:
        """The headline figures: means over layers and heads."""

        def mean(xs):
            xs = None if xs is None else [x for x in xs if x is not None]
            return sum(xs) / len(xs) if xs else None

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
    kinds = [
        "attn_gate",
        "head_out",
        "attn_pattern",
        "resid_post",
        "mlp_gate",
        "delta_beta",
        "delta_decay",
        "delta_gate",
        "router_prob",
        "router_weight",
        "shared_gate",
        *CONV_KINDS,
    ]
    wanted = [k for k in kinds if k in model.kinds and (k != "head_out" or model.is_gated)]
    sites = []
    for kind in wanted:
        sites += [Site(kind, layer) for layer in model.layers_with(kind)]
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
    layers = range(model.dims.n_layers)
    if model.is_gated:  # (T, H) per layer; None on a layer without the gate
        gates = [
            tr[Site("attn_gate", i)][0].float().mean(-1).tolist()  # pyright: ignore[reportIndexIssue]
            if model.has_site(Site("attn_gate", i))
            else None
            for i in layers
        ]
    if "mlp_gate" in model.kinds:
        glu = [
            (tr[Site("mlp_gate", i)][0].float().abs() >= 0.01).float().mean(-1).tolist()  # pyright: ignore[reportIndexIssue]
            if model.has_site(Site("mlp_gate", i))
            else None
            for i in layers
        ]
    return TokenGates(tokens, gates, glu)  # pyright: ignore[reportArgumentType]


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None
