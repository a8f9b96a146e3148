import json

import pytest
import torch
from conftest import needs_reference
from tiny import prompts

from interventions.edits import intervene
from interventions.steering import (
    SteeringVector,
    build_vector,
    directional_ablation,
    evaluate_steering,
    from_direction,
    generate,
    word_logit_metric,
)
from probe import GatescopeError, Site, Tracer, load_model

POS = ["w1 w2 w3", "w4 w5 w6", "w7 w8"]
NEG = ["w1 w2 w9", "w4 w5 w10", "w7 w11"]


@pytest.mark.parametrize("method", ["actadd", "caa", "pca"])
def test_build_methods(model, method):
    vec = build_vector(model, method, POS, NEG, "resid_post.0")
    assert vec.direction.shape == (model.dims.d_model,) and vec.method == method
    if method == "pca":
        from interventions.steering import last_token_acts

        diffs = last_token_acts(model, POS, vec.site) - last_token_acts(model, NEG, vec.site)
        assert (diffs @ vec.direction).mean() > 0


def test_zero_coefficient_is_the_identity_also_when_generating(model):
    vec = build_vector(model, "caa", POS, NEG, "resid_post.1")
    batch = model.tokenize(prompts(2))
    base = model.run(batch)
    with intervene(model, vec.edit(0.0)):
        assert torch.equal(model.run(batch), base)
    plain = generate(model, "w1 w2 w3", max_new_tokens=6)
    assert generate(model, "w1 w2 w3", vec, coef=0.0, max_new_tokens=6) == plain
    steered = generate(model, "w1 w2 w3", vec, coef=50.0, max_new_tokens=6, positions="generated")
    assert steered != plain


def test_generated_positions_leave_the_prompt_alone(model):
    vec = SteeringVector(torch.randn(model.dims.d_model) * 10, Site("resid_post", 0))
    seen = []
    with intervene(model, vec.edit(1.0, positions="generated")):
        with Tracer(model, "resid_post.1") as tr:
            generate(model, "w1 w2 w3 w4", None, max_new_tokens=3)
        seen = tr.passes("resid_post.1")
    with Tracer(model, "resid_post.1") as plain:
        model.run("w1 w2 w3 w4")
    assert torch.equal(seen[0], plain["resid_post.1"])  # the prompt pass is unsteered
    assert len(seen) == 3


def test_directional_ablation_leaves_no_component(model):
    r = torch.randn(model.dims.d_model)
    r_hat = r / r.norm()
    with intervene(model, directional_ablation(model, r)):
        with Tracer(model, ["resid_pre.*", "resid_mid.*", "resid_post.*"]) as tr:
            model.run(prompts(2))
    for site, value in tr.activations.items():
        assert (value @ r_hat).abs().max() < 1e-4, site


def test_save_load_round_trip_and_checks(model, tiny_model, tmp_path, caplog):
    vec = build_vector(model, "caa", POS, NEG, "resid_post.1")
    path = vec.save(tmp_path / "v")
    back = SteeringVector.load(path, model)
    assert torch.equal(back.direction, vec.direction) and back.site == vec.site
    assert back.provenance == vec.provenance and back.method == "caa"
    other = tiny_model("llama", name="another")
    SteeringVector.load(path, other)
    assert "built on" in caplog.text
    wide = SteeringVector(torch.ones(7), Site("resid_post", 0))
    with pytest.raises(GatescopeError, match="does not fit"):
        wide.check(model)
    with pytest.raises(GatescopeError, match="expected NAME.safetensors"):
        SteeringVector.load(tmp_path / "missing", model)
    with pytest.raises(GatescopeError, match="unknown"):
        build_vector(model, "magic", POS, NEG, "resid_post.0")
    with pytest.raises(GatescopeError, match="same number"):
        build_vector(model, "caa", POS, NEG[:1], "resid_post.0")
    assert from_direction(torch.ones(model.dims.d_model), "resid_pre.1", model).site.layer == 1


