"""Concept activation vectors (TCAV, Kim et al. 2018, arXiv 1711.11279) and linear probes.

1. Activations: a site's value per text, pooled over positions (``last`` token or ``mean``
   over real tokens), flattened to one vector per text.
2. CAV: a logistic-regression classifier (scikit-learn) separating concept activations from
   random ones on a training split; the CAV is the unit normal of its decision boundary,
   pointing towards the concept; its held-out accuracy is reported.
3. Probe: a classifier for a labelled property at every layer of a site kind, with
   cross-validated accuracy and a baseline trained on shuffled labels.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from probe.errors import GatescopeError
from probe.model import Model
from probe.sites import Site
from probe.tracer import Tracer

POOLING = ("last", "mean")
MIN_PER_SET = 6


def _sites(model: Model, sites) -> list[Site]:
    """Sites (a Site, a pattern such as ``resid_post.*``, or a list) checked on the model."""
    return model.sites([sites] if isinstance(sites, Site) else sites)


def pooled_activations(
    model: Model, texts: Sequence[str], sites, pooling: str = "last", progress: bool = False
) -> dict[Site, np.ndarray]:
    """Site -> (N, D) float32 array: each site's value per text, pooled over positions, in
    one pass over the texts for all sites."""
    sites = _sites(model, sites)
    if pooling not in POOLING:
        raise GatescopeError(f"pooling '{pooling}' is unknown; choose {' or '.join(POOLING)}")
    rows: dict[Site, list[torch.Tensor]] = {s: [] for s in sites}
    positions = [-1] if pooling == "last" else None
    with torch.no_grad():
        for batch in model.batches(list(texts), 32, progress):
            with Tracer(model, sites, positions=positions, device="cpu", dtype=torch.float32) as tr:
                model.forward(batch.input_ids, batch.attention_mask)
            mask = batch.attention_mask.float().cpu().unsqueeze(-1)  # (B, T, 1)
            for site in sites:
                value = tr[site].flatten(2)  # (B, T, D)
                if pooling == "last":
                    rows[site].append(value[:, 0])
                else:
                    rows[site].append((value * mask).sum(1) / mask.sum(1))
    return {s: torch.cat(r).numpy() for s, r in rows.items()}


def site_activations(model: Model, texts: Sequence[str], site: Site | str, pooling: str = "last"):
    """(N, D) float32 numpy array: the site's pooled value per text."""
    return next(iter(pooled_activations(model, texts, site, pooling).values()))


@dataclass
class CAV:
    """A concept direction at a site: unit vector, held-out accuracy, provenance.

    ``gap`` is how far apart the concept and random activations sit along the direction
    (difference of their mean projections): the natural scale for steering with it."""

    site: str
    direction: list[float]
    accuracy: float
    concept: str
    random: str
    pooling: str
    gap: float = float("nan")

    def array(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=np.float64)

    def tensor(self, shape: tuple[int, ...] | None = None) -> torch.Tensor:
        t = torch.tensor(self.direction)
        return t.view(shape) if shape else t

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in self.to_dict().items() if k != "direction"})


def _check_sets(concept: np.ndarray, random: np.ndarray) -> None:
    for name, arr in (("concept", concept), ("random", random)):
        if len(arr) < MIN_PER_SET:
            raise GatescopeError(
                f"the {name} set has {len(arr)} examples; a CAV needs at least {MIN_PER_SET} per "
                "set to hold some out for its accuracy (30 or more is better)"
            )
    if concept.shape == random.shape and np.allclose(concept, random):
        raise GatescopeError("the concept and random sets are identical; give different texts")


def fit_cav(
    concept: np.ndarray,
    random: np.ndarray,
    seed: int = 0,
    site: str = "",
    names: tuple[str, str] = ("concept", "random"),
    pooling: str = "last",
) -> CAV:
    """The CAV of (N, D) concept activations against (M, D) random ones: unit normal of a
    logistic regression towards the concept, accuracy on a held-out 30 %."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    _check_sets(concept, random)
    x = np.concatenate([concept, random])  # (N + M, D)
    y = np.concatenate([np.ones(len(concept)), np.zeros(len(random))])
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.3, random_state=seed, stratify=y)
    x_tr, x_te = np.asarray(x_tr), np.asarray(x_te)
    scale = x_tr.std(0) + 1e-6  # standardise for the solver, map the normal back after
    with threadpool_limits(1):  # tiny problems: BLAS threads only contend
        clf = LogisticRegression(max_iter=2000, C=0.05).fit(x_tr / scale, y_tr)
    normal = clf.coef_[0] / scale
    normal = normal / np.linalg.norm(normal)
    gap = float(concept.mean(0) @ normal - random.mean(0) @ normal)
    acc = float(clf.score(x_te / scale, y_te))
    return CAV(
        site=site,
        direction=normal.tolist(),
        accuracy=acc,
        concept=names[0],
        random=names[1],
        pooling=pooling,
        gap=gap,
    )


def train_cav(
    model: Model,
    concept: Sequence[str],
    random: Sequence[str],
    site: Site | str,
    pooling: str = "last",
    seed: int = 0,
    names: tuple[str, str] = ("concept", "random"),
) -> CAV:
    """The CAV of ``concept`` texts against ``random`` texts at ``site``."""
    xc = site_activations(model, concept, site, pooling)
    xr = site_activations(model, random, site, pooling)
    return fit_cav(xc, xr, seed, str(site), names, pooling)


@dataclass
class ProbeResult:
    """Cross-validated accuracy per layer, and the same with shuffled labels (the baseline)."""

    kind: str
    layers: list[int]
    accuracy: list[float]
    shuffled: list[float]

    def figure(self):
        import plotly.graph_objects as go

        fig = go.Figure()
        fig.add_trace(
            go.Scatter(x=self.layers, y=self.accuracy, mode="lines+markers", name="probe")
        )
        fig.add_trace(
            go.Scatter(
                x=self.layers,
                y=self.shuffled,
                mode="lines+markers",
                name="shuffled labels",
                line={"dash": "dot"},
            )
        )
        fig.update_layout(
            title=f"linear probe accuracy at {self.kind}",
            xaxis_title="layer",
            yaxis_title="accuracy",
            yaxis_range=[0, 1.05],
        )
        return fig

    def to_dict(self) -> dict:
        return asdict(self)


def probe_layers(
    model: Model,
    texts: Sequence[str],
    labels: Sequence[int],
    kind: str,
    pooling: str = "last",
    seed: int = 0,
) -> ProbeResult:
    """A linear probe for ``labels`` at every layer of ``kind`` (gate sites included)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = np.asarray(labels)
    if len(y) != len(texts):
        raise GatescopeError(f"{len(texts)} texts but {len(y)} labels; give one label per text")
    if len(set(y.tolist())) < 2 or np.bincount(y.astype(int)).min() < 5:
        raise GatescopeError("a probe needs at least 5 examples of each of at least 2 labels")
    rng = np.random.default_rng(seed)
    sites = model.sites(f"{kind}.*")
    acts = pooled_activations(model, texts, sites, pooling)
    acc, shuffled = [], []
    for site in sites:
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        with threadpool_limits(1):  # tiny problems: BLAS threads only contend
            acc.append(float(cross_val_score(clf, acts[site], y, cv=5).mean()))
            shuffled.append(
                float(cross_val_score(clf, acts[site], rng.permutation(y), cv=5).mean())
            )
    return ProbeResult(kind=kind, layers=[s.layer for s in sites], accuracy=acc, shuffled=shuffled)
