import json

import pytest
import torch
from tiny import prompts

from probe import GatescopeError, Tracer
from probe.store import ActivationStore, check_harvest_options, harvest


@pytest.fixture(scope="module")
def model(tiny_model):
    return tiny_model("qwen3_next", name="tiny")


TEXTS = prompts(40, length=10, seed=7)


def test_round_trip(model, tmp_path):
    out = harvest(
        model,
        "attn_gate.1",
        TEXTS,
        120,
        tmp_path / "s",
        shard_tokens=50,
        batch_size=4,
        progress=False,
    )
    store = ActivationStore(out)
    assert store.tokens == 120 and store.width == model.dims.n_heads * model.dims.d_head
    sizes = [s["tokens"] for s in store.manifest["shards"]]
    assert sum(sizes) == 120 and len(sizes) == 3 and all(n >= 50 for n in sizes[:-1])
    rows = torch.cat(list(store.batches(10, shuffle=False)))
    with Tracer(model, "attn_gate.1") as tr:
        model.run(TEXTS[:4])
    batch = model.tokenize(TEXTS[:4])
    first = tr["attn_gate.1"][batch.attention_mask.bool()].flatten(1)
    assert torch.equal(rows[: len(first)], first)
    every = torch.cat(list(store.batches(1, shuffle=False)))
    shuffled = torch.cat(list(store.batches(1, seed=1)))
    assert shuffled.shape == every.shape == (120, store.width)
    assert not torch.equal(shuffled, every)
    key = lambda t: t[t[:, 0].argsort()]  # noqa: E731
    assert torch.equal(key(shuffled), key(every))


def test_resume_after_a_crash(model, tmp_path, monkeypatch):
    import probe.store as store_mod

    calls = {"n": 0}
    real = store_mod._write_shard

    def crash_on_third(folder, index, acts):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated crash")
        return real(folder, index, acts)

    monkeypatch.setattr(store_mod, "_write_shard", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        harvest(
            model,
            "resid_post.0",
            TEXTS,
            150,
            tmp_path / "s",
            shard_tokens=40,
            batch_size=4,
            progress=False,
        )
    partial = ActivationStore(tmp_path / "s")  # complete shards, valid manifest
    shards = partial.manifest["shards"]
    assert len(shards) == 2 and partial.tokens == sum(s["tokens"] for s in shards) < 150
    monkeypatch.setattr(store_mod, "_write_shard", real)
    harvest(
        model,
        "resid_post.0",
        TEXTS,
        150,
        tmp_path / "s",
        shard_tokens=40,
        batch_size=4,
        progress=False,
    )
    whole = harvest(
        model,
        "resid_post.0",
        TEXTS,
        150,
        tmp_path / "ref",
        shard_tokens=40,
        batch_size=4,
        progress=False,
    )
    a = torch.cat(list(ActivationStore(tmp_path / "s").batches(10, shuffle=False)))
    b = torch.cat(list(ActivationStore(whole).batches(10, shuffle=False)))
    assert torch.equal(a, b)


def test_bad_stores(model, tmp_path):
    out = harvest(
        model, "mlp_out.0", TEXTS, 30, tmp_path / "s", shard_tokens=20, batch_size=4, progress=False
    )
    with pytest.raises(GatescopeError, match="not mlp_out.1"):
        ActivationStore(out).check(model, "mlp_out.1")
    with pytest.raises(GatescopeError, match="holds mlp_out.0"):
        harvest(model, "mlp_out.1", TEXTS, 30, out, progress=False)
    shard = out / "shard_00000.safetensors"
    shard.write_bytes(shard.read_bytes()[:40])
    with pytest.raises(GatescopeError, match="truncated"):
        ActivationStore(out)
    (tmp_path / "empty").mkdir()
    with pytest.raises(GatescopeError, match="no manifest.json"):
        ActivationStore(tmp_path / "empty")
    with pytest.raises(GatescopeError, match="ran out"):
        harvest(model, "mlp_out.0", TEXTS[:2], 1000, tmp_path / "short", progress=False)
    assert json.loads((tmp_path / "short" / "manifest.json").read_text())["tokens"] > 0


def test_resuming_with_other_texts_is_refused_unless_forced(model, tmp_path):
    out = tmp_path / "s"
    harvest(model, "resid_post.0", TEXTS, 60, out, shard_tokens=30, batch_size=4, progress=False)
    recorded = ActivationStore(out).manifest["texts_sha256"]
    other = prompts(40, length=10, seed=8)
    with pytest.raises(GatescopeError, match="harvested from other texts"):
        harvest(model, "resid_post.0", other, 120, out, shard_tokens=30, progress=False)
    assert ActivationStore(out).tokens == 60  # nothing appended
    harvest(model, "resid_post.0", other, 120, out, shard_tokens=30, progress=False, force=True)
    manifest = ActivationStore(out).manifest
    assert manifest["tokens"] == 120 and manifest["texts_sha256_before"] == [recorded]
    assert manifest["texts_sha256"] != recorded


def _rate_of(run: dict, tokens: int) -> bool:
    """The recorded rate is ``tokens`` over the run's time (recorded rounded to 1 ms)."""
    lo, hi = run["seconds"] - 0.0005, run["seconds"] + 0.0005
    return tokens / hi * 0.95 <= run["tokens_per_second"] <= tokens / max(lo, 1e-9) * 1.05


def test_a_complete_store_says_so_and_rates_count_this_run_only(model, tmp_path):
    out = tmp_path / "s"
    harvest(model, "resid_post.0", TEXTS, 40, out, shard_tokens=40, batch_size=4, progress=False)
    first = ActivationStore(out).manifest["last_run"]
    assert first["tokens"] == 40 and not first["already_complete"]
    assert _rate_of(first, 40)
    harvest(model, "resid_post.0", TEXTS, 40, out, shard_tokens=40, batch_size=4, progress=False)
    again = ActivationStore(out).manifest["last_run"]
    assert again["tokens"] == 0 and again["already_complete"]
    assert again["tokens_per_second"] is None  # no rate of 0 tokens over a run's overhead
    harvest(model, "resid_post.0", TEXTS, 70, out, shard_tokens=40, batch_size=4, progress=False)
    more = ActivationStore(out).manifest["last_run"]
    assert more["tokens"] == 30  # only what this run added
    assert _rate_of(more, 30)


@pytest.mark.parametrize(
    "tokens, shard_tokens, batch_size, option",
    [(0, 10, 4, "--tokens 0"), (10, 0, 4, "--shard-tokens 0"), (10, 10, 0, "--batch-size 0")],
)
def test_counts_are_checked_first(tokens, shard_tokens, batch_size, option):
    with pytest.raises(GatescopeError, match=option):
        check_harvest_options(tokens, shard_tokens, batch_size)


def test_shards_and_manifest_get_the_users_umask(model, tmp_path):
    import os

    old = os.umask(0o022)
    try:
        out = harvest(model, "resid_post.0", TEXTS, 20, tmp_path / "s", progress=False)
    finally:
        os.umask(old)
    for name in ("shard_00000.safetensors", "manifest.json"):
        assert (out / name).stat().st_mode & 0o777 == 0o644, name
