"""Reference corpus, tokenizer, training (resume, second stage), the CLI, and the bundled
models' held-out figures."""

import json
import random

import pytest
import torch
from conftest import needs_reference
from typer.testing import CliRunner

from app.cli import app
from probe import GatescopeError, load_model
from probe.reference import reference_path
from probe.reference.corpus import _induction_doc, build_corpus, iter_task_words
from probe.reference.tokenizer import check_single_tokens, single_token_id

#: a model small enough to train a few steps in a test
TINY = dict(
    batch=2,
    seq=32,
    d_model=32,
    n_layers=1,
    n_heads=2,
    n_kv_heads=1,
    d_head=16,
    d_mlp=64,
    warmup=1,
    corpus_scale=0.05,
)


def test_corpus_is_deterministic_from_its_seed():
    a, b = build_corpus(0, scale=0.02), build_corpus(0, scale=0.02)
    assert a.sha256() == b.sha256()
    assert build_corpus(1, scale=0.02).sha256() != a.sha256()
    assert build_corpus(0, scale=0.02, induction_tail=False).sha256() != a.sha256()


def test_first_corpus_of_the_bundled_models_is_reproduced():
    info = json.loads((reference_path("reference") / "training.json").read_text())
    first = info["init"] or info
    assert build_corpus(0, induction_tail=False).sha256() == first["corpus_sha256"]


def test_induction_documents_run_past_the_repeat():
    rng = random.Random(0)
    docs = [_induction_doc(rng).split() for _ in range(200)]
    for words in docs:  # a sequence, the same again, then the start of a third copy
        n = next(n for n in range(6, 17) if words[n : 2 * n] == words[:n])
        assert words[2 * n :] == words[: len(words) - 2 * n]
    assert sum(len(w) > 2 * 8 for w in docs) > 100
    plain = [_induction_doc(rng, tail=False).split() for _ in range(50)]
    assert all(w[: len(w) // 2] == w[len(w) // 2 :] for w in plain)


def test_heldout_prompts_never_occur_in_training():
    from probe.tasks import load_task, load_texts

    text = "\n".join(build_corpus(0).documents)
    for name in ("ioi", "facts"):
        for clean in load_task(name).clean:
            assert clean not in text, (name, clean)
    for prompt in load_texts("sentiment_prompts"):
        assert prompt not in text
    for answer in load_task("ioi").answers + load_task("facts").answers:
        assert answer in text


def test_training_resumes_exactly_and_continues_from_a_model(tmp_path):
    from safetensors.torch import load_file

    from probe.reference.train import TrainConfig, train_reference

    cfg = TrainConfig(steps=4, checkpoint_every=2, **TINY)
    whole = train_reference(cfg, tmp_path / "whole", progress=False)
    # an interrupted run: keep only the step-2 checkpoint, then resume
    part = train_reference(cfg, tmp_path / "part", progress=False)
    (part / "model.safetensors").unlink()
    resumed = train_reference(cfg, tmp_path / "part", resume=True, progress=False)
    a, b = (
        load_file(str(whole / "model.safetensors")),
        load_file(str(resumed / "model.safetensors")),
    )
    for key in a:
        torch.testing.assert_close(a[key], b[key])
    second = TrainConfig(steps=2, init=str(whole), **TINY)
    final = train_reference(second, tmp_path / "stage2", progress=False)
    info = json.loads((final / "training.json").read_text())
    assert info["init"]["config"]["steps"] == 4
    assert (final / "tokenizer.json").read_text() == (whole / "tokenizer.json").read_text()
    with pytest.raises(GatescopeError, match="holds a Qwen3NextForCausalLM"):
        train_reference(TrainConfig(arch="plain", steps=2, init=str(whole), **TINY), tmp_path)


def test_single_token_check_names_the_word():
    from probe.reference.tokenizer import train_tokenizer

    tok = train_tokenizer(["Mary and John went to the store."] * 5, vocab_size=300)
    assert single_token_id(tok, "Mary") >= 0
    with pytest.raises(GatescopeError, match="' Clementine' is not a single token"):
        single_token_id(tok, "Clementine")


def test_reference_path_lists_bundled_names():
    assert reference_path("reference").name == "reference-gated"
    with pytest.raises(GatescopeError, match="bundled: reference, reference-gated"):
        reference_path("reference-big")


@needs_reference
@pytest.mark.parametrize("name", ["reference", "reference-plain"])
def test_bundled_models_reach_their_figures(name):
    from probe.reference.evaluate import facts_accuracy, induction_accuracy, ioi_figures

    model = load_model(name)
    check_single_tokens(model.tokenizer, iter_task_words())
    acc, ld, n = ioi_figures(model, limit=100)
    assert n == 100 and acc >= 0.9 and ld >= 2.0
    assert induction_accuracy(model, limit=100)[0] >= 0.9
    assert facts_accuracy(model)[0] >= 0.8
    assert model.is_gated == (name == "reference")


@needs_reference
def test_eval_command_json():
    res = CliRunner().invoke(app, ["reference", "eval", "reference", "--json", "--limit", "40"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["n_ioi"] == 40 and data["n_induction"] == 40
    assert 0 < data["mean_gate_per_layer"][0] < 1 and data["prose_perplexity"] > 1
    assert data["ioi_accuracy"] >= 0.9 and data["induction_accuracy"] >= 0.9


@needs_reference
def test_evaluate_takes_a_hugging_face_model():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from probe.reference.evaluate import evaluate_reference

    path = reference_path("reference-plain")
    hf, tok = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    result = evaluate_reference(hf, tok, limit=20)
    assert result.mean_gate_per_layer is None and result.n_ioi == 20
    assert json.loads(result.to_json())["facts_accuracy"] >= 0.8


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--out", "x", "--arch", "moe"], "--arch moe: expected 'gated' or 'plain'"),
        (["train", "--out", "x", "--steps", "0"], "--steps 0"),
        (["train", "--out", "x", "--lr", "-1"], "--lr -1.0"),
        (["train", "--out", "x", "--init", "no/such/dir"], "not a trained model directory"),
        (["eval", "./no_such_model"], "no_such_model"),
    ],
)
def test_reference_commands_refuse_bad_input(args, message, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["reference", *args])
    assert res.exit_code == 2, res.output
    assert message in res.stderr and "Traceback" not in res.output
