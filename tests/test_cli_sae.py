"""``gatescope sae train|eval|features`` end to end on a saved tiny model."""

import json

import pytest
from tiny import prompts, save_tiny
from typer.testing import CliRunner

from app.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_sae")
    model = str(save_tiny(root / "tiny", "qwen3_next"))
    text = root / "docs.txt"
    text.write_text("\n".join(prompts(60, length=6, seed=2)) + "\n")
    out = root / "sae"
    res = runner.invoke(
        app,
        ["sae", "train", model, "--site", "resid_post.1", "--out", str(out), "--text", str(text),
         "--width", "32", "--k", "4", "--tokens", "1024", "--batch-size", "128", "--quiet"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    return model, text, out, res.output


def test_train_reports_what_it_chose(trained):
    _, _, out, output = trained
    assert "32 latents, k=4, 1024 tokens" in output and "training explained variance" in output
    meta = json.loads((out / "gatescope.json").read_text())
    assert meta["spec"]["vsae_reading"] == "code" and meta["model_fingerprint"]


def test_eval_text_modes_and_saebench_names(trained):
    model, text, out, _ = trained
    runs = {}
    for mode in ("lines", "packed"):
        res = runner.invoke(
            app, ["sae", "eval", str(out), "--text", str(text), "--text-mode", mode, "--json"]
        )
        assert res.exit_code == 0, res.output
        runs[mode] = json.loads(res.stdout[res.stdout.index("{") :])
    assert runs["lines"]["text_mode"] == "lines" and runs["packed"]["text_mode"] == "packed"
    # same tokens; one document per line predicts no token from an earlier line, packed does
    assert runs["lines"]["tokens"] == runs["packed"]["tokens"]
    assert runs["lines"]["ce_orig"] != runs["packed"]["ce_orig"]
    sb = runs["lines"]["saebench"]
    for group, key in [
        ("model_performance_preservation", "ce_loss_score"),
        ("model_behavior_preservation", "kl_div_score"),
        ("reconstruction_quality", "explained_variance"),
        ("sparsity", "l0"),
        ("misc_metrics", "frac_alive"),
    ]:
        assert key in sb[group]
    bad = runner.invoke(app, ["sae", "eval", str(out), "--text-mode", "words"])
    assert bad.exit_code == 2 and "--text-mode words" in bad.output


def test_features_latent_page(trained):
    _, text, out, _ = trained
    res = runner.invoke(app, ["sae", "features", str(out), "--latent", "3", "--text", str(text)])
    assert res.exit_code == 0, res.output
    page = json.loads(res.stdout[res.stdout.index("{") :])
    assert page["latent"] == 3 and {"histogram", "top_logits", "quantile_contexts"} <= set(page)
    res = runner.invoke(app, ["sae", "features", str(out), "--latent", "32"])
    assert res.exit_code == 2 and "--latent 32" in res.output


def test_bad_train_inputs(trained, tmp_path):
    model, text, _, _ = trained
    base = ["sae", "train", model, "--site", "resid_post.1", "--text", str(text)]
    for extra, msg in [
        (["--width", "8", "--k", "8"], "smaller than --width"),
        (["--vsae-reading", "guess"], "--vsae-reading guess"),
        (["--lr", "0"], "--lr 0"),
    ]:
        res = runner.invoke(app, [*base, "--out", str(tmp_path / "x"), *extra])
        assert res.exit_code == 2 and msg in res.output, res.output
        assert not (tmp_path / "x").exists()


def test_text_mode_lines_gives_one_window_per_line(trained, tmp_path):
    """train and harvest honour --text-mode: lines makes one forward pass per line, packed
    joins short lines into context-sized windows."""
    from probe import load_model
    from probe.store import ActivationStore

    model, text, _, _ = trained
    lines = text.read_text().splitlines()
    windows = {}
    for mode in ("lines", "packed"):
        out = tmp_path / f"sae-{mode}"
        res = runner.invoke(
            app,
            ["sae", "train", model, "--site", "resid_post.1", "--out", str(out), "--text",
             str(text), "--text-mode", mode, "--width", "32", "--k", "4", "--tokens", "256",
             "--batch-size", "128", "--quiet"],
        )  # fmt: skip
        assert res.exit_code == 0, res.output
        meta = json.loads((out / "gatescope.json").read_text())
        assert meta["text_mode"] == mode
        windows[mode] = meta["windows"]
    assert windows["lines"] == len(lines) and windows["packed"] < len(lines)
    tok = load_model(model).tokenizer
    total = sum(len(tok(line)["input_ids"]) for line in lines)
    store = tmp_path / "store"
    res = runner.invoke(
        app,
        ["sae", "harvest", model, "--site", "resid_post.1", "--tokens", str(total), "--out",
         str(store), "--text", str(text), "--text-mode", "lines"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    manifest = ActivationStore(store).manifest
    assert manifest["tokens"] == total and manifest["texts_done"] == len(lines)


def test_transcoder_train_and_eval(trained, tmp_path):
    model, text, _, _ = trained
    out = tmp_path / "tc"
    base = ["sae", "train", model, "--arch", "transcoder", "--site", "resid_mid.1", "--text",
            str(text), "--width", "32", "--k", "4", "--tokens", "512", "--batch-size", "128",
            "--quiet"]  # fmt: skip
    res = runner.invoke(app, [*base, "--out-site", "mlp_out.1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "transcoder resid_mid.1 -> mlp_out.1" in res.output
    res = runner.invoke(app, ["sae", "eval", str(out), "--text", str(text), "--json"])
    assert res.exit_code == 0, res.output
    ev = json.loads(res.stdout[res.stdout.index("{") :])
    assert ev["out_site"] == "mlp_out.1" and ev["architecture"] == "topk_transcoder"
    gate = tmp_path / "gate"  # the gate branch: resid_mid.1 -> act(gate_proj) of layer 1
    res = runner.invoke(app, [*base, "--out-site", "mlp_gate.1", "--out", str(gate)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["sae", "eval", str(gate), "--text", str(text), "--json"])
    assert res.exit_code == 0, res.output
    ev = json.loads(res.stdout[res.stdout.index("{") :])
    assert ev["out_site"] == "mlp_gate.1" and ev["ce_sae"] != ev["ce_orig"]
    page = runner.invoke(app, ["sae", "features", str(out), "--latent", "2", "--text", str(text)])
    assert page.exit_code == 0, page.output
    assert json.loads(page.stdout[page.stdout.index("{") :])["top_logits"]  # mlp_out: residual
    for bad, msg in [("mlp_out.0", "on layer 0"), ("resid_pre.1", "does not follow")]:
        res = runner.invoke(app, [*base, "--out-site", bad, "--out", str(tmp_path / "x")])
        assert res.exit_code == 2 and msg in res.output, res.output
        assert not (tmp_path / "x").exists()
