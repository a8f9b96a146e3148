import json

import pytest
import torch
from conftest import needs_reference
from tiny import late_task, toy_task

from interventions.edits import Patch, intervene
from interventions.patching import activation_patching
from probe import GatescopeError, Tracer, load_model
from probe.tasks import Task, logit_diff


def test_patching_every_position_of_resid_pre_0_gives_the_corrupt_run(model):
    task = toy_task()
    batch = task.tokenize(model.tokenizer)
    with Tracer(model, "resid_pre.0") as tr:
        corrupt = model.forward(batch.corrupt_ids, batch.attention_mask)
    with intervene(model, Patch("resid_pre.0", source=tr["resid_pre.0"])):
        patched = model.forward(batch.clean_ids, batch.attention_mask)
    assert torch.equal(patched, corrupt)
    noise = activation_patching(model, task, "resid_pre.0", mode="noise", progress=False)
    assert noise.components[0].effect == pytest.approx(-1.0, abs=1e-5)
    denoise = activation_patching(model, task, "resid_pre.0", progress=False)
    assert denoise.components[0].effect == pytest.approx(1.0, abs=1e-5)


def test_batched_sweep_equals_one_by_one(model):
    task = toy_task()
    sites = "head_out.*,attn_gate.1,mlp_out.0"
    batched = activation_patching(model, task, sites, positions="each", progress=False)
    single = activation_patching(model, task, sites, positions="each", batch_rows=1, progress=False)
    assert len(batched.components) == 2 * 4 * 6 + 4 * 6 + 6
    for a, b in zip(batched.components, single.components, strict=True):
        assert a.label == b.label and a.effect == pytest.approx(b.effect, abs=1e-5)


def test_head_effects_match_a_direct_patch(model):
    task = toy_task()
    result = activation_patching(model, task, "head_out.1", progress=False)
    batch = task.tokenize(model.tokenizer)
    with Tracer(model, "head_out.1.3") as tr:
        model.forward(batch.clean_ids, batch.attention_mask)
    with torch.no_grad(), intervene(model, Patch("head_out.1.3", source=tr["head_out.1.3"])):
        ld = logit_diff(model.forward(batch.corrupt_ids, batch.attention_mask), batch).mean()
    c = result.components[3]
    expected = (float(ld) - result.corrupt_logit_diff) / (
        result.clean_logit_diff - result.corrupt_logit_diff
    )
    assert c.head == 3 and c.effect == pytest.approx(expected, abs=1e-5)
    rows, cols, values = result.grid("head_out")
    assert rows == ["L1"] and len(cols) == 4 and values[0][3] == c.effect
    assert json.loads(result.to_json())["mode"] == "denoise"
    assert result.figure("head_out").data[0].type == "heatmap"


def test_bad_input(model):
    with pytest.raises(GatescopeError, match="choose one of denoise, noise"):
        activation_patching(model, toy_task(), "resid_pre.0", mode="sideways")
    with pytest.raises(GatescopeError, match="read-only"):
        activation_patching(model, toy_task(), "attn_pattern.0")
    same = Task("same", ["w1 w2"], ["w1 w2"], ["w3"], ["w4"])
    with pytest.raises(GatescopeError, match="same logit difference"):
        activation_patching(model, same, "resid_pre.0")


def test_noising_batched_equals_one_by_one_and_effects_are_normalised(model):
    task = toy_task()
    a = activation_patching(model, task, "attn_gate.*", mode="noise", progress=False)
    b = activation_patching(model, task, "attn_gate.*", mode="noise", batch_rows=4, progress=False)
    assert [c.effect for c in a.components] == pytest.approx([c.effect for c in b.components])
    full = activation_patching(model, task, "resid_post.1", mode="noise", progress=False)
    assert full.components[0].effect == pytest.approx(-1.0, abs=1e-4)


def test_unequal_lengths_and_bad_answers_are_refused(model):
    uneven = Task("uneven", ["w1 w2 w3"], ["w1 w2"], ["w4"], ["w5"])
    with pytest.raises(GatescopeError, match="equal lengths"):
        activation_patching(model, uneven, "resid_pre.0", progress=False)
    multi = Task("multi", ["w1 w2"], ["w2 w1"], ["w4 w5"], ["w6"])
    with pytest.raises(GatescopeError, match="single token|one token"):
        activation_patching(model, multi, "resid_pre.0", progress=False)
    with pytest.raises(GatescopeError, match="out of range"):
        activation_patching(model, toy_task(), "resid_pre.0", positions=[40], progress=False)


def test_grid_of_heads_by_position(model):
    task = toy_task(2)
    result = activation_patching(model, task, "head_out.1", positions=[0, -1], progress=False)
    grid = result.grid("head_out")
    assert grid.rows == [f"L1.H{h}" for h in range(4)] and grid.cols == ["pos 0", "pos 5"]
    by_label = {c.label: c.effect for c in result.components}
    assert grid.values[2][1] == by_label["head_out.1.2@5"]
    assert json.loads(json.dumps(grid.to_dict()))["cols"] == grid.cols
    with pytest.raises(GatescopeError, match="no mlp_out components"):
        result.grid("mlp_out")


