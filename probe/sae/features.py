"""Feature browser data: top-activating contexts per latent, firing rates, and a steering
direction from a latent's decoder row (as in Bricken et al. 2023 / Templeton et al. 2024).

1. Pass 1 over the texts: capture the site, encode every real token, keep per latent the
   ``top`` largest activations as (value, global token index) by merging running top-k
   tensors ``(top, d_sae)``, and count firings.
2. Pass 2 over only the texts that hold a kept context: encode again and cut, per context,
   a window of ``window`` tokens either side with the latent's activation at each token.
3. ``latent_direction``: the decoder row ``W_dec[i]`` (unit norm), reshaped to the site's
   per-token shape, with provenance, for
   ``interventions.SteeringVector(**d.steering_kwargs())``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch

from probe.errors import GatescopeError
from probe.model import Model
from probe.sae.io import TrainedSAE, check_sae_site
from probe.store import capture_tokens


@dataclass
class LatentContext:
    """One top-activating context: ``tokens`` around ``position`` with ``acts`` per token."""

    text_index: int
    position: int
    activation: float
    tokens: list[str]
    acts: list[float]
    center: int  # index of ``position`` inside ``tokens``


@dataclass
class LatentFeatures:
    """A latent's firing rate over the texts and its top contexts."""

    latent: int
    firing_rate: float
    max_activation: float
    contexts: list[LatentContext] = field(default_factory=list)


@dataclass
class FeatureReport:
    """Feature browser data for an SAE over some texts."""

    path: str
    site: str
    tokens: int
    features: list[LatentFeatures]

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def _encode_texts(model: Model, trained: TrainedSAE, texts: Sequence[str]):
    """(latents (n_tok, d_sae), per-text token counts) of ``texts``."""
    acts = capture_tokens(model, trained.site, texts)  # (n_tok, d_in)
    lengths = model.tokenize(list(texts)).lengths.tolist()
    return trained.encode(acts), lengths


@torch.no_grad()
def _top_tokens(model, trained, texts, top, batch_size):
    """(values (top, d_sae), global token ids (top, d_sae), fires (d_sae,), text offsets)."""
    d_sae = trained.width
    best_v = torch.full((top, d_sae), -float("inf"))
    best_i = torch.full((top, d_sae), -1, dtype=torch.long)
    fires = torch.zeros(d_sae, dtype=torch.long)
    offsets, seen = [], 0
    for start in range(0, len(texts), batch_size):
        f, lengths = _encode_texts(model, trained, texts[start : start + batch_size])
        for n in lengths:
            offsets.append(seen)
            seen += n
        fires += (f != 0).sum(0)
        ids = torch.arange(seen - len(f), seen)[:, None].expand_as(f)  # (n_tok, d_sae)
        vals = torch.cat([best_v, f.float()])  # (top + n_tok, d_sae)
        idx = torch.cat([best_i, ids])
        kk = min(top, len(vals))
        best_v, pick = vals.topk(kk, dim=0)
        best_i = idx.gather(0, pick)
    return best_v, best_i, fires, offsets, seen


def _locate(token: int, offsets: list[int]) -> tuple[int, int]:
    import bisect

    t = bisect.bisect_right(offsets, token) - 1
    return t, token - offsets[t]


@torch.no_grad()
def top_contexts(
    model: Model,
    trained: TrainedSAE,
    texts: Sequence[str],
    top: int = 5,
    window: int = 8,
    latents: Sequence[int] | None = None,
    batch_size: int = 16,
) -> FeatureReport:
    """Top ``top`` contexts of each latent (all, or ``latents``) over ``texts``."""
    check_sae_site(model, trained)
    if top < 1:
        raise GatescopeError(f"--top {top}: expected at least 1 context per latent")
    latents = list(range(trained.width)) if latents is None else list(latents)
    bad = [i for i in latents if not 0 <= i < trained.width]
    if bad:
        raise GatescopeError(f"latent {bad[0]}: the SAE has latents 0..{trained.width - 1}")
    best_v, best_i, fires, offsets, n_tok = _top_tokens(model, trained, texts, top, batch_size)
    wanted: dict[int, list[tuple[int, int, int, float]]] = defaultdict(list)
    for lat in latents:
        for v, g in zip(best_v[:, lat].tolist(), best_i[:, lat].tolist(), strict=True):
            if g >= 0 and v > 0:
                t, pos = _locate(g, offsets)
                wanted[t].append((lat, pos, g, v))
    contexts = _windows(model, trained, texts, wanted, window)
    features = []
    for lat in latents:
        ctx = sorted(contexts.get(lat, []), key=lambda c: -c.activation)
        top_v = float(best_v[0, lat]) if len(best_v) else 0.0
        features.append(
            LatentFeatures(lat, float(fires[lat]) / max(n_tok, 1), max(top_v, 0.0), ctx)
        )
    return FeatureReport(str(trained.path), str(trained.site), n_tok, features)


