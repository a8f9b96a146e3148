"""The foundation CLI end to end on a saved tiny model, and every bad input."""

import json

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from app.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def plain_dir(tiny_dir):
    return tiny_dir("llama")


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
    from tiny import LINEAR, qwen3_next_config, tiny_tokenizer

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


def _commands():
    """(command path, click command) of every gatescope command."""
    import typer

    def walk(cmd, path):
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                yield from walk(sub, [*path, name])
        else:
            yield " ".join(path), cmd

    return list(walk(typer.main.get_command(app), []))


MODEL_OPTIONS = ("--device", "--dtype", "--device-map", "--backend", "--remote",
                 "--trust-remote-code")  # fmt: skip
#: Commands that write artefacts, not numbers, and why they have no --json/--out pair.
NO_JSON = {
    "app": "starts the web app",
    "reference train": "--out is the run directory (checkpoints and model)",
    "reference tasks": "--out is the directory of regenerated data files",
    "reference bundle": "installs a model into data/models",
    "sae harvest": "--out is the activation store directory",
    "sae train": "--out is the SAE directory",
    "sae load": "--out is the SAE directory",
}
NO_MODEL = {"app", "reference train", "reference tasks", "reference bundle"}


def _flags(cmd) -> set[str]:
    return {o for p in cmd.params for o in p.opts}


@pytest.mark.parametrize("path, cmd", _commands(), ids=[p for p, _ in _commands()])
def test_every_command_has_the_shared_options(path, cmd):
    flags = _flags(cmd)
    assert {"--debug", "--quiet"} <= flags or path == "app"
    if path not in NO_JSON:
        assert {"--json", "--out", "--force"} <= flags, path
    if path not in NO_MODEL:
        assert set(MODEL_OPTIONS) <= flags, path


def _dummy_args(cmd) -> list[str]:
    """Values for every required argument and option (never reached: the model options are
    checked first)."""
    args = []
    for p in cmd.params:
        if p.required:
            args += ["1"] if p.param_type_name == "argument" else [p.opts[0], "1"]
    return args


@pytest.mark.parametrize(
    "path, cmd", [(p, c) for p, c in _commands() if p not in NO_MODEL],
    ids=[p for p, _ in _commands() if p not in NO_MODEL],
)  # fmt: skip
@pytest.mark.parametrize(
    "extra, message",
    [
        (["--backend", "jax"], "--backend jax: unknown"),
        (["--remote"], "--remote needs --backend nnsight"),
        (["--device-map", "auto", "--backend", "nnsight"], "--device-map is for the hooks"),
        (["--device", "cuda:7", "--dtype", "float32"], "--device cuda:7"),
        (["--dtype", "int4", "--trust-remote-code"], "--dtype int4"),
    ],
)
def test_every_model_command_checks_the_model_options_first(path, cmd, extra, message):
    if "cuda:7" in extra and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    res = runner.invoke(app, [*path.split(), *_dummy_args(cmd), *extra])
    assert res.exit_code == 2 and message in res.output, res.output
    assert "Traceback" not in res.output


def test_model_options_reach_the_model_and_the_provenance(model_dir, tiny_dir, tmp_path):
    out = tmp_path / "g.json"
    args = ["gates", model_dir, "--prompt", "w1 w2 w3", "--device", "cpu", "--dtype"]
    res = runner.invoke(app, [*args, "bfloat16", "--trust-remote-code", "--out", str(out), "-q"])
    assert res.exit_code == 0, res.output
    prov = json.loads(out.read_text())["provenance"]
    assert prov["model"]["dtype"] == "bfloat16" and prov["device"] == "cpu"
    assert prov["model"]["fingerprint"].startswith("sha256:") and prov["n_prompts"] == 1
    assert prov["gatescope"] and prov["metric"] == "gate statistics" and prov["seconds"] >= 0
    same = runner.invoke(app, [*args, "bfloat16", "--json"])
    assert json.loads(same.stdout)["provenance"]["model"] == prov["model"]
    other_weights = tiny_dir("qwen3_next", seed=1)
    other = runner.invoke(app, ["gates", other_weights, "--prompt", "w1", "--json"])
    assert (
        json.loads(other.stdout)["provenance"]["model"]["fingerprint"]
        != prov["model"]["fingerprint"]
    )


def test_patch_provenance_names_the_task_file(model_dir, tmp_path):
    import hashlib

    task = tmp_path / "t.jsonl"
    task.write_text(
        json.dumps({"clean": "w1 w2 w3", "corrupt": "w4 w2 w3", "answer": "w5", "wrong": "w6"})
        + "\n"
    )
    res = runner.invoke(app, ["patch", model_dir, "--task", str(task), "--sites",
                              "resid_pre.*", "--json", "--limit", "1"])  # fmt: skip
    assert res.exit_code == 0, res.output
    prov = json.loads(res.stdout)["provenance"]
    digest = hashlib.sha256(task.read_bytes()).hexdigest()
    assert {"path": str(task), "sha256": digest} in prov["sources"]
    assert prov["sites"] == "resid_pre.*" and prov["positions"] == "all" and prov["limit"] == 1
    assert prov["n_prompts"] == 1 and "LD_clean - LD_corrupt" in prov["formula"]


def test_progress_on_stderr_and_quiet(model_dir, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("".join(f"w{i} w{i + 1} w{i + 2}\n" for i in range(24)))
    base = ["gates", model_dir, "--prompts", str(prompts), "--batch-size", "4", "--json"]
    res = runner.invoke(app, base)
    assert res.exit_code == 0 and "6/6" in res.stderr and "6/6" not in res.stdout
    json.loads(res.stdout)  # stdout stays clean JSON
    quiet = runner.invoke(app, [*base, "--quiet"])
    assert quiet.exit_code == 0 and "6/6" not in quiet.stderr


def test_harvest_resumes_into_its_store_and_says_when_it_is_complete(model_dir, tmp_path):
    text = tmp_path / "docs.txt"
    text.write_text("".join(f"w{i} w{i + 1} w{i + 2} w{i + 3}\n" for i in range(3, 60)))
    args = ["sae", "harvest", model_dir, "--site", "resid_post.0", "--out", str(tmp_path / "s")]
    args += ["--batch-size", "1", "--text", str(text)]  # one window per pass: some stay unread
    first = runner.invoke(app, [*args, "--tokens", "40", "-q"])
    assert first.exit_code == 0, first.output
    assert "40 tokens this run" in first.stdout and "it/s" not in first.stderr  # -q: no bar
    again = runner.invoke(app, [*args, "--tokens", "40", "-q"])  # an existing store: resumed
    assert again.exit_code == 0, again.output
    assert "already complete" in again.stdout and "tok/s" not in again.stdout
    more = runner.invoke(app, [*args, "--tokens", "60", "-q"])
    assert more.exit_code == 0 and "20 tokens this run" in more.stdout, more.output
    other = tmp_path / "other.txt"
    other.write_text("w9 w8 w7 w6\n" * 40)
    args[args.index(str(text))] = str(other)
    refused = runner.invoke(app, [*args, "--tokens", "80", "-q"])
    assert refused.exit_code == 2 and "harvested from other texts" in refused.output
