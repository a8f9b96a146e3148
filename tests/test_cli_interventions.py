import json

import pytest
import typer
from typer.testing import CliRunner

from app.cli_interventions import register

app = typer.Typer()
register(app)
runner = CliRunner()


def test_patch_json(model_dir, files, tmp_path):
    task, _, _ = files
    out = tmp_path / "p.json"
    res = runner.invoke(
        app,
        [
            "patch",
            model_dir,
            "--task",
            str(task),
            "--sites",
            "head_out.*",
            "--json",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert len(data["components"]) == 8 and json.loads(out.read_text()) == data
    res = runner.invoke(
        app,
        ["patch", model_dir, "--task", str(task), "--sites", "resid_pre.0", "--positions", "each"],
    )
    assert res.exit_code == 0 and "resid_pre.0@2" in res.stdout


def test_patch_memory_budget_and_fallback_reason(model_dir, files):
    from interventions.budget import human

    base = ["patch", model_dir, "--task", str(files[0]), "--sites", "head_out.*", "-q"]
    res = runner.invoke(app, [*base, "--max-memory", "64MB", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)  # stdout is the JSON alone
    assert data["memory"]["budget"] == 64 * 2**20 and data["rows_per_pass"] >= 2
    assert (
        data["peak_memory"]
        == data["memory"]["held"] + data["rows_per_pass"] * (data["memory"]["per_row"])
    )
    assert data["provenance"]["max_memory"] == 64 * 2**20
    # the prompts differ at their first token: nothing to resume, and the CLI says why
    assert not data["resumed"] and data["resume_reason"] in res.stderr
    assert "every patched pass ran in full" in res.stderr
    text = runner.invoke(app, [*base, "--max-memory", "64MB"])
    assert text.exit_code == 0, text.output
    rows, peak = data["rows_per_pass"], human(data["peak_memory"])
    assert f"{rows} rows per pass, peak memory {peak} (estimated), budget 64.0MB" in text.stdout
    auto = runner.invoke(app, [*base, "--json"])  # default: half the free memory
    assert auto.exit_code == 0 and json.loads(auto.stdout)["memory"]["budget"] > 2**20
    tiny = runner.invoke(app, [*base, "--max-memory", "2KB"])
    assert tiny.exit_code == 2 and "cannot hold one patched component" in tiny.output
    assert "Traceback" not in tiny.output


def test_steer_build_generate_eval(model_dir, files, tmp_path):
    _, pairs, prompts = files
    vec = tmp_path / "v.safetensors"
    res = runner.invoke(
        app,
        [
            "steer",
            "build",
            model_dir,
            "--method",
            "pca",
            "--pairs",
            str(pairs),
            "--site",
            "resid_post.1",
            "--out",
            str(vec),
        ],
    )
    assert res.exit_code == 0, res.output
    assert vec.is_file() and vec.with_suffix(".json").is_file()
    res = runner.invoke(
        app,
        [
            "steer",
            "generate",
            model_dir,
            "--vector",
            str(vec),
            "--coef",
            "4",
            "--prompt",
            "w1 w2",
            "--max-new-tokens",
            "3",
        ],
    )
    assert res.exit_code == 0 and "unsteered:" in res.stdout and "steered (+4)" in res.stdout
    res = runner.invoke(
        app,
        [
            "steer",
            "eval",
            model_dir,
            "--vector",
            str(vec),
            "--prompts",
            str(prompts),
            "--positive-words",
            "w3",
            "--negative-words",
            "w9",
            "--coefs",
            "0,2",
            "--random",
            "2",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    assert len(json.loads(res.stdout)["random"]) == 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["patch", "{m}", "--task", "nope", "--sites", "resid_pre.0"], "neither a JSONL file"),
        (
            ["patch", "{m}", "--task", "{t}", "--sites", "resid_pre.0", "--mode", "x"],
            "choose one of",
        ),
        (
            ["patch", "{m}", "--task", "{t}", "--sites", "resid_pre.0", "--positions", "a"],
            "expected all",
        ),
        (
            ["steer", "generate", "{m}", "--vector", "{v}", "--coef", "nan", "--prompt", "w1"],
            "not a finite",
        ),
        (
            ["steer", "build", "{m}", "--pairs", "{t}", "--site", "resid_post.0", "--out", "{v}"],
            "'positive' and 'negative'",
        ),
        (
            ["patch", "{m}", "--task", "{t}", "--sites", "resid_pre.0", "--positions", "0,9"],
            "out of range",
        ),
        (
            ["steer", "generate", "{w}", "--vector", "{v}", "--coef", "1", "--prompt", "w1"],
            "does not fit",
        ),
        (
            [
                "steer",
                "generate",
                "{m}",
                "--vector",
                "{v}",
                "--coef",
                "1",
                "--prompt",
                "w1",
                "--positions",
                "later",
            ],
            "expected all, each, prompt/generated",
        ),
    ],
)
def test_bad_input(model_dir, files, tmp_path, args, message):
    task, pairs, _ = files
    vec = tmp_path / "v.safetensors"
    runner.invoke(
        app,
        [
            "steer",
            "build",
            model_dir,
            "--pairs",
            str(pairs),
            "--site",
            "resid_post.0",
            "--out",
            str(tmp_path / "ok.safetensors"),
        ],
    )
    (tmp_path / "ok.safetensors").rename(vec) if "generate" in args else None
    if "generate" in args:
        (tmp_path / "ok.json").rename(vec.with_suffix(".json"))
    wide = tmp_path / "wide"
    if "{w}" in args:  # the same vocabulary, another width: a vector from another model
        from tiny import CONFIGS, tiny_hf, tiny_tokenizer

        cfg = CONFIGS["qwen3_next"]()
        cfg.hidden_size = 2 * cfg.hidden_size
        tiny_hf("qwen3_next", config=cfg).save_pretrained(wide)
        tiny_tokenizer().save_pretrained(wide)
    filled = [a.format(m=model_dir, t=task, v=vec, w=wide) for a in args]
    res = runner.invoke(app, filled)
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
