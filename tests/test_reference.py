"""Reference corpus, tokenizer, training (resume, later stages, the hybrid), the CLI, the
evaluation's figures, and the bundled models' held-out figures."""

import json
import random
import re

import pytest
import torch
from conftest import needs_reference, reference_available
from typer.testing import CliRunner

from app.cli import app
from probe import GatescopeError, load_model
from probe.reference import reference_path
from probe.reference.corpus import (
    IOI_TEST,
    IOI_TRAIN,
    V1_POOL,
    _induction_doc,
    build_corpus,
    induction_vocabulary,
    iter_task_words,
    joined_by_and,
    template_pattern,
)
from probe.reference.tokenizer import check_single_tokens, single_token_id

#: a model small enough to train a few steps in a test
TINY = dict(
    batch=2,
    seq=32,
    d_model=32,
    n_layers=2,
    n_heads=2,
    n_kv_heads=1,
    d_head=16,
    d_mlp=64,
    warmup=1,
    corpus_scale=0.05,
    linear_heads=2,
    linear_d_head=16,
    n_experts=4,
    d_expert=16,
    d_shared=16,
)


def test_corpus_is_deterministic_from_its_seed():
    a, b = build_corpus(0, scale=0.02), build_corpus(0, scale=0.02)
    assert a.sha256() == b.sha256() and a.kinds == b.kinds
    assert build_corpus(1, scale=0.02).sha256() != a.sha256()
    assert build_corpus(0, scale=0.02, version=1).sha256() != a.sha256()
    assert build_corpus(0, scale=0.02, version=2).sha256() != a.sha256()
    assert build_corpus(0, scale=0.02, version=3).sha256() != a.sha256()
    assert build_corpus(0, scale=0.02, version=5).sha256() != a.sha256()
    with pytest.raises(GatescopeError, match="corpus version 6"):
        build_corpus(0, version=6)
    # a first stage without induction documents keeps every other document as it is
    c = build_corpus(0, scale=0.02, induction=False)
    assert "induction" not in c.kinds
    assert sorted(c.documents) == sorted(
        d for d, k in zip(a.documents, a.kinds, strict=True) if k != "induction"
    )


def test_word_lists_hold_every_word_and_never_repeat():
    from probe.reference.corpus import _list_doc, list_vocabulary

    rng = random.Random(0)
    docs = [_list_doc(rng).split() for _ in range(2000)]
    assert all(len(set(d)) == len(d) and 36 <= len(d) <= 60 for d in docs)
    short = [_list_doc(rng, long=False).split() for _ in range(200)]
    assert all(len(set(d)) == len(d) and 6 <= len(d) <= 16 for d in short)
    pool, held = induction_vocabulary()
    assert set(list_vocabulary()) == set(pool) | set(held)
    seen = {w for d in docs for w in d}
    assert len(seen & set(held)) > 0.9 * len(held)  # held-out words occur in word lists


def _first_stage(info: dict) -> dict:
    while info.get("init"):
        info = info["init"]
    return info


@pytest.mark.parametrize("name", ["reference", "reference-plain", "reference-hybrid"])
def test_every_stage_corpus_of_the_bundled_models_is_reproduced(name):
    """Every training stage's corpus is rebuilt from its recorded options, bit for bit."""
    from probe.reference.bundle import _stages

    info = json.loads((reference_path(name) / "training.json").read_text())
    built = {}
    for stage in _stages(info):
        cfg = stage["config"]
        key = (cfg["seed"], cfg["induction_tail"], cfg["corpus_version"], cfg["induction_docs"])
        if key not in built:
            built[key] = build_corpus(
                key[0], induction_tail=key[1], version=key[2], induction=key[3]
            ).sha256()
        assert built[key] == stage["corpus_sha256"], cfg
    assert not _first_stage(info)["config"]["induction_docs"] and info["config"]["induction_docs"]


