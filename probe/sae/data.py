"""Token streams for SAE harvesting, training and evaluation, and streaming data providers.

1. ``reference_texts(split)``: the reference corpus (template documents and prose) for
   ``train``; held-out prose plus documents from another seed for ``eval``.
2. ``read_texts(path, model)``: the lines of any text file, each cut into pieces that fit
   the model's context (bisecting on words, checked with the tokenizer), short ones packed
   into context-sized windows unless ``pack=False``.
3. ``store_provider`` / ``model_provider``: endless iterators of ``(batch, d_in)`` tensors
   for SAELens's ``SAETrainer`` (its ``DataProvider``), from an :class:`ActivationStore` or
   straight from the model through ``probe.Tracer`` with a shuffling buffer.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from probe.errors import GatescopeError
from probe.model import Model
from probe.sites import Site
from probe.store import ActivationStore, capture_tokens


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


def model_provider(
    model: Model,
    site: Site,
    texts: Sequence[str],
    batch_size: int,
    seed: int = 0,
    skip: int = 0,
    text_batch: int = 16,
    buffer_batches: int = 8,
) -> Iterator[torch.Tensor]:
    """Endless batches harvested on the fly: fill a buffer of ``buffer_batches`` batches of
    tokens, shuffle it, yield its full batches, keep the remainder."""
    g = torch.Generator().manual_seed(seed)
    rest = torch.empty(0)
    n, i = 0, 0
    while True:
        parts = [rest] if len(rest) else []
        have = len(rest)
        while have < buffer_batches * batch_size:
            chunk = [texts[(i + j) % len(texts)] for j in range(text_batch)]
            acts = capture_tokens(model, site, chunk, first=i % len(texts))  # (n_tok, d_in)
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
