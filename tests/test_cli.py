"""The foundation CLI end to end on a saved tiny model, and every bad input."""

import json

import pytest
from safetensors.torch import load_file
from tiny import save_tiny
from typer.testing import CliRunner

from app.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return str(save_tiny(tmp_path_factory.mktemp("m") / "tiny", "qwen3_next"))


@pytest.fixture(scope="module")
def plain_dir(tmp_path_factory):
    return str(save_tiny(tmp_path_factory.mktemp("p") / "tiny", "llama"))


def test_trace_writes_safetensors(model_dir, tmp_path):
    out = tmp_path / "acts.safetensors"
    res = runner.invoke(
        app,
        [
            "trace",
            model_dir,
            "--prompt",
            "w1 w2 w3",
            "--sites",
            "attn_gate.*,resid_post.1",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    tensors = load_file(out)
    assert set(tensors) == {"attn_gate.0", "attn_gate.1", "resid_post.1"}
    assert tensors["attn_gate.0"].shape == (1, 3, 4, 16)


def test_trace_prompt_file_with_positions(model_dir, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("w1 w2 w3\nw4 w5\n")
    out = tmp_path / "last.safetensors"
    res = runner.invoke(
        app,
        [
            "trace",
            model_dir,
            "--prompts",
            str(prompts),
            "--sites",
            "mlp_gate.0",
            "--positions",
            "-1",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    assert load_file(out)["mlp_gate.0"].shape == (2, 1, 128)


def test_gates_json(model_dir, plain_dir):
    res = runner.invoke(app, ["gates", model_dir, "--prompt", "w1 w2 w3 w4", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert len(report["mean_gate"]) == 2 and len(report["mean_gate"][0]) == 4
    assert 0 < report["summary"]["mean_gate"] < 1
    plain = json.loads(
        runner.invoke(app, ["gates", plain_dir, "--prompt", "w1 w2", "--json"]).stdout
    )
    assert plain["mean_gate"] is None and plain["gate_below"] is None
    assert len(plain["sink"]) == 2 and len(plain["max_activation"]) == 2


def test_gates_table_and_out(model_dir, tmp_path):
    out = tmp_path / "g.json"
    res = runner.invoke(app, ["gates", model_dir, "--prompt", "w1 w2 w3", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "mean gate" in res.stdout and json.loads(out.read_text())["family"] == "qwen3_next"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--sites", "atn_gate.0"], "Did you mean 'attn_gate'"),
        (["--sites", "resid_post.5"], "layers 0-1"),
        (["--sites", "head_out.0.9"], "heads 0-3"),
        (["--prompt", "   ", "--sites", "resid_post.0"], "--prompt is empty"),
        (["--prompt", " ".join(["w1"] * 70), "--sites", "resid_post.0"], "context is 64"),
        (["--sites", "resid_post.0", "--out", "missing-dir/x.safetensors"], "does not exist"),
    ],
)
def test_trace_bad_input(model_dir, tmp_path, args, message):
    base = ["trace", model_dir, "--out", str(tmp_path / "o.safetensors")]
    if "--prompt" not in args:
        base += ["--prompt", "w1 w2"]
    res = runner.invoke(app, base + args)
    assert res.exit_code == 2
    assert message in res.output and "Traceback" not in res.output
    assert not (tmp_path / "o.safetensors").exists()


def test_bad_model_and_prompt_files(model_dir, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    res = runner.invoke(app, ["gates", model_dir, "--prompts", str(empty)])
    assert res.exit_code == 2 and "has no prompts" in res.output
    res = runner.invoke(app, ["gates", str(tmp_path / "nope"), "--prompt", "w1"])
    assert res.exit_code == 2 and "not a model directory" in res.output


def test_unsupported_architecture_cli(tmp_path):
    import transformers as tf

    cfg = tf.BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
    )
    tf.BertForMaskedLM(cfg).save_pretrained(tmp_path / "bert")
    res = runner.invoke(app, ["gates", str(tmp_path / "bert"), "--prompt", "hi"])
    assert res.exit_code == 2 and "unsupported architecture" in res.output


def test_hybrid_site_refusal_cli(tmp_path):
    import transformers as tf
    from test_families import LINEAR
    from tiny import qwen3_next_config, tiny_tokenizer

    cfg = qwen3_next_config(layer_types=["linear_attention", "full_attention"], **LINEAR)
    tf.Qwen3NextForCausalLM(cfg).save_pretrained(tmp_path / "hyb")
    tiny_tokenizer().save_pretrained(tmp_path / "hyb")
    res = runner.invoke(
        app,
        [
            "trace",
            str(tmp_path / "hyb"),
            "--prompt",
            "w1 w2",
            "--sites",
            "attn_gate.0",
            "--out",
            str(tmp_path / "o.safetensors"),
        ],
    )
    assert res.exit_code == 2 and "linear_attention" in res.output
    assert "exists on layers: 1" in res.output


def test_gates_through_nnsight_backend_and_bf16(model_dir, tmp_path):
    base = ["gates", model_dir, "--prompt", "w1 w2 w3 w4", "--json"]
    hooks = json.loads(runner.invoke(app, base).stdout)
    nns = runner.invoke(app, [*base, "--backend", "nnsight"])
    assert nns.exit_code == 0, nns.output
    flat = lambda rows: [x for row in rows for x in row]  # noqa: E731
    got = flat(json.loads(nns.stdout)["mean_gate"])
    assert got == pytest.approx(flat(hooks["mean_gate"]), rel=1e-5)
    bf16 = runner.invoke(app, [*base, "--dtype", "bfloat16"])
    assert bf16.exit_code == 0, bf16.output
    assert json.loads(bf16.stdout)["summary"]["mean_gate"] == pytest.approx(
        hooks["summary"]["mean_gate"], abs=0.02
    )
    bad = runner.invoke(app, [*base, "--dtype", "float8"])
    assert bad.exit_code == 2 and "expected float32, bfloat16 or float16" in bad.output


def test_remote_needs_the_nnsight_backend_and_a_key(model_dir, monkeypatch):
    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    base = ["gates", model_dir, "--prompt", "w1 w2", "--remote"]
    hooks = runner.invoke(app, base)
    assert hooks.exit_code == 2 and "--remote needs --backend nnsight" in hooks.output
    nns = runner.invoke(app, [*base, "--backend", "nnsight"])
    assert nns.exit_code == 2 and "NDIF_API_KEY" in nns.output