def test_evaluation_against_random_vectors(model):
    vec = build_vector(model, "caa", POS, NEG, "resid_post.1")
    metric = word_logit_metric(model, ["w3", "w6"], ["w9", "w10"])
    result = evaluate_steering(model, vec, prompts(3), metric, coefs=(0, 1, 2), n_random=3)
    assert len(result.random) == 3 and len(result.vector) == 3
    assert result.vector[0] == pytest.approx(result.random[0][0])
    assert len(result.figure().data) == 4


def test_generation_without_a_cache_matches_the_cached_one(model):
    """'generated' positions are found from the prompt length, with or without a KV cache."""
    vec = SteeringVector(torch.randn(model.dims.d_model) * 20, Site("resid_post", 0))
    batch = model.tokenize("w1 w2 w3")
    outs = []
    for cache in (True, False):
        with intervene(model, vec.edit(1.0, "generated", batch.input_ids.shape[1])):
            outs.append(
                model.hf.generate(
                    batch.input_ids,
                    attention_mask=batch.attention_mask,
                    max_new_tokens=5,
                    do_sample=False,
                    use_cache=cache,
                    pad_token_id=0,
                )
            )
    assert torch.equal(outs[0], outs[1])


def test_bad_vectors_are_refused(model):
    with pytest.raises(GatescopeError, match="not a finite"):
        generate(
            model,
            "w1 w2",
            SteeringVector(torch.ones(model.dims.d_model), "resid_post.0"),
            coef=float("nan"),
        )
    with pytest.raises(GatescopeError, match="width"):
        generate(model, "w1 w2", SteeringVector(torch.ones(5), Site("resid_post", 0)), coef=1.0)


def test_provenance_fingerprint(model, tiny_model, tmp_path, caplog):
    vec = build_vector(model, "caa", POS, NEG, "resid_post.1", data="pairs.jsonl")
    assert vec.provenance["data"] == "pairs.jsonl" and vec.provenance["fingerprint"]
    path = vec.save(tmp_path / "v")
    same = tiny_model("qwen3_next", name="renamed")
    with caplog.at_level("WARNING"):
        SteeringVector.load(path, same)  # same weights under another name: no warning
    assert "built on" not in caplog.text
    other = tiny_model("qwen3_next", seed=5)
    with caplog.at_level("WARNING"):
        SteeringVector.load(path, other)
    assert "other weights" in caplog.text
    path.with_suffix(".json").write_text("{}")
    with pytest.raises(GatescopeError, match="not a gatescope steering vector"):
        SteeringVector.load(path)
    with pytest.raises(GatescopeError, match="zero or not finite"):
        build_vector(model, "caa", POS[:1], POS[:1], "resid_post.0")
    result = evaluate_steering(
        model, vec, prompts(2), word_logit_metric(model, ["w3"], ["w9"]), (0, 1), n_random=2
    )
    assert json.loads(result.to_json())["site"] == "resid_post.1"


@needs_reference
def test_sentiment_steering_on_the_reference_model():
    """The figure: the metric rises with the coefficient and beats 10 random controls."""
    from probe.tasks import TASKS_DIR, load_texts

    ref = load_model("reference")
    rows = [json.loads(x) for x in (TASKS_DIR / "sentiment_pairs.jsonl").read_text().splitlines()]
    pos, neg = [r["positive"] for r in rows], [r["negative"] for r in rows]
    caa = build_vector(ref, "caa", pos, neg, "resid_post.2")
    pca = build_vector(ref, "pca", pos, neg, "resid_post.2")
    cos = torch.nn.functional.cosine_similarity(caa.direction, pca.direction, dim=0)
    assert cos > 0.8, f"PCA and CAA directions disagree (cosine {float(cos):.2f})"
    words = json.loads((TASKS_DIR / "sentiment_words.json").read_text())
    metric = word_logit_metric(ref, words["positive"], words["negative"])
    result = evaluate_steering(ref, caa, load_texts("sentiment_prompts"), metric, (-1, 0, 1, 2))
    assert all(a < b for a, b in zip(result.vector, result.vector[1:], strict=False))
    assert len(result.random) == 10 and result.beats_random_at(1.0)
