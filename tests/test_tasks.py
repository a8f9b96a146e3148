"""Task loading, tokenization, the logit-difference metric, text sets and bad input."""

import json

import pytest
import torch
from conftest import needs_reference
from tiny import tiny_hf, tiny_tokenizer

from probe import GatescopeError, load_model
from probe.tasks import BUNDLED_TASKS, Task, load_task, load_texts, logit_diff


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_bundled_tasks_load_from_any_directory(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    for name in BUNDLED_TASKS:
        task = load_task(name)
        assert len(task) > 10 and task.name == name
    assert len(load_texts("concept_sport")) == 50
    randoms = [load_texts(f"random_{i}") for i in range(12)]
    assert all(len(r) >= 30 for r in randoms) and len({tuple(r) for r in randoms}) == 12


@needs_reference
@pytest.mark.parametrize("name", BUNDLED_TASKS)
def test_bundled_tasks_tokenize_with_the_reference_tokenizer(name):
    from transformers import AutoTokenizer

    from probe.reference import reference_path

    tok = AutoTokenizer.from_pretrained(reference_path("reference"))
    batch = load_task(name).tokenize(tok)
    n, width = batch.clean_ids.shape
    assert batch.corrupt_ids.shape == (n, width) and batch.wrong_ids.shape == (n,)
    assert bool((batch.clean_ids != batch.corrupt_ids).any(1).all())  # every pair differs
    assert bool((batch.answer_ids != batch.wrong_ids).all())


def test_tokenize_and_logit_diff(tmp_path):
    tok = tiny_tokenizer()
    path = _write(
        tmp_path / "t.jsonl",
        [
            {"clean": "w1 w2 w3", "corrupt": "w4 w2 w3", "answer": "w5", "wrong": "w6"},
            {"clean": "w7 w8", "corrupt": "w9 w8", "answer": "w10", "wrong": "w11"},
        ],
    )
    batch = load_task(path).tokenize(tok)
    assert batch.clean_ids.shape == (2, 3) and batch.lengths.tolist() == [3, 2]
    model = load_model(tiny_hf("llama"), tokenizer=tok)
    logits = model.run(["w1 w2 w3", "w7 w8"])
    ld = logit_diff(logits, batch)
    last = logits[1, 1]
    assert torch.isclose(
        ld[1], last[tok.convert_tokens_to_ids("w10")] - last[tok.convert_tokens_to_ids("w11")]
    )


@pytest.mark.parametrize(
    "row, message",
    [
        (
            {"clean": "w1 w2 w3", "corrupt": "w4 w2", "answer": "w5", "wrong": "w6"},
            "3 tokens and the corrupt prompt 2",
        ),
        (
            {"clean": "w1 w2", "corrupt": "w4 w2", "answer": "w5 w6", "wrong": "w6"},
            "not a single token",
        ),
    ],
)
def test_bad_rows(tmp_path, row, message):
    task = load_task(_write(tmp_path / "bad.jsonl", [row]))
    with pytest.raises(GatescopeError, match=message):
        task.tokenize(tiny_tokenizer())


def test_bad_files(tmp_path):
    with pytest.raises(GatescopeError, match="no such file"):
        load_task(tmp_path / "missing.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(GatescopeError, match="empty"):
        load_task(tmp_path / "empty.jsonl")
    _write(tmp_path / "partial.jsonl", [{"clean": "a", "answer": "b"}])
    with pytest.raises(GatescopeError, match="missing corrupt, wrong"):
        load_task(tmp_path / "partial.jsonl")
    with pytest.raises(GatescopeError, match="bundled: .*ioi"):
        load_task("no_such_task")
    with pytest.raises(GatescopeError, match="same number of rows"):
        Task("x", ["a"], [], ["b"], ["c"])


def test_text_sets_need_a_text_field(tmp_path):
    path = _write(tmp_path / "texts.jsonl", [{"text": "one"}, {"sentence": "two"}])
    with pytest.raises(GatescopeError, match="needs a 'text' field"):
        load_texts(path)
    assert load_texts(_write(tmp_path / "ok.jsonl", [{"text": "one"}])) == ["one"]
    with pytest.raises(GatescopeError, match="not valid JSON"):
        (tmp_path / "broken.jsonl").write_text('{"text": "one"\n')
        load_texts(tmp_path / "broken.jsonl")
