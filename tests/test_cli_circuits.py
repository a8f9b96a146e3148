import json
import re

import pytest
import typer
from typer.testing import CliRunner

from app.cli_circuits import register

runner = CliRunner()
app = typer.Typer()
register(app)


def test_attribute_circuit_agreement(model_dir, files, tmp_path):  # noqa: F811
    task = str(files[0])
    res = runner.invoke(
        app,
        [
            "attribute",
            model_dir,
            "--task",
            task,
            "--method",
            "relp",
            "--sites",
            "head_out.*",
            "--json",
            "--out",
            str(tmp_path / "a.json"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert len(json.loads(res.stdout)["components"]) == 8
    relp = ["circuit", model_dir, "--task", task, "--method", "relp", "--top-n", "3"]
    res = runner.invoke(app, [*relp, "--curve"])
    assert res.exit_code == 0, res.output
    grad = runner.invoke(app, [*relp, "--glu-rule", "gradient"])
    assert grad.exit_code == 0, grad.output
    assert grad.stdout.splitlines()[1:] != res.stdout.splitlines()[1:4]  # other node scores
    assert "faithfulness" in res.stdout and "smallest circuit reaching 0.8: " in res.stdout
    res = runner.invoke(
        app, ["agreement", model_dir, "--task", task, "--sites", "mlp_out", "--json"]
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert set(data["pearson"]["mlp_out"]) >= {"atp", "ig", "ig(steps=2)", "atp*(grad_drop=True)"}
    assert set(data["best_fast"]) == {"mlp_out"}


def test_path_patch_and_the_circuit_note(model_dir, files, tmp_path):  # noqa: F811
    task = str(files[0])
    out = tmp_path / "p.json"
    base = ["path-patch", model_dir, "--task", task, "--senders", "resid_pre.0,head_out.0.1"]
    res = runner.invoke(app, [*base, "--receivers", "head_out.1.2.q,logits", "--json"])
    assert res.exit_code == 0, res.output
    effects = json.loads(res.stdout)["effects"]
    assert set(effects) == {"resid_pre.0", "head_out.0.1"}
    assert set(effects["head_out.0.1"]) == {"head_out.1.2.q", "logits"}
    res = runner.invoke(app, [*base, "--top", "3", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "head_out.0.1" in res.stdout and len(json.loads(out.read_text())["effects"]) == 2
    bad = runner.invoke(app, [*base[:4], "--senders", "head.0.1"])
    assert bad.exit_code == 2 and "sender 'head.0.1'" in bad.output
    # a circuit of one node that is not the embedding: faithfulness 0, and the reason printed
    res = runner.invoke(
        app, ["circuit", model_dir, "--task", task, "--method", "atp", "--top-n", "1"]
    )
    assert res.exit_code == 0, res.output
    has_embed = any(line.strip().startswith("resid_pre.0 ") for line in res.stdout.splitlines())
    assert ("note: the circuit leaves out the embedding" in res.stdout) != has_embed
    if not has_embed:
        assert re.search(r"faithfulness -?0\.000", res.stdout)


@pytest.mark.slow
def test_circuit_on_the_bundled_hybrid():
    # Gated-DeltaNet mixers and MoE MLPs as whole-block nodes, heads on the attention layers
    from conftest import reference_available

    if not reference_available("reference-hybrid"):
        pytest.skip("reference-hybrid is not bundled")
    res = runner.invoke(
        app,
        ["circuit", "reference-hybrid", "--task", "ioi", "--limit", "4", "--top-n", "4",
         "--method", "eap", "--json"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    names = {n["name"] for n in json.loads(res.stdout)["nodes"]}
    assert "logits" in names and len(names) == 5


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["attribute", "{m}", "--task", "{t}", "--method", "x", "--sites", "mlp_out.0"],
            "valid methods",
        ),
        (
            [
                "attribute",
                "{m}",
                "--task",
                "{t}",
                "--method",
                "ig",
                "--steps",
                "0",
                "--sites",
                "mlp_out.0",
            ],
            "at least 1",
        ),
        (["circuit", "{m}", "--task", "{t}", "--top-n", "99"], "outside 0-"),
        (
            [
                "circuit",
                "{m}",
                "--task",
                "{t}",
                "--method",
                "relp",
                "--top-n",
                "2",
                "--glu-rule",
                "full",
            ],
            "GLU rule 'full' is unknown; valid rules: half, gradient",
        ),
        (["agreement", "{m}", "--task", "{t}", "--sites", "mlp_outt"], "unknown site kinds"),
        (
            ["circuit", "{m}", "--task", "{t}", "--method", "atp", "--top-n", "2", "--steps", "3"],
            "'atp' has no field(s) steps",
        ),
    ],
)
def test_bad_input(model_dir, files, args, message):  # noqa: F811
    res = runner.invoke(app, [a.format(m=model_dir, t=files[0]) for a in args])
    assert res.exit_code == 2 and message in res.output, res.output
