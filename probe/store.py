"""Activation store: a site's activations over a token stream, in sharded safetensors files.

1. ``harvest`` runs the model over texts in batches, keeps the site's value at every real
   token (flattened per token: heads x d_head becomes one vector) and writes a shard each
   ``shard_tokens`` tokens.
2. Every shard is written to a temporary name and renamed, then the manifest (model, site,
   dtype, width, tokens, shards, texts consumed, tokenizer) likewise: a crash leaves complete
   shards and a valid manifest, and running ``harvest`` again resumes after the last shard.
3. ``ActivationStore`` opens a store, checks every shard, refuses a store from another model
   or site, and iterates shuffled batches one shard at a time (bounded memory).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from probe.errors import GatescopeError
from probe.io import save_safetensors, write_json
from probe.model import Model
from probe.sites import Site
from probe.tracer import Tracer

FORMAT = "gatescope.store/1"


def model_fingerprint(model: Model) -> str:
    """A short sha256 over every parameter's name, shape, dtype and its first and last 1024
    values: two models with the same width but other weights differ (cheap on large models)."""
    import hashlib

    h = hashlib.sha256()
    for name, p in model.hf.named_parameters():
        h.update(f"{name}:{tuple(p.shape)}:{p.dtype}".encode())
        flat = p.detach().reshape(-1)
        if flat.device.type == "meta":
            continue
        for part in (flat[:1024], flat[-1024:]):
            h.update(part.to("cpu", torch.float32).numpy().tobytes())
    return h.hexdigest()[:16]


def _write_atomic_json(path: Path, obj: dict) -> None:
    write_json(path, obj)


def _write_shard(folder: Path, index: int, acts: torch.Tensor) -> str:
    name = f"shard_{index:05d}.safetensors"
    save_safetensors({"activations": acts}, folder / name)
    return name


def texts_sha256(texts: Sequence[str]) -> str:
    """sha256 of a list of texts (each text and its end are hashed, so splits count)."""
    h = hashlib.sha256()
    for text in texts:
        h.update(text.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


def check_harvest_options(tokens: int, shard_tokens: int, batch_size: int) -> None:
    """Refuse counts that cannot work, before any model loads or text is read."""
    for value, option, what in (
        (tokens, "--tokens", "tokens to harvest"),
        (shard_tokens, "--shard-tokens", "tokens per shard"),
        (batch_size, "--batch-size", "texts per forward pass"),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise GatescopeError(f"{option} {value}: expected a whole number >= 1 ({what})")


def harvest(
    model: Model,
    site: Site | str,
    texts: Sequence[str],
    tokens: int,
    out: str | Path,
    shard_tokens: int = 65536,
    batch_size: int = 16,
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
    force: bool = False,
) -> Path:
    """Harvest ``tokens`` activations of ``site`` into ``out`` (resuming a partial store).

    The manifest records the model's fingerprint, the site and the sha256 of ``texts``; a
    store harvested from another model or other texts is refused (``force``: continue it
    anyway; never another site). ``manifest["last_run"]`` holds this run's tokens, seconds
    and tokens/s (0 tokens: the store was already complete)."""
    check_harvest_options(tokens, shard_tokens, batch_size)
    site = Site.parse(site) if isinstance(site, str) else site
    model.check_site(site)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "manifest.json"
    source = texts_sha256(texts)
    manifest = _open_manifest(out, model, site, dtype, force)
    recorded = manifest.setdefault("texts_sha256", source)
    if recorded != source and not force:
        raise GatescopeError(
            f"store {out} was harvested from other texts (sha256 {recorded[:12]}..., these "
            f"are {source[:12]}...): resuming would append another corpus; give the same "
            "--text, another --out directory, or --force to append anyway"
        )
    if recorded != source:  # forced: keep what the earlier shards came from
        manifest.setdefault("texts_sha256_before", []).append(recorded)
        manifest["texts_sha256"] = source
    buffer: list[torch.Tensor] = []
    buffered = 0
    start = manifest["texts_done"]
    from tqdm.auto import tqdm

    bar = tqdm(
        total=tokens,
        initial=manifest["tokens"],
        unit="tok",
        unit_scale=True,
        desc=f"harvest {site}",
        disable=not progress,
    )
    t0, had = time.perf_counter(), manifest["tokens"]
    i = start
    while manifest["tokens"] + buffered < tokens and i < len(texts):
        chunk = list(texts[i : i + batch_size])
        acts = capture_tokens(model, site, chunk, dtype, first=i)
        buffer.append(acts)
        buffered += len(acts)
        i += len(chunk)
        bar.update(min(len(acts), tokens - manifest["tokens"] - buffered + len(acts)))
        if buffered >= shard_tokens or manifest["tokens"] + buffered >= tokens:
            _flush(out, manifest, buffer, i, tokens)
            buffer, buffered = [], 0
    if buffer:
        _flush(out, manifest, buffer, i, tokens)
    bar.close()
    seconds = time.perf_counter() - t0
    added = manifest["tokens"] - had  # this run's tokens only
    rate = added / seconds if added else None
    if manifest["tokens"] < tokens:
        raise GatescopeError(
            f"the texts ran out after {manifest['tokens']} tokens (asked for {tokens}); "
            "give more text or fewer tokens (the store so far is complete and resumable)"
        )
    manifest["tokens_per_second"] = None if rate is None else round(rate, 1)
    manifest["last_run"] = {
        "tokens": added,
        "seconds": round(seconds, 3),
        "tokens_per_second": manifest["tokens_per_second"],
        "already_complete": added == 0,
    }
    _write_atomic_json(manifest_path, manifest)
    return out


def _open_manifest(
    out: Path, model: Model, site: Site, dtype: torch.dtype, force: bool = False
) -> dict:
    """The store's manifest to append to (checked against the source), or a new one."""
    if (out / "manifest.json").is_file():
        manifest = ActivationStore(out).manifest
        _same_source(manifest, model, site, out, force)
        return manifest
    width, shape = site_width(model, site)
    return {
        "format": FORMAT,
        "model": model.name,
        "site": str(site),
        "dtype": str(dtype).removeprefix("torch."),
        "width": width,
        "site_shape": shape,
        "tokens": 0,
        "shards": [],
        "texts_done": 0,
        "tokenizer": getattr(model.tokenizer, "name_or_path", ""),
        "model_fingerprint": model_fingerprint(model),
    }


