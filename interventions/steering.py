"""Steering vectors: build, save/load, generate with them, ablate them, evaluate them.

1. Build from contrast pairs at a site, reading each text's last token (docs/METHODS.md):
   ActAdd (one pair's difference; arXiv 2308.10248), CAA (mean difference over pairs;
   arXiv 2312.06681), PCA (first principal
   direction of the uncentred differences, sign fixed so positive examples project higher,
   scaled to the mean difference norm; RepE, arXiv 2310.01405).
   Any direction (an SAE decoder row, a CAV) becomes a vector with :func:`from_direction`.
2. Steer: add ``coef * direction`` at the site (:class:`~interventions.edits.Add`), at all
   positions, the prompt only, or generated tokens only (correct under the KV cache).
3. Directional ablation (Arditi et al., arXiv 2406.11717): project the direction out of the
   embeddings and of every attention and MLP output, so no residual stream activation has a
   component along it.
4. Evaluate: a behaviour metric on held-out prompts over a range of coefficients, for the
   vector and for random vectors of equal norm (the Rogue Scalpel control).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from interventions.edits import Add, ProjectOut, intervene
from probe.errors import GatescopeError
from probe.model import Model
from probe.sites import Site
from probe.tracer import Tracer

log = logging.getLogger(__name__)
METHODS = ("actadd", "caa", "pca")


@dataclass
class SteeringVector:
    """A direction at a site with its default coefficient and where it came from."""

    direction: torch.Tensor
    site: Site
    coef: float = 1.0
    method: str = "direction"
    provenance: dict = field(default_factory=dict)

    def edit(self, coef: float | None = None, positions=None, prompt_len=None) -> Add:
        """The :class:`~interventions.edits.Add` edit of ``coef * direction`` (default: the
        vector's own coefficient) at ``positions`` (None, "prompt", "generated", a list)."""
        return Add(
            self.site,
            positions=positions,
            prompt_len=prompt_len,
            vector=self.direction,
            coef=self.coef if coef is None else coef,
        )

    def save(self, path: str | Path) -> Path:
        """Write ``NAME.safetensors`` (the direction) and ``NAME.json`` (site, provenance)."""
        from probe.io import save_safetensors, write_json

        path = Path(path).with_suffix(".safetensors")
        if not path.parent.is_dir():
            raise GatescopeError(f"{path}: directory {path.parent} does not exist")
        meta = {
            "site": str(self.site),
            "coef": self.coef,
            "method": self.method,
            "provenance": self.provenance,
            "format": "gatescope.steering/1",
        }
        save_safetensors({"direction": self.direction.detach().float()}, path)
        write_json(path.with_suffix(".json"), meta)
        return path

    @classmethod
    def load(cls, path: str | Path, model: Model | None = None) -> SteeringVector:
        """Load; with ``model``, refuse a width mismatch and warn on another model's vector."""
        from probe.io import load_tensors, read_json

        path = Path(path).with_suffix(".safetensors")
        if not path.is_file() or not path.with_suffix(".json").is_file():
            raise GatescopeError(f"{path}: expected NAME.safetensors and NAME.json beside it")
        meta = read_json(path.with_suffix(".json"), "steering vector metadata")
        direction = load_tensors(path, "steering vector", ("direction",))["direction"]
        try:
            vec = cls(
                direction,
                Site.parse(meta["site"]),
                float(meta.get("coef", 1.0)),
                meta.get("method", "direction"),
                meta.get("provenance", {}),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise GatescopeError(
                f"{path}: not a gatescope steering vector ({type(exc).__name__}: {exc}); "
                "expected NAME.safetensors with a 'direction' tensor and NAME.json with 'site'"
            ) from None
        if not bool(torch.isfinite(direction).all()):
            raise GatescopeError(
                f"steering vector {path}: 'direction' has NaN or infinite values; rebuild it "
                "with gatescope steer build"
            )
        if model is not None:
            vec.check(model)
        return vec

    def check(self, model: Model) -> None:
        model.check_site(self.site)
        width = _site_width(model, self.site)
        if tuple(self.direction.shape) != width:
            raise GatescopeError(
                f"steering vector of shape {tuple(self.direction.shape)} does not fit "
                f"{self.site} of this model (per-token shape {width}); it was built for "
                f"{self.provenance.get('model', 'another model')}"
            )
        made_for = self.provenance.get("model", "an unknown model")
        stamp = self.provenance.get("fingerprint")
        if stamp is not None and stamp != model_fingerprint(model):
            log.warning(
                "steering vector was built on %s (fingerprint %s), but this is %s "
                "(fingerprint %s): other weights, so its direction may mean nothing here",
                made_for,
                stamp,
                model.name,
                model_fingerprint(model),
            )
        elif stamp is None and made_for != model.name:
            log.warning("steering vector was built on %s, applying it to %s", made_for, model.name)


def model_fingerprint(model: Model) -> str:
    """A short hash of the family, the dimensions and a few embedding rows: equal for the
    same weights loaded twice, different for another model of the same shape."""
    import hashlib

    from probe.locate import module_at, tensor_of

    emb = module_at(model.hf, model.family.embed)
    rows = tensor_of(emb)[:4].detach().float().cpu()  # (4, d_model)
    text = f"{model.family.name}|{model.dims}|{[round(float(v), 3) for v in rows.sum(1)]}"
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def _site_width(model: Model, site: Site) -> tuple[int, ...]:
    with Tracer(model, site, positions=[0]) as tr, torch.no_grad():
        model.run("a")
    return tuple(tr[site].shape[2:])


def last_token_acts(model: Model, texts: Sequence[str], site: Site) -> torch.Tensor:
    """(N, ...) the site's value at each text's last token."""
    with Tracer(model, site, positions=[-1], device="cpu", dtype=torch.float32) as tr:
        with torch.no_grad():
            for batch in model.batches(list(texts), 32):
                model.forward(batch.input_ids, batch.attention_mask)
    return tr[site][:, 0]


def build_vector(
    model: Model,
    method: str,
    positive: Sequence[str],
    negative: Sequence[str],
    site,
    data: str = "",
) -> SteeringVector:
    """A steering vector from contrast pairs (``positive[i]`` vs ``negative[i]``), read at
    each text's last token; ``data`` names where the pairs came from (kept in provenance)."""
    site = Site.parse(site) if isinstance(site, str) else site
    if method not in METHODS:
        raise GatescopeError(f"method '{method}' is unknown; choose one of {', '.join(METHODS)}")
    if len(positive) != len(negative) or not positive:
        raise GatescopeError(
            f"contrast pairs: {len(positive)} positive and {len(negative)} negative texts; "
            "give the same number (at least one) of each"
        )
    if method == "actadd":
        positive, negative = positive[:1], negative[:1]
    pos = last_token_acts(model, positive, site)
    neg = last_token_acts(model, negative, site)
    diffs = pos - neg  # (N, ...)
    if method in ("actadd", "caa"):
        direction = diffs.mean(0)
    else:
        if len(diffs) < 2:
            raise GatescopeError("PCA needs at least 2 contrast pairs")
        flat = diffs.flatten(1)
        # uncentred: the concept is the differences' common direction, which centring would
        # remove (RepE randomly flips pair order and then centres, the same in expectation)
        _, _, v = torch.linalg.svd(flat, full_matrices=False)  # v: (N, d)
        pc = v[0] * flat.norm(dim=1).mean()  # scale: mean difference norm
        if ((pos - neg).flatten(1) @ pc).mean() < 0:
            pc = -pc
        direction = pc.view(diffs.shape[1:])
    prov = {
        "model": model.name,
        "fingerprint": model_fingerprint(model),
        "family": model.family.name,
        "data": data,
        "pairs": len(positive),
    }
    vec = SteeringVector(direction=direction, site=site, coef=1.0, method=method, provenance=prov)
    if not bool(torch.isfinite(direction).all()) or float(direction.norm()) == 0.0:
        raise GatescopeError(
            f"the {method} vector at {site} is zero or not finite: the positive and negative "
            "texts give the same activations there; use contrasting texts or another site"
        )
    return vec


def from_direction(direction: torch.Tensor, site, model: Model, source: str = "") -> SteeringVector:
    """Any direction (SAE feature, CAV) as a steering vector at ``site``."""
    site = Site.parse(site) if isinstance(site, str) else site
    prov = {"model": model.name, "fingerprint": model_fingerprint(model), "data": source}
    vec = SteeringVector(
        direction=direction.detach().float(), site=site, method="direction", provenance=prov
    )
    vec.check(model)
    return vec


def directional_ablation(model: Model, direction: torch.Tensor) -> list[ProjectOut]:
    """Edits removing ``direction`` from the whole residual stream (every layer)."""
    edits = [ProjectOut(Site("resid_pre", 0), direction=direction)]
    for layer in range(model.dims.n_layers):
        edits.append(ProjectOut(Site("attn_out", layer), direction=direction))
        edits.append(ProjectOut(Site("mlp_out", layer), direction=direction))
    return edits


@torch.no_grad()
def generate(
    model: Model,
    prompt: str,
    vector: SteeringVector | None = None,
    coef: float | None = None,
    max_new_tokens: int = 20,
    positions: str | None = None,
) -> str:
    """Greedy continuation of ``prompt``, steered by ``vector`` (HF ``generate``)."""
    if not hasattr(model.hf, "generate"):
        raise GatescopeError(f"{type(model.hf).__name__} cannot generate; use a HF model")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise GatescopeError(f"max_new_tokens {max_new_tokens}: expected at least 1 new token")
    if coef is not None and not math.isfinite(coef):
        raise GatescopeError(f"coef {coef}: not a finite number; give e.g. 4 or -2")
    batch = model.tokenize(prompt)
    n_prompt = batch.input_ids.shape[1]
    edits = [vector.edit(coef, positions, n_prompt)] if vector is not None else []
    with intervene(model, edits):
        hf: Any = model.hf  # a transformers model (checked above: it can generate)
        out = hf.generate(
            batch.input_ids.to(model.device),
            attention_mask=batch.attention_mask.to(model.device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=model.tokenizer.pad_token_id or model.tokenizer.eos_token_id,
        )
    return model.tokenizer.decode(out[0, n_prompt:], skip_special_tokens=True)


def word_logit_metric(model: Model, positive: Sequence[str], negative: Sequence[str]) -> Callable:
    """Metric: mean next-token logit of ``positive`` words minus that of ``negative`` ones."""
    from probe.reference.tokenizer import single_token_id

    def ids(words):
        return [single_token_id(model.tokenizer, w) for w in words]

    pos, neg = torch.tensor(ids(positive)), torch.tensor(ids(negative))

    def metric(logits: torch.Tensor, lengths: torch.Tensor) -> float:
        last = logits[torch.arange(len(lengths)), lengths - 1]  # (B, V)
        return float((last[:, pos].mean(1) - last[:, neg].mean(1)).mean())

    return metric


@dataclass
class SteeringEval:
    """Behaviour metric per coefficient for the vector and for random vectors of equal norm."""

    coefs: list[float]
    vector: list[float]
    random: list[list[float]]  # [random vector][coef]
    site: str

    def beats_random_at(self, coef: float) -> bool:
        i = self.coefs.index(coef)
        base = self.vector[self.coefs.index(0.0)] if 0.0 in self.coefs else 0.0
        return all(abs(self.vector[i] - base) > abs(r[i] - base) for r in self.random)

    def figure(self):
        import plotly.graph_objects as go

        fig = go.Figure()
        for k, scores in enumerate(self.random):
            fig.add_trace(
                go.Scatter(
                    x=self.coefs,
                    y=scores,
                    mode="lines",
                    name="random" if k == 0 else None,
                    showlegend=k == 0,
                    line={"color": "lightgray"},
                )
            )
        fig.add_trace(
            go.Scatter(x=self.coefs, y=self.vector, mode="lines+markers", name="steering vector")
        )
        fig.update_layout(
            title=f"steering at {self.site} vs random vectors of equal norm",
            xaxis_title="coefficient",
            yaxis_title="behaviour metric",
        )
        return fig

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


@torch.no_grad()
def evaluate_steering(
    model: Model,
    vector: SteeringVector,
    prompts: Sequence[str],
    metric: Callable[[torch.Tensor, torch.Tensor], float],
    coefs: Sequence[float] = (-4, -2, -1, 0, 1, 2, 4),
    n_random: int = 10,
    seed: int = 0,
    progress: bool = False,
    on_step: Callable[[str, int, int], None] | None = None,
) -> SteeringEval:
    """The metric on ``prompts`` (steering at every position) per coefficient, for the vector
    and ``n_random`` random directions of the same norm; ``progress``: a bar on stderr over
    the (1 + n_random) x coefficients passes; ``on_step(what, done, total)`` is told after
    each vector's curve (a progress bar's hook)."""
    batch = model.tokenize(list(prompts))
    g = torch.Generator().manual_seed(seed)
    norm = vector.direction.norm()
    randoms = []
    for _ in range(n_random):
        r = torch.randn(vector.direction.shape, generator=g)
        randoms.append(SteeringVector(direction=r / r.norm() * norm, site=vector.site))

    from tqdm.auto import tqdm

    bar = tqdm(
        total=(1 + n_random) * len(coefs), desc="steer eval", unit="pass", disable=not progress
    )

    def curve(vec: SteeringVector) -> list[float]:
        scores = []
        for c in coefs:
            with intervene(model, vec.edit(float(c))):
                scores.append(
                    metric(model.forward(batch.input_ids, batch.attention_mask), batch.lengths)
                )
            bar.update(1)
        return scores

    total = 1 + n_random
    try:
        own = curve(vector)
        if on_step is not None:
            on_step("the steering vector", 1, total)
        random_curves = []
        for i, r in enumerate(randoms):
            random_curves.append(curve(r))
            if on_step is not None:
                on_step(f"random vector {i + 1}", i + 2, total)
        return SteeringEval(
            coefs=[float(c) for c in coefs],
            vector=own,
            random=random_curves,
            site=str(vector.site),
        )
    finally:
        bar.close()
