"""Token streams for SAE harvesting, training and evaluation, and streaming data providers.

1. ``reference_texts(split)``: the reference corpus (template documents and prose) for
   ``train``; held-out prose plus documents from another seed for ``eval``.
2. ``read_texts(path, model)``: the lines of any text file, each cut into pieces that fit
   the model's context (bisecting on words, checked with the tokenizer), short ones packed
   into context-sized windows unless ``pack=False``.
3. ``store_provider`` / ``model_provider``: endless iterators of ``(batch, d_in)`` tensors
   for SAELens's ``SAETrainer`` (its ``DataProvider``), from an :class:`ActivationStore` or
   straight from the model through ``probe.Tracer`` with a shuffling buffer. For a
   transcoder, batches are ``[x | y]``: the input and output sites at the same tokens, from
   one forward pass (``model_provider(..., out_site=...)``) or from two stores harvested
   over the same texts (``paired_store_provider``: same shards, so the same shuffle).
   Texts whose activations fit in :data:`CACHE_BYTES` are run through the model once and
   their activations reshuffled each epoch (``capture_all`` + ``memory_provider``) instead
   of being recomputed every epoch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from probe.errors import GatescopeError
from probe.model import Model
from probe.sites import Site
from probe.store import ActivationStore, capture_tokens

#: How lines of text become forward passes: each its own window, or packed together.
TEXT_MODES = ("lines", "packed")
#: Activations of the training texts up to this size are kept in memory for all epochs.
CACHE_BYTES = 256 * 2**20


def reference_texts(split: str = "train", scale: float = 0.25, seed: int = 0) -> list[str]:
    """Documents of the reference corpus: ``train`` (seed ``seed``) or ``eval`` (held out)."""
    from probe.reference.corpus import build_corpus

    if split == "train":
        return list(build_corpus(seed=seed, scale=scale).documents)
    if split == "eval":
        import random

        corpus = build_corpus(seed=seed + 1, scale=scale)
        texts = list(corpus.heldout_prose) + list(corpus.documents[:2000])
        random.Random(seed).shuffle(texts)
        return texts
    raise GatescopeError(f"split {split!r}: expected 'train' or 'eval'")


def _fit(model: Model, text: str) -> list[str]:
    """``text`` cut on word boundaries into pieces of at most the model's context."""
    n = len(model.tokenizer(text)["input_ids"])
    words = text.split()
    if n <= model.dims.n_ctx or len(words) < 2:
        return [text] if n <= model.dims.n_ctx else []
    half = len(words) // 2
    return _fit(model, " ".join(words[:half])) + _fit(model, " ".join(words[half:]))


def read_texts(path: str | Path, model: Model, pack: bool = True) -> list[str]:
    """Non-empty lines of a text file, each fitted to the model's context; with ``pack`` (the
    default, as in :func:`fit_texts` and ``--text-mode packed``) consecutive short lines
    joined into context-sized windows, else one document per line."""
    path = Path(path)
    if not path.is_file():
        raise GatescopeError(f"--text {path}: no such file")
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise GatescopeError(
            f"--text {path}: not UTF-8 text (byte {exc.start}); convert it to UTF-8"
        ) from None
    lines = [ln.strip() for ln in raw.splitlines() if ln.strip()]
    if not lines:
        raise GatescopeError(f"--text {path}: the file has no text")
    return fit_texts(lines, model, pack=pack)


def _counts(model: Model, texts: Sequence[str]) -> list[int]:
    return [len(ids) for ids in model.tokenizer(list(texts))["input_ids"]]


def fit_texts(texts: Sequence[str], model: Model, pack: bool = True) -> list[str]:
    """``texts`` with each over-long one cut to fit the context; with ``pack``, consecutive
    short texts are joined (by newlines) into pieces of up to the context length, so each
    forward pass is full (many short documents in one window, as in pretraining)."""
    ctx = model.dims.n_ctx
    texts = [t for t in texts if t.strip()]
    pieces, counts = [], []
    for text, n in zip(texts, _counts(model, texts), strict=True):
        parts = [text] if n <= ctx else _fit(model, text)
        pieces += parts
        counts += [n] if n <= ctx else _counts(model, parts)
    if not pack:
        return pieces
    budget = ctx - 8  # margin for merges across the joins and special tokens
    packed, cur, used = [], [], 0
    for piece, n in zip(pieces, counts, strict=True):
        if cur and used + n + 1 > budget:
            packed.append("\n".join(cur))
            cur, used = [], 0
        cur.append(piece)
        used += n + 1
    if cur:
        packed.append("\n".join(cur))
    final = _counts(model, packed)
    return [p for text, n in zip(packed, final, strict=True) for p in _fit_if(model, text, n)]


def _fit_if(model: Model, text: str, n: int) -> list[str]:
    return [text] if n <= model.dims.n_ctx else _fit(model, text)


def store_provider(
    store: ActivationStore, batch_size: int, seed: int = 0, skip: int = 0
) -> Iterator[torch.Tensor]:
    """Endless shuffled ``(batch_size, d_in)`` batches; epoch e uses seed ``seed + e``."""
    if store.tokens < batch_size:
        raise GatescopeError(
            f"store {store.path} holds {store.tokens} tokens, fewer than one batch "
            f"({batch_size}); harvest more or lower --batch-size"
        )
    epoch, n = 0, 0
    while True:
        for batch in store.batches(batch_size, shuffle=True, seed=seed + epoch):
            n += 1
            if n > skip:
                yield batch
        epoch += 1


