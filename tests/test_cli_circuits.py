import json

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
    assert set(json.loads(res.stdout)["pearson"]["mlp_out"]) >= {"atp", "ig"}


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