def test_head_dla_on_a_layernorm_conv1d_model(tiny_model):
    """GPT-2: o_proj is a Conv1D (weight stored transposed) and the final norm centres."""
    from interventions.heads import direct_logit_attribution

    gpt2 = tiny_model("gpt2")
    task = toy_task()
    dla = direct_logit_attribution(gpt2, task)
    batch = task.tokenize(gpt2.tokenizer)
    last = gpt2.dims.n_layers - 1
    with (
        torch.no_grad(),
        Tracer(gpt2, [f"attn_out.{last}", f"resid_post.{last}"], positions=[-1]) as tr,
    ):
        gpt2.forward(batch.clean_ids, batch.attention_mask)
    x, attn = tr[f"resid_post.{last}"][:, 0], tr[f"attn_out.{last}"][:, 0]
    ln, c_proj = gpt2.hf.transformer.ln_f, gpt2.hf.transformer.h[last].attn.c_proj
    c = attn - c_proj.bias
    std = (x.var(-1, unbiased=False, keepdim=True) + ln.eps).sqrt()
    w_u = gpt2.hf.lm_head.weight
    direction = w_u[batch.answer_ids] - w_u[batch.wrong_ids]
    expected = ((ln.weight * (c - c.mean(-1, keepdim=True)) / std) * direction).sum(-1).mean()
    assert sum(dla.scores[last]) == pytest.approx(float(expected.detach()), abs=1e-4)


@needs_reference
def test_ioi_head_and_gate_patching_on_the_reference_model():
    """The figure: some head restores most of the IOI behaviour; patching its gate alone
    restores less than patching the whole head output."""
    from probe.tasks import load_task

    ref = load_model("reference")
    task = load_task("ioi").subset(24)
    heads = activation_patching(ref, task, "head_out.*", progress=False)
    gates = activation_patching(ref, task, "attn_gate.*", progress=False)
    assert heads.clean_logit_diff > 0 > heads.corrupt_logit_diff
    top = heads.top(1)[0]
    assert top.effect > 0.5, f"no head restores the behaviour: {top.label} {top.effect:.2f}"
    gate = next(c for c in gates.components if (c.layer, c.head) == (top.layer, top.head))
    assert abs(gate.effect) < top.effect
    assert json.loads(gates.to_json())["components"][0]["kind"] == "attn_gate"


def test_interchange_null_keeps_token_lengths(model):
    from interventions.heads import _within_length_perms, interchange_test

    lengths = torch.tensor([5, 7, 5, 7, 7, 9])
    for perm in _within_length_perms(lengths, 5, seed=1):
        assert torch.equal(lengths[perm], lengths) and sorted(perm.tolist()) == list(range(6))
    lonely = Task(
        "lonely", ["w1 w2", "w3 w4 w5"], ["w2 w1", "w4 w3 w5"], ["w6", "w7"], ["w8", "w9"]
    )
    with pytest.raises(GatescopeError, match="2 prompts of one token length"):
        interchange_test(model, lonely, n_null=3)


@pytest.mark.parametrize("family", ["qwen3_next", "llama", "gemma3_text", "gpt2"])
@pytest.mark.parametrize("mode", ["denoise", "noise"])
def test_resumed_sweep_equals_full_passes(family, mode, tiny_model):
    """Passes started at their layer after the shared prefix give the full passes' effects."""
    m = tiny_model(family)
    task = late_task()
    kinds = "head_out.*,resid_pre.*,resid_mid.1,mlp_out.0"
    if m.is_gated:
        kinds += ",attn_gate.*"
    for positions in (None, "each"):
        fast = activation_patching(m, task, kinds, positions=positions, mode=mode, progress=False)
        slow = activation_patching(
            m, task, kinds, positions=positions, mode=mode, resume=False, progress=False
        )
        assert fast.shared_prefix == 5 and fast.resumed and not slow.resumed
        assert fast.clean_logit_diff == pytest.approx(slow.clean_logit_diff, abs=1e-4)
        for a, b in zip(fast.components, slow.components, strict=True):
            assert a.label == b.label and a.effect == pytest.approx(b.effect, abs=1e-4), a.label
        before = [c.effect for c in fast.components if c.position is not None and c.position < 5]
        assert before == [0.0] * len(before) and (positions is None or before)


def test_resumed_sweep_of_one_prompt_and_a_mismatch_falls_back(model, monkeypatch):
    from probe.resume import ResumablePass

    one = late_task(1)
    a = activation_patching(model, one, "head_out.*", progress=False)
    b = activation_patching(model, one, "head_out.*", resume=False, progress=False)
    assert a.resumed and [c.effect for c in a.components] == pytest.approx(
        [c.effect for c in b.components], abs=1e-4
    )
    run = ResumablePass.run

    def off_by_a_bit(self, *args, **kwargs):
        return run(self, *args, **kwargs) + 1e-2

    from interventions.passes import forget_verdict, resume_verdict

    assert resume_verdict(model) == (True, "")  # checked once, kept for the next sweeps
    monkeypatch.setattr(ResumablePass, "run", off_by_a_bit)
    task = late_task()
    fallback = activation_patching(model, task, "head_out.*", progress=False)
    full = activation_patching(model, task, "head_out.*", resume=False, progress=False)
    assert not fallback.resumed and resume_verdict(model)[0] is False
    assert "differed from the base run" in fallback.resume_reason
    assert full.resume_reason == "resume=False"
    assert [c.effect for c in fallback.components] == [c.effect for c in full.components]
    again = activation_patching(model, task, "head_out.*", progress=False)
    assert not again.resumed and "kept from an earlier check" in again.resume_reason
    forget_verdict(model)