def _windows(model, trained, texts, wanted, window) -> dict[int, list[LatentContext]]:
    out: dict[int, list[LatentContext]] = defaultdict(list)
    tok = model.tokenizer
    for t, items in sorted(wanted.items()):
        f, _ = _encode_texts(model, trained, [texts[t]])  # (T, d_sae)
        ids = model.tokenize([texts[t]]).input_ids[0].tolist()
        words = [tok.decode([i]) for i in ids]
        for lat, pos, _, v in items:
            lo, hi = max(0, pos - window), min(len(ids), pos + window + 1)
            acts = [round(float(a), 4) for a in f[lo:hi, lat]]
            out[lat].append(LatentContext(t, pos, float(v), words[lo:hi], acts, pos - lo))
    return out


@dataclass
class LatentDirection:
    """A latent's decoder direction at its site, for steering.

    Attributes:
        direction: unit-norm decoder row, shaped like the site per token (``(d,)``/``(H, d)``).
        site: the site text, e.g. ``resid_post.1``.
        latent: the latent index.
        norm: the decoder row's norm before normalising.
        provenance: SAE path, architecture, model, latent.
    """

    direction: torch.Tensor
    site: str
    latent: int
    norm: float
    provenance: dict

    def to_dict(self) -> dict:
        return {
            "direction": self.direction.tolist(),
            "site": self.site,
            "latent": self.latent,
            "norm": self.norm,
            "provenance": self.provenance,
        }

    def steering_kwargs(self) -> dict:
        """Keyword arguments for ``interventions.SteeringVector``."""
        from probe.sites import Site

        return {
            "direction": self.direction,
            "site": Site.parse(self.site),
            "method": "sae_latent",
            "provenance": dict(self.provenance),
        }


def latent_direction(trained: TrainedSAE, latent: int) -> LatentDirection:
    """The decoder row of ``latent`` as a unit direction at the SAE's site."""
    if not 0 <= latent < trained.width:
        raise GatescopeError(f"latent {latent}: the SAE has latents 0..{trained.width - 1}")
    row = trained.sae.W_dec[latent].detach().float().cpu()  # pyright: ignore[reportIndexIssue]  # (d_in,)
    norm = float(row.norm())
    if norm == 0:
        raise GatescopeError(f"latent {latent} has a zero decoder row; pick another latent")
    prov = {
        "source": "sae_latent",
        "sae": str(trained.path),
        "architecture": trained.architecture,
        "model": trained.model,
        "latent": latent,
    }
    direction = (row / norm).reshape(trained.site_shape)  # (d,) or (H, d)
    return LatentDirection(direction, str(trained.site), latent, norm, prov)


RESIDUAL_KINDS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")


@dataclass
class LatentDashboard:
    """A latent's feature page (as on Neuronpedia).

    Attributes:
        latent, site, path, tokens: what and over how many tokens.
        firing_rate: fraction of tokens on which the latent is non-zero.
        max_activation: its largest activation.
        histogram: ``{"edges": [...], "counts": [...]}`` of the non-zero activations.
        top_logits / bottom_logits: ``[(token, value)]``, the decoder direction through the
            unembedding (residual-stream sites only, else empty).
        top_contexts: the highest-activating contexts, no two with the same tokens.
        quantile_contexts: per activation interval ``(lo, hi]`` of [0, max], a few contexts
            drawn at random (seeded) from the tokens in it, de-duplicated likewise.
    """

    latent: int
    site: str
    path: str
    tokens: int
    firing_rate: float
    max_activation: float
    histogram: dict
    top_logits: list
    bottom_logits: list
    top_contexts: list[LatentContext]
    quantile_contexts: list[dict]

    def to_dict(self) -> dict:
        return asdict(self)


def decoder_logits(model: Model, trained: TrainedSAE, latent: int, n: int = 10):
    """(top, bottom) ``[(token, value)]`` of ``W_dec[latent] @ W_U`` (residual sites only:
    elsewhere the direction is not in the residual basis and both lists are empty)."""
    if trained.site.kind not in RESIDUAL_KINDS:
        return [], []
    w_u = model.hf.get_output_embeddings().weight.detach().float().cpu()  # pyright: ignore[reportCallIssue]  # (vocab, d_model)
    row = trained.sae.W_dec[latent].detach().float().cpu()  # pyright: ignore[reportIndexIssue]  # (d_model,)
    if row.shape[0] != w_u.shape[1]:
        return [], []
    logits = w_u @ row  # (vocab,)
    n = min(n, len(logits))
    dec = model.tokenizer.decode
    top = logits.topk(n)
    bottom = (-logits).topk(n)
    return (
        [(dec([int(i)]), float(v)) for v, i in zip(top.values, top.indices, strict=True)],
        [(dec([int(i)]), -float(v)) for v, i in zip(bottom.values, bottom.indices, strict=True)],
    )


