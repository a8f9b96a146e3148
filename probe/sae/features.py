"""Feature browser data: top-activating contexts per latent, firing rates, and a steering
direction from a latent's decoder row (as in Bricken et al. 2023 / Templeton et al. 2024).

1. Pass 1 over the texts: capture the site, encode every real token, keep per latent the
   ``top`` largest activations as (value, global token index) by merging running top-k
   tensors ``(top, d_sae)``, and count firings.
2. Pass 2 over only the texts that hold a kept context: encode again and cut, per context,
   a window of ``window`` tokens either side with the latent's activation at each token.
3. ``latent_direction``: the decoder row ``W_dec[i]`` (unit norm), reshaped to the site's
   per-token shape (a transcoder's: its output site's), with provenance, for
   ``interventions.SteeringVector(**d.steering_kwargs())``.

Tokens are shown as text by :func:`token_strings`: a character split over several byte
tokens is shown whole on the token that completes it (its earlier pieces show as empty),
never as U+FFFD. Contexts are de-duplicated by :class:`_Distinct`: no two from overlapping
windows of one text, none whose text around the peak (``CORE`` tokens either side) repeats
another's, so a sentence that recurs across documents is shown once.
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

REPLACEMENT = "\ufffd"
CORE = 3  # tokens either side of the peak that make a context's identity


def token_strings(tokenizer, ids: Sequence[int]) -> list[str]:
    """One string per token of ``ids``; their concatenation is ``tokenizer.decode(ids)``
    where the tokenizer decodes piecewise. Byte tokens that only together make a character
    (byte-level BPE) are grouped: the character shows on the last of them, the others are
    empty, so no U+FFFD appears for a character the text holds whole."""
    ids = [int(i) for i in ids]
    out: list[str] = []
    start = 0
    for i in range(len(ids)):
        text = tokenizer.decode(ids[start : i + 1])
        incomplete = text.endswith(REPLACEMENT) and i + 1 < len(ids) and i - start < 3
        if incomplete:
            out.append("")
            continue
        out.append(text)
        start = i + 1
    return out


def _byte_decoder() -> dict[str, int]:
    """The inverse of byte-level BPE's byte-to-character table (GPT-2's)."""
    bs = list(range(ord("!"), ord("~") + 1))
    bs += list(range(ord("\xa1"), ord("\xac") + 1)) + list(range(ord("\xae"), ord("\xff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def token_label(tokenizer, token_id: int) -> str:
    """A single token as text; a piece of a multi-byte character (which alone decodes to
    U+FFFD) as its bytes, e.g. ``<0xE2 0x80>``."""
    text = tokenizer.decode([int(token_id)])
    if REPLACEMENT not in text:
        return text
    raw = tokenizer.convert_ids_to_tokens(int(token_id)) or ""
    table = _byte_decoder()
    if raw and all(ch in table for ch in raw):
        data = bytes(table[ch] for ch in raw)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return "<" + " ".join(f"0x{b:02X}" for b in data) + ">"
    m = raw.strip("<>")
    return f"<{m}>" if m else text


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
    n_best = top * CANDIDATES  # more candidates than shown: duplicates are dropped
    best_v, best_i, fires, offsets, n_tok = _top_tokens(model, trained, texts, n_best, batch_size)
    wanted: dict[int, list[tuple[int, int, int, float]]] = defaultdict(list)
    for lat in latents:
        for v, g in zip(best_v[:, lat].tolist(), best_i[:, lat].tolist(), strict=True):
            if g >= 0 and v > 0:
                t, pos = _locate(g, offsets)
                wanted[t].append((lat, pos, g, v))
    contexts = _windows(model, trained, texts, wanted, window)
    features = []
    for lat in latents:
        ranked = sorted(contexts.get(lat, []), key=lambda c: -c.activation)
        keep = _Distinct(window)
        ctx = [c for c in ranked if keep.add(c, texts[c.text_index])][:top]
        top_v = float(best_v[0, lat]) if len(best_v) else 0.0
        features.append(
            LatentFeatures(lat, float(fires[lat]) / max(n_tok, 1), max(top_v, 0.0), ctx)
        )
    return FeatureReport(str(trained.path), str(trained.site), n_tok, features)


CANDIDATES = 4  # top contexts considered per context shown


class _Distinct:
    """Accepts a context unless one already accepted comes from an overlapping window of
    the same document (or of a document with the same tokens), or has the same text within
    ``CORE`` tokens of its peak (whitespace aside): the same sentence in another document
    is a repeat."""

    def __init__(self, window: int):
        self.window = window
        self.positions: dict = defaultdict(list)
        self.cores: set[str] = set()

    def add(self, c: LatentContext, doc=None) -> bool:
        """``doc``: what identifies the document (default: its index), e.g. its tokens."""
        near = self.positions[c.text_index if doc is None else doc]
        if any(abs(c.position - p) <= 2 * self.window for p in near):
            return False
        lo = max(0, c.center - CORE)
        core = " ".join("".join(c.tokens[lo : c.center + CORE + 1]).split())
        if core in self.cores:
            return False
        near.append(c.position)
        self.cores.add(core)
        return True


def _windows(model, trained, texts, wanted, window) -> dict[int, list[LatentContext]]:
    out: dict[int, list[LatentContext]] = defaultdict(list)
    for t, items in sorted(wanted.items()):
        f, _ = _encode_texts(model, trained, [texts[t]])  # (T, d_sae)
        batch = model.tokenize([texts[t]])
        ids = batch.input_ids[0][batch.attention_mask[0].bool()].tolist()
        words = token_strings(model.tokenizer, ids)
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
    """The decoder row of ``latent`` as a unit direction at the SAE's site (a transcoder's:
    at its output site, where the decoder writes)."""
    if not 0 <= latent < trained.width:
        raise GatescopeError(f"latent {latent}: the SAE has latents 0..{trained.width - 1}")
    row = trained.sae.W_dec[latent].detach().float().cpu()  # (d_in,)
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
    direction = (row / norm).reshape(trained.decoder_shape)  # (d,) or (H, d)
    return LatentDirection(direction, str(trained.decoder_site), latent, norm, prov)


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
        top_contexts: the highest-activating contexts, no two from overlapping windows of
            one text or with the same text around the peak (:class:`_Distinct`).
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


@torch.no_grad()
def through_final_norm(model: Model, direction: torch.Tensor) -> torch.Tensor:
    """``direction`` (d_model,) as the model's final norm passes it on: RMSNorm's per-dim
    weight applied (``g * d``, whatever form the family gives ``g``: Qwen3-Next's
    ``1 + w`` too), LayerNorm's centring too, its bias left out (it is no part of a
    direction). Computed with the model's own norm module on ``d`` scaled to unit RMS, then
    scaled back: ``(norm(c d) - norm(0)) / c`` with ``c = 1 / rms(d)``; for an RMSNorm
    this is ``g * d`` exactly (up to its epsilon)."""
    from probe.locate import resolve_path

    norm = resolve_path(model.hf, model.family.final_norm) if model.family.final_norm else None
    d = direction.float()
    rms = float(d.pow(2).mean().sqrt())
    if norm is None or rms == 0:
        return d
    p = next(norm.parameters(), None)
    dtype = p.dtype if p is not None else torch.float32
    device = p.device if p is not None else model.device
    x = torch.stack([d / rms, torch.zeros_like(d)]).to(device, dtype)[None]  # (1, 2, d_model)
    y = norm(x)[0].float().cpu()
    return (y[0] - y[1]) * rms


def decoder_logits(model: Model, trained: TrainedSAE, latent: int, n: int = 10):
    """(top, bottom) ``[(token, value)]`` of ``W_U @ final_norm(W_dec[latent])``: the
    decoder direction through the model's own final norm (:func:`through_final_norm`) and
    unembedding, i.e. the logits a unit of the latent adds when written to the last layer's
    residual stream, norm scale aside (residual sites only, for a transcoder its output
    site: elsewhere the direction is not in the residual basis and both lists are empty)."""
    if trained.decoder_site.kind not in RESIDUAL_KINDS:
        return [], []
    w_u = model.hf.get_output_embeddings().weight.detach().float().cpu()  # pyright: ignore[reportCallIssue]  # (vocab, d_model)
    row = trained.sae.W_dec[latent].detach().float().cpu()  # (d_model,)
    if row.shape[0] != w_u.shape[1]:
        return [], []
    logits = w_u @ through_final_norm(model, row)  # (vocab,)
    n = min(n, len(logits))
    tok = model.tokenizer
    top = logits.topk(n)
    bottom = (-logits).topk(n)
    return (
        [(token_label(tok, i), float(v)) for v, i in zip(top.values, top.indices, strict=True)],
        [
            (token_label(tok, i), -float(v))
            for v, i in zip(bottom.values, bottom.indices, strict=True)
        ],
    )


@dataclass
class LatentCorpus:
    """Every non-zero latent activation of an SAE over some texts, grouped by latent (what a
    browser needs to draw any latent's page without another pass over the model).

    Attributes:
        path, site, width: the SAE.
        ids_per_text: each text's real token ids.
        offsets: the global index of each text's first token.
        tokens: real tokens in all.
        ptr: (width + 1,) where each latent's entries start in ``token`` / ``value``.
        token: (nnz,) global token index of each non-zero activation, grouped by latent.
        value: (nnz,) the activations.
    """

    path: str
    site: str
    width: int
    ids_per_text: list[list[int]]
    offsets: list[int]
    tokens: int
    ptr: torch.Tensor
    token: torch.Tensor
    value: torch.Tensor
    words: dict = field(default_factory=dict, repr=False)  # token strings per text, cached

    def column(self, latent: int) -> torch.Tensor:
        """(tokens,) the latent's activation at every token (0 where it does not fire)."""
        lo, hi = int(self.ptr[latent]), int(self.ptr[latent + 1])
        col = torch.zeros(self.tokens)
        col[self.token[lo:hi]] = self.value[lo:hi]
        return col

    def stats(self) -> dict[str, list[float]]:
        """Per latent ``firing_rate`` and ``max_activation`` (the feature list)."""
        counts = (self.ptr[1:] - self.ptr[:-1]).double()
        best = torch.zeros(self.width)
        lat = torch.repeat_interleave(torch.arange(self.width), self.ptr[1:] - self.ptr[:-1])
        best.scatter_reduce_(0, lat, self.value.clamp(min=0), reduce="amax")
        return {
            "firing_rate": (counts / max(self.tokens, 1)).tolist(),
            "max_activation": best.tolist(),
        }

    def words_of(self, tokenizer, t: int) -> list[str]:
        if t not in self.words:
            self.words[t] = token_strings(tokenizer, self.ids_per_text[t])
        return self.words[t]


@torch.no_grad()
def encode_corpus(
    model: Model,
    trained: TrainedSAE,
    texts: Sequence[str],
    batch_size: int = 16,
    callback=None,
) -> LatentCorpus:
    """Encode ``texts`` once and keep the non-zero latents (:class:`LatentCorpus`);
    ``callback(done, total)`` after each batch of texts."""
    check_sae_site(model, trained)
    if not len(texts):
        raise GatescopeError("no texts to browse; give some text")
    ids_per_text, offsets = [], []
    rows, lats, vals = [], [], []
    seen = 0
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start : start + batch_size])
        f, lengths = _encode_texts(model, trained, chunk)  # (n_tok, d_sae)
        batch = model.tokenize(chunk)
        for row in range(len(chunk)):
            real = batch.attention_mask[row].bool()
            ids_per_text.append(batch.input_ids[row][real].tolist())
        for n in lengths:
            offsets.append(seen)
            seen += n
        nz = torch.nonzero(f).cpu()  # (nnz, 2): token in batch, latent
        rows.append(nz[:, 0] + (seen - len(f)))
        lats.append(nz[:, 1])
        vals.append(f[nz[:, 0], nz[:, 1]].float().cpu())
        if callback is not None:
            callback(min(start + batch_size, len(texts)), len(texts))
    lat = torch.cat(lats)
    order = torch.sort(lat, stable=True).indices
    ptr = torch.zeros(trained.width + 1, dtype=torch.long)
    ptr[1:] = torch.bincount(lat, minlength=trained.width).cumsum(0)
    return LatentCorpus(
        path=str(trained.path),
        site=str(trained.site),
        width=trained.width,
        ids_per_text=ids_per_text,
        offsets=offsets,
        tokens=seen,
        ptr=ptr,
        token=torch.cat(rows)[order],
        value=torch.cat(vals)[order],
    )