def capture_pair(
    model: Model, site: Site, out_site: Site, texts: Sequence[str], first: int = 0
) -> torch.Tensor:
    """``[x | y]`` (n_tokens, d_in + d_out): two sites at every real token of ``texts``, from
    one forward pass."""
    from probe.tracer import Tracer

    batch = model.tokenize(list(texts))
    with Tracer(model, [site, out_site]) as tr, torch.no_grad():
        model.forward(batch.input_ids, batch.attention_mask)
    parts = []
    for s in (site, out_site):
        value = tr[s][batch.attention_mask.bool().to(tr[s].device)]  # (n_tokens, ...)
        parts.append(value.flatten(1).to("cpu", torch.float32))
    acts = torch.cat(parts, dim=1)
    if torch.isnan(acts).any():
        raise GatescopeError(
            f"NaN activations at {site} or {out_site} in texts {first}-{first + len(texts) - 1};"
            " check the model's dtype (try float32) and those inputs"
        )
    return acts


def check_paired_stores(store: ActivationStore, out_store: ActivationStore) -> None:
    """Refuse two stores that do not hold the same tokens in the same shards (they must be
    harvested from one model over the same texts with the same --tokens and --shard-tokens)."""
    a, b = store.manifest, out_store.manifest
    same = {
        "model": a["model"] == b["model"],
        "weights": a.get("model_fingerprint") == b.get("model_fingerprint"),
        "tokens": a["tokens"] == b["tokens"],
        "shards": [s["tokens"] for s in a["shards"]] == [s["tokens"] for s in b["shards"]],
        "texts": a.get("texts_done") == b.get("texts_done"),
        "tokenizer": a.get("tokenizer") == b.get("tokenizer"),
    }
    differ = [name for name, ok in same.items() if not ok]
    if differ:
        raise GatescopeError(
            f"stores {store.path} ({a['site']}) and {out_store.path} ({b['site']}) differ in "
            f"{', '.join(differ)}: a transcoder needs both sites at the same tokens; harvest "
            "both from one model with the same --text, --text-mode, --tokens and --shard-tokens"
        )


def paired_store_provider(
    store: ActivationStore,
    out_store: ActivationStore,
    batch_size: int,
    seed: int = 0,
    skip: int = 0,
) -> Iterator[torch.Tensor]:
    """Endless ``[x | y]`` batches from two aligned stores (the same shuffle of both)."""
    check_paired_stores(store, out_store)
    xs = store_provider(store, batch_size, seed, skip)
    ys = store_provider(out_store, batch_size, seed, skip)
    for x, y in zip(xs, ys, strict=True):
        yield torch.cat([x, y], dim=1)


@torch.no_grad()
def capture_all(
    model: Model,
    site: Site,
    texts: Sequence[str],
    out_site: Site | None = None,
    text_batch: int = 16,
) -> torch.Tensor:
    """(n_tokens, width) activations of every real token of ``texts`` (``[x | y]`` with
    ``out_site``), in order."""
    parts = []
    for i in range(0, len(texts), text_batch):
        chunk = list(texts[i : i + text_batch])
        if out_site is None:
            parts.append(capture_tokens(model, site, chunk, first=i))
        else:
            parts.append(capture_pair(model, site, out_site, chunk, first=i))
    return torch.cat(parts)


def memory_provider(
    acts: torch.Tensor, batch_size: int, seed: int = 0, skip: int = 0
) -> Iterator[torch.Tensor]:
    """Endless shuffled ``(batch_size, width)`` batches of ``acts``; epoch e is shuffled with
    seed ``seed + e``; the last partial batch of an epoch is dropped."""
    if len(acts) < batch_size:
        raise GatescopeError(
            f"the texts hold {len(acts)} tokens, fewer than one batch ({batch_size}); give "
            "more text or lower --batch-size"
        )
    epoch, n = 0, 0
    while True:
        order = torch.randperm(len(acts), generator=torch.Generator().manual_seed(seed + epoch))
        for s in range(0, len(acts) - batch_size + 1, batch_size):
            n += 1
            if n > skip:
                yield acts[order[s : s + batch_size]]
        epoch += 1


def model_provider(
    model: Model,
    site: Site,
    texts: Sequence[str],
    batch_size: int,
    seed: int = 0,
    skip: int = 0,
    text_batch: int = 16,
    buffer_batches: int = 8,
    out_site: Site | None = None,
) -> Iterator[torch.Tensor]:
    """Endless batches harvested on the fly: fill a buffer of ``buffer_batches`` batches of
    tokens, shuffle it, yield its full batches, keep the remainder. With ``out_site`` each
    row is ``[x | y]`` (a transcoder's input and output at one token)."""
    g = torch.Generator().manual_seed(seed)
    rest = torch.empty(0)
    n, i = 0, 0
    while True:
        parts = [rest] if len(rest) else []
        have = len(rest)
        while have < buffer_batches * batch_size:
            chunk = [texts[(i + j) % len(texts)] for j in range(text_batch)]
            if out_site is None:
                acts = capture_tokens(model, site, chunk, first=i % len(texts))  # (n_tok, d_in)
            else:
                acts = capture_pair(model, site, out_site, chunk, first=i % len(texts))
            parts.append(acts)
            have += len(acts)
            i += text_batch
        pool = torch.cat(parts)
        pool = pool[torch.randperm(len(pool), generator=g)]
        full = len(pool) // batch_size * batch_size
        for s in range(0, full, batch_size):
            n += 1
            if n > skip:
                yield pool[s : s + batch_size]
        rest = pool[full:]
