"""Every command that computes numbers records its provenance: the gatescope version, the
model and its weight fingerprint, the sites, the metric and its formula, the number of
prompts, the device and the dtype (``app.cli_common.output.provenance``)."""

import json

import pytest
from conftest import needs_reference
from tiny import sentences
from typer.testing import CliRunner

from app.cli import app
from app.cli_common.output import METRICS

runner = CliRunner()
KEYS = ("gatescope", "command", "sites", "metric", "formula", "n_prompts", "device", "dtype")


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, model_dir, make_task):
    root = tmp_path_factory.mktemp("prov")
    make_task("toy", path=root / "task.jsonl")
    pairs = [{"positive": f"w{i} w3", "negative": f"w{i} w9"} for i in range(20, 25)]
    _jsonl(root / "pairs.jsonl", pairs)
    (root / "prompts.txt").write_text("w1 w2 w3\nw4 w5 w6\n")
    _jsonl(root / "concept.jsonl", [{"text": t} for t in sentences(1, 12, range(3, 20))])
    _jsonl(root / "inputs.jsonl", [{"text": t} for t in sentences(5, 6, range(3, 200))])
    for i in range(10):  # TCAV needs 10 random sets
        rows = [{"text": t} for t in sentences(10 + i, 12, range(100, 200))]
        _jsonl(root / f"random{i}.jsonl", rows)
    _jsonl(root / "labels.jsonl", [{"text": f"w{i} w2 w3", "label": i % 2} for i in range(12)])
    build = ["steer", "build", model_dir, "--pairs", str(root / "pairs.jsonl")]
    res = runner.invoke(app, [*build, "--site", "resid_post.0", "--out", str(root / "vec"), "-q"])
    assert res.exit_code == 0, res.output
    return root


M, T = "{m}", "{r}/task.jsonl"
CASES = {
    "gates": ["gates", M, "--prompt", "w1 w2 w3"],
    "trace": ["trace", M, "--prompt", "w1 w2", "--sites", "resid_post.0", "--out",
              "{out}/t.safetensors"],
    "patch": ["patch", M, "--task", T, "--sites", "resid_pre.0"],
    "attribute": ["attribute", M, "--task", T, "--sites", "resid_pre.0", "--method", "atp"],
    "circuit": ["circuit", M, "--task", T, "--method", "atp", "--top-n", "2"],
    "agreement": ["agreement", M, "--task", T, "--sites", "mlp_out"],
    "path-patch": ["path-patch", M, "--task", T, "--senders", "resid_pre.0,head_out.0.1"],
    "steer build": ["steer", "build", M, "--pairs", "{r}/pairs.jsonl", "--site", "resid_post.0",
                    "--out", "{out}/v"],
    "steer generate": ["steer", "generate", M, "--vector", "{r}/vec.safetensors", "--coef", "1",
                       "--prompt", "w1 w2", "--max-new-tokens", "2"],
    "steer eval": ["steer", "eval", M, "--vector", "{r}/vec.safetensors", "--prompts",
                   "{r}/prompts.txt", "--positive-words", "w3", "--negative-words", "w9",
                   "--coefs", "0,1", "--random", "2"],
    "concept cav": ["concept", "cav", M, "--concept", "{r}/concept.jsonl", "--random",
                    "{r}/random0.jsonl", "--site", "resid_post.1"],
    "concept tcav": ["concept", "tcav", M, "--concept", "{r}/concept.jsonl", "--random",
                     ",".join(f"{{r}}/random{i}.jsonl" for i in range(10)), "--site",
                     "resid_post.1", "--target", "w7", "--inputs", "{r}/inputs.jsonl"],
    "concept probe": ["concept", "probe", M, "--sites", "resid_post", "--labels",
                      "{r}/labels.jsonl"],
}  # fmt: skip


@pytest.mark.parametrize("command", list(CASES))
def test_every_command_records_its_provenance(command, inputs, model_dir, tmp_path):
    args = [a.format(m=model_dir, r=inputs, out=tmp_path) for a in CASES[command]]
    res = runner.invoke(app, [*args, "--json", "-q"])
    assert res.exit_code == 0, res.output
    prov = json.loads(res.stdout)["provenance"]
    missing = [k for k in KEYS if prov.get(k) in (None, "")]
    assert not missing, f"{command}: no {missing} in {prov}"
    assert prov["command"] == f"gatescope {command}"
    assert (prov["metric"], prov["formula"]) == METRICS[command]
    assert prov["model"]["fingerprint"].startswith("sha256:")
    assert isinstance(prov["n_prompts"], int) and prov["n_prompts"] >= 1


#: Commands that write files or train rather than compute a result with a metric.
NO_METRIC = {"app", "reference train", "reference tasks", "reference bundle", "sae harvest",
             "sae load", "sae train"}  # fmt: skip


def test_every_computing_command_has_a_metric():
    import typer

    names = []

    def walk(cmd, path):
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, [*path, name]) if hasattr(sub, "commands") else names.append(
                " ".join([*path, name])
            )

    walk(typer.main.get_command(app), [])
    missing = sorted(set(names) - NO_METRIC - set(METRICS))
    assert not missing, f"commands without a metric in METRICS: {missing}"
    assert set(CASES) | {"reference eval", "sae eval", "sae features"} == set(names) - NO_METRIC


@pytest.mark.slow
@needs_reference
def test_reference_eval_records_its_provenance():
    res = runner.invoke(app, ["reference", "eval", "reference", "--limit", "8", "--json", "-q"])
    assert res.exit_code == 0, res.output
    prov = json.loads(res.stdout)["provenance"]
    assert prov["command"] == "gatescope reference eval"
    assert (prov["metric"], prov["formula"]) == METRICS["reference eval"]
    assert prov["model"]["fingerprint"].startswith("sha256:") and prov["device"] and prov["dtype"]