def _check_page_args(trained: TrainedSAE, latent: int, top: int, window: int, quantiles: int):
    if not 0 <= latent < trained.width:
        raise GatescopeError(f"--latent {latent}: the SAE has latents 0..{trained.width - 1}")
    for name, v in (("--top", top), ("--window", window), ("quantiles", quantiles)):
        if v < (0 if name == "--window" else 1):
            raise GatescopeError(f"{name} {v}: expected a positive number")


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
    """The feature page of ``latent`` over ``texts`` (see :class:`LatentDashboard`): one
    pass (:func:`encode_corpus`), then :func:`corpus_dashboard`."""
    check_sae_site(model, trained)
    _check_page_args(trained, latent, top, window, quantiles)
    corpus = encode_corpus(model, trained, texts, batch_size)
    return corpus_dashboard(
        model, trained, corpus, latent, top, window, quantiles, per_quantile, bins, n_logits, seed
    )


@torch.no_grad()
def corpus_dashboard(
    model: Model,
    trained: TrainedSAE,
    corpus: LatentCorpus,
    latent: int,
    top: int = 10,
    window: int = 8,
    quantiles: int = 5,
    per_quantile: int = 3,
    bins: int = 30,
    n_logits: int = 10,
    seed: int = 0,
) -> LatentDashboard:
    """The feature page of ``latent`` from an encoded corpus (no pass over the model)."""
    _check_page_args(trained, latent, top, window, quantiles)
    acts = corpus.column(latent)  # (n_tok,)
    offsets = corpus.offsets

    def context(g: int) -> LatentContext:
        t, pos = _locate(g, offsets)
        n = len(corpus.ids_per_text[t])
        lo, hi = max(0, pos - window), min(n, pos + window + 1)
        vals = [round(float(a), 4) for a in acts[offsets[t] + lo : offsets[t] + hi]]
        words = corpus.words_of(model.tokenizer, t)[lo:hi]
        return LatentContext(t, pos, float(acts[g]), words, vals, pos - lo)

    def distinct(candidates, limit: int) -> list[LatentContext]:
        keep, out = _Distinct(window), []
        for g in candidates:
            c = context(int(g))
            if not keep.add(c, tuple(corpus.ids_per_text[c.text_index])):
                continue
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
    return encode_corpus(model, trained, texts, batch_size).stats()