@torch.no_grad()
def site_width(model: Model, site: Site) -> tuple[int, list[int]]:
    """(flattened width, per-token shape) of ``site`` in ``model``, from a one-token pass."""
    ids = torch.zeros(1, 1, dtype=torch.long)
    with Tracer(model, site) as tr:
        model.forward(ids, torch.ones_like(ids))
    shape = [int(n) for n in tr[site].shape[2:]]
    return math.prod(shape), shape


def capture_tokens(
    model: Model, site: Site, texts: Sequence[str], dtype=torch.float32, first: int = 0
) -> torch.Tensor:
    """(n_tokens, width) the site's value at every real token of ``texts``."""
    batch = model.tokenize(list(texts))
    with Tracer(model, site) as tr, torch.no_grad():
        model.forward(batch.input_ids, batch.attention_mask)
    acts = tr[site][batch.attention_mask.bool().to(tr[site].device)]  # (n_tokens, ...)
    acts = acts.flatten(1).to("cpu", dtype)
    if torch.isnan(acts).any():
        raise GatescopeError(
            f"NaN activations at {site} in texts {first}-{first + len(texts) - 1}; "
            "check the model's dtype (try float32) and those inputs"
        )
    return acts


def _flush(out: Path, manifest: dict, buffer: list[torch.Tensor], texts_done: int, cap: int):
    acts = torch.cat(buffer)[: cap - manifest["tokens"]]
    name = _write_shard(out, len(manifest["shards"]), acts)
    manifest["width"] = int(acts.shape[1])
    manifest["shards"].append({"file": name, "tokens": int(len(acts))})
    manifest["tokens"] += int(len(acts))
    manifest["texts_done"] = texts_done
    _write_atomic_json(out / "manifest.json", manifest)


def _same_source(manifest: dict, model: Model, site: Site, path: Path, force: bool = False) -> None:
    if manifest["site"] != str(site) or (manifest["model"] != model.name and not force):
        raise GatescopeError(
            f"store {path} holds {manifest['site']} of {manifest['model']}, not {site} of "
            f"{model.name}; use another --out directory"
        )
    recorded = manifest.get("model_fingerprint")
    if recorded and not force and recorded != model_fingerprint(model):
        raise GatescopeError(
            f"store {path} was harvested from a model with other weights (fingerprint "
            f"{recorded}, this {model.name} has {model_fingerprint(model)}); harvest again "
            "into another --out, or pass --force to use it anyway"
        )


@dataclass
class ActivationStore:
    """A harvested store: ``manifest`` plus shuffled batch iteration."""

    path: Path

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        manifest = self.path / "manifest.json"
        if not manifest.is_file():
            raise GatescopeError(f"{self.path} is not an activation store (no manifest.json)")
        try:
            self.manifest = json.loads(manifest.read_text())
        except json.JSONDecodeError:
            raise GatescopeError(f"{manifest} is not valid JSON") from None
        if self.manifest.get("format") != FORMAT:
            raise GatescopeError(f"{manifest}: unknown format {self.manifest.get('format')}")
        for shard in self.manifest["shards"]:
            self._check_shard(shard)

    def _check_shard(self, shard: dict) -> None:
        from safetensors import safe_open

        path = self.path / shard["file"]
        try:
            with safe_open(str(path), "pt") as f:
                shape = f.get_slice("activations").get_shape()
        except Exception as exc:  # safetensors raises its own error types
            raise GatescopeError(f"shard {path} is missing, empty or truncated ({exc})") from None
        if shape[0] != shard["tokens"] or shape[1] != self.manifest["width"]:
            raise GatescopeError(
                f"shard {path} holds {shape[0]} x {shape[1]}, the manifest says "
                f"{shard['tokens']} x {self.manifest['width']}; re-harvest it"
            )

    @property
    def tokens(self) -> int:
        return self.manifest["tokens"]

    @property
    def width(self) -> int:
        return self.manifest["width"]

    def check(self, model: Model, site: Site | str, force: bool = False) -> None:
        """Refuse a store harvested from another model (name or weight fingerprint) or site;
        ``force`` accepts another model, never another site."""
        site = Site.parse(site) if isinstance(site, str) else site
        _same_source(self.manifest, model, site, self.path, force)

    def batches(
        self, batch_size: int, shuffle: bool = True, seed: int = 0
    ) -> Iterator[torch.Tensor]:
        """(batch_size, width) batches; one shard in memory at a time."""
        from safetensors.torch import load_file

        g = torch.Generator().manual_seed(seed)
        shards = list(self.manifest["shards"])
        order = torch.randperm(len(shards), generator=g).tolist() if shuffle else range(len(shards))
        for k in order:
            acts = load_file(str(self.path / shards[k]["file"]))["activations"]
            idx = torch.randperm(len(acts), generator=g) if shuffle else torch.arange(len(acts))
            for s in range(0, len(acts) - batch_size + 1, batch_size):
                yield acts[idx[s : s + batch_size]]