def test_induction_documents_run_past_the_repeat():
    rng = random.Random(0)
    docs = [_induction_doc(rng).split() for _ in range(200)]
    for words in docs:  # a sequence, the same again, then the start of a third copy
        n = next(n for n in range(6, 17) if words[n : 2 * n] == words[:n])
        assert words[2 * n :] == words[: len(words) - 2 * n]
    assert sum(len(w) > 2 * 8 for w in docs) > 100
    plain = [_induction_doc(rng, tail=False).split() for _ in range(50)]
    assert all(w[: len(w) // 2] == w[len(w) // 2 :] for w in plain)
    pool = set(induction_vocabulary()[0])
    assert len(pool) > 10 * len(V1_POOL)  # the whole vocabulary, not a word pool
    assert {w for d in docs for w in d} <= pool


def test_ioi_templates_vary_and_test_templates_are_apart():
    assert not set(IOI_TRAIN) & set(IOI_TEST)
    assert sum(not joined_by_and(t) for t in IOI_TRAIN) >= 20
    assert sum(not joined_by_and(t) for t in IOI_TEST) >= 5
    pattern = template_pattern("{x} met {y} at the {p}, and {s} gave a {o} to")
    assert pattern.search("Tom met Amy at the park, and Tom gave a pen to Amy.")
    assert not pattern.search("Tom and Amy met at the park, where Tom gave a pen to Amy.")


@pytest.mark.slow
def test_heldout_sets_never_occur_in_training():
    """Checked on the full training corpus: held-out prompts, whole templates, and the
    held-out induction words (also as tokens) never occur where they must not, while every
    answer and every held-out word occurs in other training text."""
    from transformers import AutoTokenizer

    from probe.tasks import load_task, load_texts

    corpus = build_corpus(0)
    text = "\n".join(corpus.documents)
    ioi_docs = corpus.of_kind("ioi")
    for name in ("ioi", "facts"):
        for clean in load_task(name).clean:
            assert clean not in text, (name, clean)
    for prompt in load_texts("sentiment_prompts"):
        assert prompt not in text
    for template in IOI_TEST:  # no filling of a held-out template anywhere
        pattern = template_pattern(template)
        assert not any(pattern.search(d) for d in corpus.documents), template
    assert len(ioi_docs) > 1000
    other = {
        w
        for d, k in zip(corpus.documents, corpus.kinds, strict=True)
        if k != "induction"
        for w in re.findall(r"[A-Za-z]+|[0-9]+", d)
    }
    induced = {w for d in corpus.of_kind("induction") for w in d.split()}
    _, held = induction_vocabulary()
    assert held and not set(held) & induced
    # every held-out word outside the first version's pool (whose filler words occur in no
    # corpus-2 document) occurs in other training text; only those are evaluated
    assert set(held) - set(V1_POOL) <= other
    for answer in load_task("ioi").answers + load_task("facts").answers:
        assert answer in text
    # the induction task asks only for held-out words, and never for a token of a document
    tok = AutoTokenizer.from_pretrained(reference_path("reference"))
    task = load_task("induction")
    words = {w for c in task.clean for w in c.split()}
    assert words <= set(held) and not words & set(V1_POOL) and words <= other
    asked = {t for c in task.clean for t in tok(c, add_special_tokens=False)["input_ids"]}
    seen = {t for ids in tok(corpus.of_kind("induction"))["input_ids"] for t in ids}
    assert not asked & seen


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["gated", "plain", "hybrid"])
def test_a_20_step_run_resumes_exactly(arch, tmp_path):
    from safetensors.torch import load_file

    from probe.reference.train import TrainConfig, train_reference

    tokenizer = None if arch != "hybrid" else str(reference_path("reference"))
    cfg = TrainConfig(
        arch=arch, steps=20, checkpoint_every=10, checkpoint_seconds=0, tokenizer=tokenizer, **TINY
    )
    whole = train_reference(cfg, tmp_path / "whole", progress=False)
    # an interrupted run: keep only the step-10 checkpoint, then resume
    part = train_reference(cfg, tmp_path / "part", progress=False)
    (part / "model.safetensors").unlink()
    resumed = train_reference(cfg, tmp_path / "part", resume=True, progress=False)
    info = json.loads((resumed / "training.json").read_text())
    assert info["resumed_at_step"] == 10
    assert (
        info["losses_every_50"]
        == json.loads((whole / "training.json").read_text())["losses_every_50"]
    )
    a, b = (
        load_file(str(whole / "model.safetensors")),
        load_file(str(resumed / "model.safetensors")),
    )
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    if arch == "hybrid":
        config = json.loads((whole / "config.json").read_text())
        assert config["layer_types"] == ["linear_attention", "full_attention"]
        assert config["num_experts"] == 4 and config["output_router_logits"]


@pytest.mark.slow
def test_a_wall_time_checkpoint_resumes_exactly(tmp_path):
    """No step checkpoint falls inside the run (every 1000 steps); a wall-time checkpoint
    after every step does; resumed from the last one, the run ends where an uninterrupted
    run ends, bit for bit."""
    from dataclasses import replace

    from safetensors.torch import load_file

    from probe.reference.train import TrainConfig, checkpoint_step, train_reference

    cfg = TrainConfig(steps=12, checkpoint_every=1000, checkpoint_seconds=0, **TINY)
    whole = train_reference(cfg, tmp_path / "whole", progress=False)
    assert checkpoint_step(tmp_path / "whole") is None  # steps alone wrote none
    timed = replace(cfg, checkpoint_seconds=1e-9)  # due after every step
    part = train_reference(timed, tmp_path / "part", progress=False)
    assert checkpoint_step(tmp_path / "part") == 11  # the last step before the end
    (part / "model.safetensors").unlink()
    resumed = train_reference(timed, tmp_path / "part", resume=True, progress=False)
    assert json.loads((resumed / "training.json").read_text())["resumed_at_step"] == 11
    a = load_file(str(whole / "model.safetensors"))
    b = load_file(str(resumed / "model.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_the_cli_says_where_training_resumes(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import probe.reference.train as train
    from app.cli import app

    seen = {}

    def fake_train(cfg, out, resume=False, progress=True):
        seen.update(cfg=cfg, resume=resume, progress=progress)
        return out / "model"

    monkeypatch.setattr(train, "train_reference", fake_train)
    (tmp_path / "run" / "checkpoint").mkdir(parents=True)
    (tmp_path / "run" / "checkpoint" / "checkpoint.json").write_text('{"step": 7}')
    args = ["reference", "train", "--out", str(tmp_path / "run"), "--resume"]
    res = CliRunner().invoke(app, [*args, "-q", "--checkpoint-seconds", "60"])
    assert res.exit_code == 0, res.output
    assert "resuming from step 7" in res.stderr and "resuming" not in res.stdout
    assert seen["resume"] and seen["progress"] is False and seen["cfg"].checkpoint_seconds == 60
    fresh = CliRunner().invoke(app, ["reference", "train", "--out", str(tmp_path / "new")])
    assert fresh.exit_code == 0 and "resuming" not in fresh.output and seen["progress"] is True


def test_later_stage_keeps_the_tokenizer_and_checks_the_arch(tmp_path):
    from probe.reference.train import TrainConfig, train_reference

    first = train_reference(TrainConfig(steps=2, **TINY), tmp_path / "a", progress=False)
    second = TrainConfig(steps=2, init=str(first), **TINY)
    final = train_reference(second, tmp_path / "stage2", progress=False)
    info = json.loads((final / "training.json").read_text())
    assert info["init"]["config"]["steps"] == 2
    assert (final / "tokenizer.json").read_text() == (first / "tokenizer.json").read_text()
    with pytest.raises(GatescopeError, match="holds a Qwen3NextForCausalLM"):
        train_reference(TrainConfig(arch="plain", steps=2, init=str(first), **TINY), tmp_path)
    with pytest.raises(GatescopeError, match="--arch hybrid does not"):
        train_reference(TrainConfig(arch="hybrid", steps=2, init=str(first), **TINY), tmp_path)


def test_made_up_induction_words_hold_no_heldout_token():
    """Corpus 5's made-up words: none starts with a held-out word, so (checked on the
    tokens) no held-out evaluation token occurs in any induction document."""
    from transformers import AutoTokenizer

    from probe.reference.corpus import nonce_word
    from probe.tasks import load_task

    corpus = build_corpus(0, scale=0.05, version=5)
    docs = corpus.of_kind("induction")
    pool, held = induction_vocabulary()
    words = {w for d in docs for w in d.split()}
    made_up = words - set(pool)
    assert len(made_up) > 100 and not made_up & set(held)
    rng = random.Random(3)
    assert all(
        not any(w.startswith(h) for h in held) for w in (nonce_word(rng) for _ in range(500))
    )
    tok = AutoTokenizer.from_pretrained(reference_path("reference"))
    asked = {
        t
        for c in load_task("induction").clean
        for t in tok(c, add_special_tokens=False)["input_ids"]
    }
    assert not asked & {t for ids in tok(docs)["input_ids"] for t in ids}


def test_hybrid_attention_layers_go_where_given():
    from dataclasses import asdict

    from probe.reference.bundle import _command
    from probe.reference.train import TrainConfig, model_class, model_config

    four = {**TINY, "n_layers": 4}
    default = model_config(TrainConfig(arch="hybrid", **four), 100).layer_types
    assert default == ["linear_attention"] * 3 + ["full_attention"]
    cfg = TrainConfig(arch="hybrid", attention_layers=(1, 3), **four)
    model = load_model(model_class("hybrid")(model_config(cfg, 100)))
    mixers = [info.mixer for info in model.layer_map()]
    assert mixers == ["linear_attention", "full_attention"] * 2
    stage = {"config": {**asdict(cfg), "attention_layers": [1, 3]}}
    assert "--attention-layers 1,3" in _command(stage, 1, "hybrid")


def test_weight_decay_reaches_the_weight_matrices_only():
    from probe.reference.train import TrainConfig, _optimizer, _start

    cfg = TrainConfig(weight_decay=0.7, tokenizer=str(reference_path("reference")), **TINY)
    model, _, _ = _start(cfg, [])
    decay, no_decay = _optimizer(model, cfg).param_groups
    assert decay["weight_decay"] == 0.7 and no_decay["weight_decay"] == 0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(
        p.dim() < 2 for p in no_decay["params"]
    )


def test_a_later_hybrid_stage_uses_its_own_auxiliary_loss_coefficient(tmp_path):
    from probe.reference.train import TrainConfig, _start, train_reference

    first = train_reference(TrainConfig(arch="hybrid", steps=2, **TINY), tmp_path / "a", False)
    model, _, _ = _start(TrainConfig(arch="hybrid", init=str(first), router_aux_coef=0.5), [])
    ids = torch.randint(0, 100, (1, 8))
    with torch.no_grad():
        out = model(ids, labels=ids)
    # the model's own loss is the LM loss plus the new coefficient times its own aux loss
    lm = torch.nn.functional.cross_entropy(out.logits[0, :-1], ids[0, 1:])
    torch.testing.assert_close(out.loss, lm + 0.5 * out.aux_loss)
    assert model.config.router_aux_loss_coef == 0.5


def test_init_embeddings_copies_the_token_embeddings(tmp_path):
    from safetensors.torch import load_file

    from probe.reference.train import TrainConfig, _start

    src = reference_path("reference")
    cfg = TrainConfig(arch="hybrid", tokenizer=str(src), init_embeddings=str(src), d_model=128)
    model, _, _ = _start(cfg, [])
    want = load_file(str(src / "model.safetensors"))["model.embed_tokens.weight"]
    torch.testing.assert_close(model.get_input_embeddings().weight.detach(), want)
    with pytest.raises(GatescopeError, match="no token embeddings of shape"):
        _start(
            TrainConfig(arch="hybrid", tokenizer=str(src), init_embeddings=str(src), d_model=32), []
        )


def test_single_token_check_names_the_word():
    from probe.reference.tokenizer import train_tokenizer

    tok = train_tokenizer(["Mary and John went to the store."] * 5, vocab_size=300)
    assert single_token_id(tok, "Mary") >= 0
    with pytest.raises(GatescopeError, match="' Clementine' is not a single token"):
        single_token_id(tok, "Clementine")


def test_reference_path_lists_bundled_names():
    assert reference_path("reference").name == "reference-gated"
    with pytest.raises(GatescopeError, match="bundled: reference, reference-gated, reference-hyb"):
        reference_path("reference-big")


def test_paper_verdict_follows_the_numbers():
    from probe.reference.evaluate import paper_verdict

    plain = {
        "sink_per_layer": [0.2, 0.3],
        "max_activation_per_layer": [50.0, 100.0],
        "mean_gate_per_layer": None,
        "gate_below_0_1_per_layer": None,
    }
    gated = {
        "sink_per_layer": [0.1, 0.1],
        "max_activation_per_layer": [5.0, 10.0],
        "mean_gate_per_layer": [0.2, 0.4],
        "gate_below_0_1_per_layer": [0.5, 0.1],
    }
    both = paper_verdict(gated, plain)
    assert both["sink_lower_layers"] == 2 and both["gated_mean_gate"] == pytest.approx(0.3)
    assert both["verdict"].endswith("a lower sink and smaller activations with the gate")
    assert "30% of gate values below 0.1" in both["verdict"]
    reverse = paper_verdict({**gated, "sink_per_layer": [0.3, 0.4]}, plain)
    assert "smaller activations with the gate, but not a lower sink" in reverse["verdict"]
    none = paper_verdict(
        {**gated, "sink_per_layer": [None, 0.4]}, {**plain, "max_activation_per_layer": [1.0, 1.0]}
    )
    assert none["sink_layers"] == 1 and none["verdict"].startswith("gated vs plain")
    assert "does not agree" in none["verdict"]


def test_token_classes():
    from probe.reference.evaluate import token_class

    assert [token_class(t) for t in (" Mary", " the", ",", " 42", " garden", "")] == [
        "names",
        "function words",
        "punctuation",
        "digits",
        "rest",
        "rest",
    ]


@pytest.mark.slow
def test_hybrid_figures_match_the_models_own_router_output(tmp_path):
    """Expert load read by the hooks equals the top-k of the router logits transformers
    returns (``output_router_logits``), on a random hybrid."""
    from probe.reference.evaluate import hybrid_figures
    from probe.reference.train import TrainConfig, model_class, model_config

    cfg = TrainConfig(arch="hybrid", **{k: v for k, v in TINY.items() if k != "corpus_scale"})
    torch.manual_seed(0)
    hf = model_class("hybrid")(model_config(cfg, 4096)).eval()
    for layer in hf.model.layers:  # spread the router so every expert is picked
        torch.nn.init.normal_(layer.mlp.gate.weight, std=1.0)
    model = load_model(hf, tokenizer=load_model("reference").tokenizer)
    prompts = ["Mary met John at the park, and John gave a pen to", "1, 2, 3, the cat sat."]
    figures = hybrid_figures(model, prompts, prose_rows=0)
    batch = model.tokenize(prompts)
    with torch.no_grad():
        out = hf(batch.input_ids, attention_mask=batch.attention_mask, output_router_logits=True)
    keep = batch.attention_mask.reshape(-1).bool()
    for layer, logits in enumerate(out.router_logits):
        top = logits[keep].topk(cfg.top_k, -1).indices.flatten()
        want = torch.bincount(top, minlength=cfg.n_experts).float() / top.numel()
        torch.testing.assert_close(torch.tensor(figures["experts"][str(layer)]["load"]), want)
        entropy = -(logits[keep].softmax(-1) * logits[keep].log_softmax(-1)).sum(-1).mean()
        assert figures["experts"][str(layer)]["router_entropy"] == pytest.approx(
            float(entropy), rel=1e-4
        )
    assert set(figures["deltanet"]) == {"0"}
    half = figures["deltanet"]["0"]["half_life_tokens"]
    assert len(half) == cfg.linear_heads and all(h > 0 for h in half)
    assert 0 < figures["mean_shared_gate"] < 1
    assert figures["tokens"] == int(batch.attention_mask.sum())


@needs_reference
@pytest.mark.parametrize("name", ["reference", "reference-plain", "reference-hybrid"])
def test_bundled_models_reproduce_their_readme_figures(name):
    """On a subset, the figures recorded at bundling (README and evaluation.json)."""
    from probe.reference.evaluate import facts_accuracy, induction_accuracy, ioi_figures

    if not reference_available(
        name.replace("reference", "reference-gated") if name == "reference" else name
    ):
        pytest.skip(f"{name} not bundled yet")
    recorded = json.loads((reference_path(name) / "evaluation.json").read_text())
    readme = (reference_path(name) / "README.md").read_text()
    assert f"{recorded['ioi_accuracy']:.3f}" in readme
    assert f"{recorded['induction_accuracy']:.3f}" in readme
    model = load_model(name)
    check_single_tokens(model.tokenizer, iter_task_words())
    assert facts_accuracy(model)[0] == pytest.approx(recorded["facts_accuracy"])
    ioi = ioi_figures(model, limit=100)
    assert ioi["n_ioi"] == 100
    assert ioi["ioi_accuracy"] == pytest.approx(recorded["ioi_accuracy"], abs=0.1)
    ld = recorded["ioi_logit_diff"]
    assert ioi["ioi_logit_diff"] == pytest.approx(ld, abs=max(0.25 * abs(ld), 0.5))
    acc, n = induction_accuracy(model, limit=60)
    assert n == 60 and acc == pytest.approx(recorded["induction_accuracy"], abs=0.1)
    assert model.is_gated == (name != "reference-plain")


@needs_reference
def test_eval_command_json():
    res = CliRunner().invoke(
        app, ["reference", "eval", "reference", "--json", "--limit", "40", "--twin", "none"]
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["n_ioi"] == 40 and data["n_induction"] == 40 and data["n_ioi_no_and"] > 0
    assert 0 < data["mean_gate_per_layer"][0] < 1 and data["prose_perplexity"] > 1
    assert data["paper_effects"] is None and data["hybrid"] is None
    # the diagnostic: copying on words induction documents use, and its transfer
    assert 0 <= data["induction_accuracy_seen_words"] <= 1
    assert set(data["induction_logit_gain"]) == {"seen", "held_out"}


@needs_reference
def test_evaluate_takes_a_hugging_face_model():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from probe.reference.evaluate import evaluate_reference

    path = reference_path("reference-plain")
    hf, tok = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    result = evaluate_reference(hf, tok, limit=20, twin=None)
    assert result.mean_gate_per_layer is None and result.n_ioi == 20
    assert json.loads(result.to_json())["facts_accuracy"] >= 0.8


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--out", "x", "--arch", "moe"], "--arch moe: expected one of gated, plain"),
        (["train", "--out", "x", "--steps", "0"], "--steps 0"),
        (["train", "--out", "x", "--lr", "-1"], "--lr -1.0"),
        (["train", "--out", "x", "--corpus", "6"], "--corpus 6: expected 1, 2, 3, 4 or 5"),
        (["train", "--out", "x", "--weight-decay", "-1"], "--weight-decay -1.0: expected 0"),
        (
            ["train", "--out", "x", "--arch", "hybrid", "--attention-layers", "1,4"],
            "--attention-layers 1,4: expected layer numbers 0..3",
        ),
        (["train", "--out", "x", "--attention-layers", "one"], "separated by commas, e.g. 1,3"),
        (["train", "--out", "x", "--router-aux-coef", "-1"], "--router-aux-coef -1.0"),
        (["train", "--out", "x", "--router-balance", "x"], "--router-balance x: expected one"),
        (["train", "--out", "x", "--init", "no/such/dir"], "not a trained model directory"),
        (["eval", "./no_such_model"], "no_such_model"),
    ],
)
def test_reference_commands_refuse_bad_input(args, message, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["reference", *args])
    assert res.exit_code == 2, res.output
    assert message in res.stderr and "Traceback" not in res.output


def test_stop_after_then_resume_with_another_length(tmp_path):
    from probe.reference.train import TrainConfig, train_reference

    assert (
        train_reference(TrainConfig(steps=6, stop_after=2, **TINY), tmp_path, progress=False)
        is None
    )
    meta = json.loads((tmp_path / "checkpoint" / "checkpoint.json").read_text())
    assert meta["step"] == 2 and meta["schedule"] == [[0, 6]] and len(meta["losses"]) == 2
    final = train_reference(TrainConfig(steps=4, **TINY), tmp_path, resume=True, progress=False)
    info = json.loads((final / "training.json").read_text())
    assert info["schedule"] == [[0, 6], [2, 4]] and info["resumed_at_step"] == 2
    with pytest.raises(GatescopeError, match="at step 2 already"):
        train_reference(TrainConfig(steps=2, **TINY), tmp_path, resume=True, progress=False)


def test_model_card_says_why_a_later_stage_exists():
    from probe.reference.bundle import _command, _later_stages

    def stage(k, coef, init):
        cfg = dict(arch="hybrid", lr=3e-3 if k < 3 else 1e-3, router_aux_coef=coef, init=init)
        return {"config": {**cfg, "seed": 0, "steps": 10, "warmup": 1, "freeze_embeddings": 1}}

    two = {**stage(2, 0.01, "s1"), "init": stage(1, 0.01, None)}
    assert _later_stages(two) == ""
    three = {**stage(3, 0.05, "s2"), "init": two}
    said = _later_stages(three)
    assert "Stage 3 continues stage 2" in said and "from 0.01 to 0.05" in said
    assert "--router-aux-coef 0.05" in _command(three, 3, "hybrid")
    assert "--router-aux-coef" not in _command(two, 2, "hybrid")
    four = {**stage(4, 0.05, "s3"), "init": three}
    four["config"]["weight_decay"] = 3.0
    said = _later_stages(four)
    assert "Stage 4 continues stage 3" in said and "weight decay raised from 0.1 to 3.0" in said
    assert "--weight-decay 3.0" in _command(four, 4, "hybrid")
    assert "--weight-decay" not in _command(three, 3, "hybrid")


def test_layer_balance_is_the_family_loss_of_each_layer(tmp_path):
    from transformers.models.qwen3_next.modeling_qwen3_next import load_balancing_loss_func

    from probe.reference.train import TrainConfig, _loss, _start, layer_balance_loss

    cfg = TrainConfig(arch="hybrid", router_balance="layer", router_aux_coef=0.3, **TINY)
    model, _, _ = _start(cfg, [])  # a fresh model (its tokenizer is not used here)
    ids = torch.randint(0, 100, (2, 8))
    with torch.no_grad():
        out = model(ids, labels=ids)
        logits = out.router_logits
        # one layer: exactly the family's function; pooled over layers it differs
        one = layer_balance_loss(logits[:1], cfg.n_experts, cfg.top_k)
        torch.testing.assert_close(one, load_balancing_loss_func(logits[:1], cfg.n_experts, 2))
        mean = torch.stack([load_balancing_loss_func((r,), cfg.n_experts, 2) for r in logits])
        torch.testing.assert_close(
            layer_balance_loss(logits, cfg.n_experts, cfg.top_k), mean.mean()
        )
        lm = out.loss - model.router_aux_loss_coef * out.aux_loss
        torch.testing.assert_close(_loss(model, ids, cfg), lm + 0.3 * mean.mean())
    assert model.router_aux_loss_coef == cfg.router_aux_coef  # put back after the step