@torch.no_grad()
def latent_dashboard(
    model: Model,
    trained: TrainedSAE,
    texts: Sequence[str],
    latent: int,
    top: int = 10,
    window: int = 8,
    quantiles: int = 5,
    per_quantile: int = 3,
    bins: int = 30,
    n_logits: int = 10,
    batch_size: int = 16,
    seed: int = 0,
) -> LatentDashboard:
    """The feature page of ``latent`` over ``texts`` (see :class:`LatentDashboard`).

    One pass: the latent's activation at every real token is kept (one float per token),
    with the token ids; contexts are cut from those, so no second pass is needed.
    """
    check_sae_site(model, trained)
    if not 0 <= latent < trained.width:
        raise GatescopeError(f"--latent {latent}: the SAE has latents 0..{trained.width - 1}")
    for name, v in (("--top", top), ("--window", window), ("quantiles", quantiles)):
        if v < (0 if name == "--window" else 1):
            raise GatescopeError(f"{name} {v}: expected a positive number")
    ids_per_text, acts_per_text = [], []
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start : start + batch_size])
        f, lengths = _encode_texts(model, trained, chunk)
        col = f[:, latent].float().cpu()
        batch = model.tokenize(chunk)
        at = 0
        for row, n in enumerate(lengths):
            real = batch.attention_mask[row].bool()
            ids_per_text.append(batch.input_ids[row][real].tolist())
            acts_per_text.append(col[at : at + n])
            at += n
    if not acts_per_text:
        raise GatescopeError("no texts to browse; give some text")
    acts = torch.cat(acts_per_text)  # (n_tok,)
    offsets = [0]
    for a in acts_per_text[:-1]:
        offsets.append(offsets[-1] + len(a))
    words_cache: dict[int, list[str]] = {}

    def context(g: int) -> LatentContext:
        t, pos = _locate(g, offsets)
        if t not in words_cache:
            words_cache[t] = [model.tokenizer.decode([i]) for i in ids_per_text[t]]
        lo, hi = max(0, pos - window), min(len(ids_per_text[t]), pos + window + 1)
        vals = [round(float(a), 4) for a in acts_per_text[t][lo:hi]]
        return LatentContext(t, pos, float(acts[g]), words_cache[t][lo:hi], vals, pos - lo)

    def distinct(candidates, limit: int) -> list[LatentContext]:
        seen, out = set(), []
        for g in candidates:
            c = context(int(g))
            key = tuple(c.tokens)
            if key in seen:
                continue
            seen.add(key)
            out.append(c)
            if len(out) == limit:
                break
        return out

    nz = acts != 0
    fired = acts[nz]
    max_act = float(fired.max()) if len(fired) else 0.0
    order = acts.argsort(descending=True)
    top_ctx = distinct(order[: int(nz.sum())], top)
    if len(fired):
        lo, hi = float(fired.min()), max(max_act, float(fired.min()) + 1e-9)
        counts = torch.histc(fired, bins=bins, min=lo, max=hi)
        hist = {"edges": torch.linspace(lo, hi, bins + 1).tolist(), "counts": counts.tolist()}
    else:
        hist = {"edges": [], "counts": []}
    g = torch.Generator().manual_seed(seed)
    qctx = []
    for q in range(quantiles):
        a, b = max_act * q / quantiles, max_act * (q + 1) / quantiles
        inside = torch.nonzero(nz & (acts > a) & (acts <= b)).flatten()
        picked = inside[torch.randperm(len(inside), generator=g)]
        qctx.append(
            {
                "low": a,
                "high": b,
                "tokens": int(len(inside)),
                "contexts": distinct(picked, per_quantile),
            }
        )
    top_l, bottom_l = decoder_logits(model, trained, latent, n_logits)
    return LatentDashboard(
        latent=latent,
        site=str(trained.site),
        path=str(trained.path),
        tokens=len(acts),
        firing_rate=float(nz.float().mean()),
        max_activation=max(max_act, 0.0),
        histogram=hist,
        top_logits=top_l,
        bottom_logits=bottom_l,
        top_contexts=top_ctx,
        quantile_contexts=qctx,
    )


@torch.no_grad()
def latent_stats(
    model: Model, trained: TrainedSAE, texts: Sequence[str], batch_size: int = 16
) -> dict[str, list[float]]:
    """One pass over ``texts``: per latent ``firing_rate`` and ``max_activation`` (the
    feature list of a browser)."""
    check_sae_site(model, trained)
    fires = torch.zeros(trained.width, dtype=torch.long)
    best = torch.zeros(trained.width)
    n = 0
    for start in range(0, len(texts), batch_size):
        f, _ = _encode_texts(model, trained, texts[start : start + batch_size])
        fires += (f != 0).sum(0).cpu()
        best = torch.maximum(best, f.float().max(0).values.cpu().clamp(min=0))
        n += len(f)
    if n == 0:
        raise GatescopeError("no texts to browse; give some text")
    return {"firing_rate": (fires.double() / n).tolist(), "max_activation": best.tolist()}
