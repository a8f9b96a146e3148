import json

import pytest
from tiny import sentences as _sentences
from typer.testing import CliRunner

from app.cli import app

runner = CliRunner()


def _set(path, texts):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return str(path)


def test_cav_tcav_probe(model_dir, tmp_path):  # noqa: F811
    concept = _set(tmp_path / "c.jsonl", _sentences(1, 16, range(3, 20)))
    randoms = [
        _set(tmp_path / f"r{i}.jsonl", _sentences(10 + i, 16, range(100, 200))) for i in range(10)
    ]
    res = runner.invoke(
        app,
        [
            "concept",
            "cav",
            model_dir,
            "--concept",
            concept,
            "--random",
            randoms[0],
            "--site",
            "resid_post.1",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["cavs"][0]["accuracy"] > 0.5
    res = runner.invoke(
        app,
        [
            "concept",
            "tcav",
            model_dir,
            "--concept",
            concept,
            "--random",
            ",".join(randoms),
            "--site",
            "resid_post.*",
            "--target",
            "w7",
            "--inputs",
            randoms[1],
            "--out",
            str(tmp_path / "tcav.json"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert res.output.count("TCAV") == 2  # one line per layer
    layers = json.loads((tmp_path / "tcav.json").read_text())
    assert layers["layers"] == [0, 1] and all(0 <= r["p_value"] <= 1 for r in layers["results"])
    labels = tmp_path / "labels.jsonl"
    labels.write_text(
        "".join(
            json.dumps({"text": t, "label": i % 2}) + "\n" for i, t in enumerate(_sentences(3, 20))
        )
    )
    res = runner.invoke(
        app,
        [
            "concept",
            "probe",
            model_dir,
            "--labels",
            str(labels),
            "--sites",
            "attn_gate,resid_post",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    assert [r["kind"] for r in json.loads(res.stdout)["results"]] == ["attn_gate", "resid_post"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--site", "resid_post.7"], "out of range"),
        (["--site", "resid_post.0", "--pooling", "max"], "pooling 'max'"),
        (["--site", "resid_post.*"], "not a pattern"),
        (["--site", "attn_gates.0"], "attn_gate"),
    ],
)
def test_bad_input(model_dir, tmp_path, extra, message):  # noqa: F811
    concept = _set(tmp_path / "c.jsonl", _sentences(1))
    random = _set(tmp_path / "r.jsonl", _sentences(2))
    res = runner.invoke(
        app, ["concept", "cav", model_dir, "--concept", concept, "--random", random, *extra]
    )
    assert res.exit_code == 2 and message in res.output, res.output


def test_probe_text_labels_and_one_layer(model_dir, tmp_path):  # noqa: F811
    labels = tmp_path / "labels.jsonl"
    labels.write_text(
        "".join(
            json.dumps({"text": t, "label": ["sport", "food"][i % 2]}) + "\n"
            for i, t in enumerate(_sentences(3, 20))
        )
    )
    res = runner.invoke(
        app,
        ["concept", "probe", model_dir, "--labels", str(labels), "--sites", "resid_post.1",
         "--json"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    (result,) = json.loads(res.stdout)["results"]
    assert result["layers"] == [1] and len(result["accuracy"]) == 1
    assert result["label_names"] == ["food", "sport"]
    both = runner.invoke(
        app, ["concept", "probe", model_dir, "--labels", str(labels), "--sites", "resid_post",
              "--json"],
    )  # fmt: skip
    (every,) = json.loads(both.stdout)["results"]
    assert every["layers"] == [0, 1] and every["accuracy"][1] == result["accuracy"][0]
