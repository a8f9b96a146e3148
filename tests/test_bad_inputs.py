"""Every ordinary user mistake ends the same way: exit 2, a message naming the input, no
traceback and no file written (``--debug`` shows the traceback)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from app.cli import app

runner = CliRunner()
ROWS = [
    {"clean": "w1 w2 w3", "corrupt": "w4 w2 w3", "answer": "w5", "wrong": "w6"},
    {"clean": "w7 w8 w9", "corrupt": "w10 w8 w9", "answer": "w11", "wrong": "w12"},
]
LATIN1 = "caf\xe9 w1 w2\n".encode("latin-1")


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def env(tmp_path_factory, model_dir):
    """Files for every case: a good model and task, and each broken variant."""
    root = tmp_path_factory.mktemp("bad")
    model = Path(shutil.copytree(model_dir, root / "tiny"))
    weights = model / "model.safetensors"
    for name, damage in {
        "truncated": lambda b: b[: len(b) // 2],
        "random": lambda b: bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).tolist()),
    }.items():
        shutil.copytree(model, root / name)
        (root / name / "model.safetensors").write_bytes(damage(weights.read_bytes()))
    shutil.copytree(model, root / "noweights")
    (root / "noweights" / "model.safetensors").unlink()
    _jsonl(root / "task.jsonl", ROWS)
    _jsonl(root / "same.jsonl", [ROWS[0], {**ROWS[1], "corrupt": ROWS[1]["clean"]}])
    pairs = [{"positive": f"w{i} w3", "negative": f"w{i} w9"} for i in range(20, 25)]
    _jsonl(root / "pairs.jsonl", pairs)
    (root / "badpairs.jsonl").write_text(json.dumps(pairs[0]) + "\n{positive: w1\n")
    for name in ("prompts.txt", "task_l1.jsonl", "concept_l1.jsonl", "pairs_l1.jsonl"):
        (root / name).write_bytes(LATIN1)
    (root / "text_l1.txt").write_bytes(LATIN1)
    (root / "labels_l1.jsonl").write_bytes(b'{"text": "caf\xe9", "label": 1}\n')
    _jsonl(
        root / "mixed.jsonl", [{"text": f"w{i} w2", "label": [1, "a"][i % 2]} for i in range(12)]
    )
    _jsonl(root / "concept.jsonl", [{"text": f"w{i} w2 w3"} for i in range(3, 15)])
    (root / "good.txt").write_text("w1 w2\nw3 w4 w5\n")
    res = runner.invoke(
        app,
        ["steer", "build", str(model), "--pairs", str(root / "pairs.jsonl"), "--site",
         "resid_post.0", "--out", str(root / "vec.safetensors")],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    shutil.copy(root / "vec.json", root / "cut.json")
    data = (root / "vec.safetensors").read_bytes()
    (root / "cut.safetensors").write_bytes(data[: len(data) - 40])
    (root / "exists.json").write_text("keep me")
    (root / "adir").mkdir()
    (root / "used").mkdir()
    (root / "used" / "checkpoint.json").write_text("{}")
    return root


M = "{root}/tiny"
GEN = ["steer", "generate", M, "--vector", "{root}/vec.safetensors", "--prompt", "w1 w2"]
PATCH = ["patch", M, "--task", "{root}/task.jsonl", "--sites", "resid_pre.0"]
CAV = ["concept", "cav", M, "--random", "{root}/concept.jsonl", "--site", "resid_post.0"]
PROBE = ["concept", "probe", M, "--sites", "resid_post"]
GATES = ["gates", M, "--prompt", "w1 w2"]
HARVEST = ["sae", "harvest", M, "--site", "resid_post.0", "--out", "{out}/store"]

#: (case, arguments, text the message must contain)
CASES = [
    ("truncated weights", ["gates", "{root}/truncated", "--prompt", "w1"], "model.safetensors"),
    ("random-bytes weights", ["gates", "{root}/random", "--prompt", "w1"], "model.safetensors"),
    ("model dir without weights", ["gates", "{root}/noweights", "--prompt", "w1"], "no weights"),
    ("model name typo", ["gates", "referense", "--prompt", "w1"], "did you mean reference"),
    ("non-UTF-8 prompts", ["gates", M, "--prompts", "{root}/prompts.txt"], "prompts.txt line 1"),
    ("non-UTF-8 task", ["patch", M, "--task", "{root}/task_l1.jsonl", "--sites", "resid_pre.0"],
     "task_l1.jsonl line 1: not UTF-8"),
    ("non-UTF-8 concept", ["concept", "cav", M, "--concept", "{root}/concept_l1.jsonl",
                           "--site", "resid_post.0"], "concept_l1.jsonl line 1: not UTF-8"),
    ("non-UTF-8 pairs", ["steer", "build", M, "--pairs", "{root}/pairs_l1.jsonl", "--site",
                         "resid_post.0", "--out", "{out}/v.safetensors"], "pairs_l1.jsonl line 1"),
    ("non-UTF-8 labels", [*PROBE, "--labels", "{root}/labels_l1.jsonl"], "labels_l1.jsonl line 1"),
    ("non-UTF-8 steer eval prompts", ["steer", "eval", M, "--vector", "{root}/vec.safetensors",
                                      "--prompts", "{root}/prompts.txt"], "prompts.txt line 1"),
    ("non-UTF-8 --text", ["sae", "harvest", M, "--site", "resid_post.0", "--tokens", "64",
                          "--out", "{out}/store", "--text", "{root}/text_l1.txt"],
     "text_l1.txt line 1: not UTF-8"),
    ("--out a directory", [*GATES, "--out", "{root}/adir"], "is a directory"),
    ("--out in a missing directory", [*GATES, "--out", "{out}/no/r.json"], "does not exist"),
    ("--out exists, no --force", [*GATES, "--out", "{root}/exists.json"], "pass --force"),
    ("patch --out exists", [*PATCH, "--out", "{root}/exists.json"], "pass --force"),
    ("trace --out exists", ["trace", M, "--prompt", "w1", "--sites", "resid_post.0", "--out",
                            "{root}/vec.safetensors"], "pass --force"),
    ("truncated steering vector", ["steer", "generate", M, "--vector", "{root}/cut.safetensors",
                                   "--coef", "1", "--prompt", "w1"], "cut.safetensors"),
    ("--max-new-tokens 0", [*GEN, "--coef", "1", "--max-new-tokens", "0"], "--max-new-tokens 0"),
    ("--max-new-tokens -3", [*GEN, "--coef", "1", "--max-new-tokens", "-3"], "--max-new-tokens"),
    ("NaN coefficient", [*GEN, "--coef", "nan"], "--coef nan"),
    ("NaN in --coefs", ["steer", "eval", M, "--vector", "{root}/vec.safetensors", "--prompts",
                        "{root}/good.txt", "--coefs", "0,nan"], "--coefs nan"),
    ("mixed labels", [*PROBE, "--labels", "{root}/mixed.jsonl"], "mixed.jsonl"),
    ("probe --sites resid_post.x", ["concept", "probe", M, "--sites", "resid_post.x", "--labels",
                                    "{root}/mixed.jsonl"], "--sites resid_post.x"),
    ("malformed pairs line", ["steer", "build", M, "--pairs", "{root}/badpairs.jsonl", "--site",
                              "resid_post.0", "--out", "{out}/v.safetensors"],
     "badpairs.jsonl line 2"),
    ("--batch-size 0", [*GATES, "--batch-size", "0"], "--batch-size 0"),
    ("trace --batch-size 0", ["trace", M, "--prompt", "w1", "--sites", "resid_post.0",
                              "--batch-size", "0", "--out", "{out}/a.safetensors"],
     "--batch-size 0"),
    ("--device cuda without CUDA", [*GATES, "--device", "cuda"], "--device cuda"),
    ("--device nonsense", [*GATES, "--device", "tpu9"], "--device tpu9"),
    ("--dtype float8", [*GATES, "--dtype", "float8"], "--dtype float8"),
    ("--backend unknown", [*GATES, "--backend", "jax"], "--backend jax"),
    ("--device-map on nnsight", [*GATES, "--device-map", "auto", "--backend", "nnsight"],
     "--device-map"),
    ("reference bundle --name ../x", ["reference", "bundle", "{root}", "--name", "../x"],
     "--name '../x'"),
    ("patch --limit 0", [*PATCH, "--limit", "0"], "--limit 0"),
    ("patch --limit -1", [*PATCH, "--limit", "-1"], "--limit -1"),
    ("attribute --limit 0", ["attribute", M, "--task", "{root}/task.jsonl", "--sites",
                             "resid_pre.0", "--limit", "0"], "--limit 0"),
    ("clean == corrupt", ["patch", M, "--task", "{root}/same.jsonl", "--sites", "resid_pre.0"],
     "row 1: the clean and corrupt prompts are the same"),
    ("missing task file", ["patch", M, "--task", "{root}/nope.jsonl", "--sites", "resid_pre.0"],
     "nope.jsonl: no such file"),
    ("task is a directory", ["patch", M, "--task", "{root}/adir", "--sites", "resid_pre.0"],
     "adir: is a directory"),
    ("concept set missing", [*CAV, "--concept", "{root}/gone.jsonl"], "gone.jsonl"),
    ("sae harvest --tokens 0", [*HARVEST, "--tokens", "0"], "--tokens 0"),
    ("sae harvest --shard-tokens 0", [*HARVEST, "--tokens", "64", "--shard-tokens", "0"],
     "--shard-tokens 0"),
    ("sae harvest --batch-size 0", [*HARVEST, "--tokens", "64", "--batch-size", "0"],
     "--batch-size 0"),
    ("sae harvest --out a file", ["sae", "harvest", M, "--site", "resid_post.0", "--tokens", "64",
                                  "--out", "{root}/exists.json"], "is a file"),
    ("sae train --out a used directory", ["sae", "train", M, "--site", "resid_post.0", "--out",
                                          "{root}/used"], "pass --resume"),
    ("non-UTF-8 attribute --task", ["attribute", M, "--task", "{root}/task_l1.jsonl", "--sites",
                                    "resid_pre.0"], "task_l1.jsonl line 1: not UTF-8"),
    ("patch --max-memory lots", [*PATCH, "--max-memory", "lots"], "--max-memory 'lots'"),
    ("patch --max-memory 0", [*PATCH, "--max-memory", "0"], "--max-memory '0'"),
    ("reference train --checkpoint-seconds -1", ["reference", "train", "--out", "{out}/r",
                                                 "--checkpoint-seconds", "-1"],
     "--checkpoint-seconds -1"),
]  # fmt: skip

#: Cases refused before any model loads (load_model raising would show otherwise).
EARLY = ("sae harvest", "sae train", "patch --max", "non-UTF-8 attribute", "non-UTF-8 --text")
BEFORE_LOAD = [c for c in CASES if c[0].startswith(EARLY)]


@pytest.mark.parametrize("args, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(env, tmp_path, args, message):
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "out"
    out.mkdir()
    before = {p: p.stat().st_mtime_ns for p in env.rglob("*")}
    res = runner.invoke(app, [a.format(root=env, out=out) for a in args])
    assert res.exit_code == 2, res.output
    assert message in res.output, res.output
    assert "Traceback" not in res.output
    assert not any(out.iterdir()), "a file was written"
    assert {p: p.stat().st_mtime_ns for p in env.rglob("*")} == before
    assert (env / "exists.json").read_text() == "keep me"
    assert "unsteered" not in res.stdout  # refused before any output


@pytest.mark.parametrize("args, message", [c[1:] for c in BEFORE_LOAD],
                         ids=[c[0] for c in BEFORE_LOAD])  # fmt: skip
def test_refused_before_the_model_loads(env, tmp_path, monkeypatch, args, message):
    import probe.load

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(probe.load, "load_model", no_loading)
    res = runner.invoke(app, [a.format(root=env, out=tmp_path) for a in args])
    assert res.exit_code == 2 and message in res.output, res.output


def test_debug_shows_the_traceback(env):
    res = runner.invoke(app, ["gates", str(env / "truncated"), "--prompt", "w1", "--debug"])
    assert res.exit_code == 2 and "Traceback" in res.output and "model.safetensors" in res.output


def test_typo_is_refused_at_once(env):
    import time

    start = time.perf_counter()
    res = runner.invoke(app, ["patch", "reference-plian", "--task", "ioi", "--sites", "x.0"])
    assert res.exit_code == 2 and "did you mean reference-plain" in res.output
    assert time.perf_counter() - start < 2


def test_force_overwrites_and_keeps_the_umask(env, tmp_path):
    import os

    target = tmp_path / "g.json"
    target.write_text("old")
    res = runner.invoke(app, [*[a.format(root=env) for a in GATES], "--out", str(target)])
    assert res.exit_code == 2 and target.read_text() == "old"
    old = os.umask(0o022)
    try:
        res = runner.invoke(
            app, [*[a.format(root=env) for a in GATES], "--out", str(target), "--force", "-q"]
        )
    finally:
        os.umask(old)
    assert res.exit_code == 0, res.output
    assert json.loads(target.read_text())["provenance"]["command"].endswith("gates")
    assert target.stat().st_mode & 0o777 == 0o644
