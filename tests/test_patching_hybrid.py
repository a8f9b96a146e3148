"""Resumed passes on hybrid (Gated-DeltaNet + attention) and MoE models, memory-bounded
sweeps, and reduced precision."""

import logging

import pytest
import torch
from tiny import late_task as _late_task
from tiny import qwen3_next_config, tiny_hf, tiny_tokenizer

from interventions.passes import forget_verdict
from interventions.patching import activation_patching
from probe import GatescopeError, load_model

KINDS = "head_out.1,attn_gate.1,resid_pre.*,mlp_out.*,resid_mid.0"


def _hybrid(dtype=torch.float32):
    """Layer 0 Gated DeltaNet, layer 1 gated attention, both with a routed MoE block."""
    cfg = qwen3_next_config(
        layer_types=["linear_attention", "full_attention"],
        num_experts=4,
        num_experts_per_tok=2,
        mlp_only_layers=[],
        moe_intermediate_size=32,
        shared_expert_intermediate_size=32,
        decoder_sparse_step=1,
    )
    return load_model(tiny_hf("qwen3_next", config=cfg).to(dtype), tokenizer=tiny_tokenizer())


@pytest.fixture(scope="module")
def hybrid():
    return _hybrid()


def _effects(result):
    return [c.effect for c in result.components]


@pytest.mark.parametrize("mode", ["denoise", "noise"])
def test_resumed_equals_full_on_a_hybrid_moe_model(hybrid, mode, caplog):
    from probe.resume import ResumablePass

    kinds = [type(layer.mlp).__name__ for layer in ResumablePass(
        hybrid, torch.ones(1, 3, dtype=torch.long), torch.ones(1, 3, dtype=torch.long), 1
    ).layers]  # fmt: skip
    assert kinds == ["Qwen3NextSparseMoeBlock"] * 2
    task = _late_task()
    for positions in (None, "each"):
        fast = activation_patching(hybrid, task, KINDS, positions=positions, mode=mode,
                                   progress=False)  # fmt: skip
        with caplog.at_level(logging.INFO, logger="interventions.passes"):
            slow = activation_patching(hybrid, task, KINDS, positions=positions, mode=mode,
                                       resume=False, progress=False)  # fmt: skip
        assert fast.resumed and fast.resume_reason == "" and fast.shared_prefix == 5
        assert not slow.resumed and "full passes: resume=False" in caplog.text
        assert fast.clean_logit_diff == pytest.approx(slow.clean_logit_diff, abs=1e-4)
        for a, b in zip(fast.components, slow.components, strict=True):
            assert a.label == b.label and a.effect == pytest.approx(b.effect, abs=1e-4), a.label


def test_the_prefix_states_of_a_deltanet_layer_are_tiled(hybrid):
    """The linear-attention layer's convolution and recurrent states after the prefix are
    the model's own (a full pass over the prefix), row by row after tiling."""
    from probe.resume import ResumablePass, select_cache_rows

    batch = _late_task(3).tokenize(hybrid.tokenizer)
    rp = ResumablePass(hybrid, batch.corrupt_ids, batch.attention_mask, 5)
    layer = rp.cache.layers[0]
    conv, rec = layer.conv_states[0], layer.recurrent_states[0]
    assert conv is not None and rec is not None and conv.shape[0] == rec.shape[0] == 3
    out = hybrid.hf(batch.corrupt_ids[:, :5], use_cache=True)
    own = out.past_key_values.layers[0]
    assert torch.allclose(own.recurrent_states[0], rec, atol=1e-6)
    index = torch.tensor([2, 0, 1, 2])
    tiled = select_cache_rows(rp.cache, index).layers[0]
    assert torch.equal(tiled.recurrent_states[0], rec[index])
    assert torch.equal(tiled.conv_states[0], conv[index])
    assert layer.conv_states[0].shape[0] == 3  # the stored cache is unchanged


def test_a_tiny_memory_budget_gives_the_same_result(hybrid):
    task = _late_task()
    free = activation_patching(hybrid, task, KINDS, positions="each", progress=False)
    n, held, per_row = len(task), free.memory["held"], free.memory["per_row"]
    assert free.rows_per_pass > 2 * n and free.peak_memory == held + free.rows_per_pass * per_row
    budget = held + n * per_row + per_row // 2  # room for one component's rows only
    tight = activation_patching(hybrid, task, KINDS, positions="each", max_memory=budget,
                                progress=False)  # fmt: skip
    assert tight.rows_per_pass == n and tight.peak_memory <= budget
    assert _effects(tight) == pytest.approx(_effects(free), abs=1e-5)
    with pytest.raises(GatescopeError, match="cannot hold one patched component"):
        activation_patching(hybrid, task, KINDS, max_memory=1000, progress=False)
    with pytest.raises(GatescopeError, match="is not a size"):
        activation_patching(hybrid, task, KINDS, max_memory="lots", progress=False)
    assert activation_patching(hybrid, task, "resid_pre.1", max_memory="4GB",
                               progress=False).resumed  # fmt: skip


def _patched_logit_diffs(result):
    span = result.clean_logit_diff - result.corrupt_logit_diff
    base = result.corrupt_logit_diff if result.mode == "denoise" else result.clean_logit_diff
    return [base + c.effect * span for c in result.components]


@pytest.mark.slow
def test_bf16_on_cpu_is_within_1e_2_of_float32():
    """The patched mean logit differences (the metric before normalisation, float32 sums)."""
    task = _late_task()
    kinds = "head_out.1,resid_pre.*,mlp_out.1"
    f32 = activation_patching(_hybrid(), task, kinds, progress=False)
    low = _hybrid(torch.bfloat16)
    bf16 = activation_patching(low, task, kinds, progress=False)
    assert bf16.resumed or bf16.resume_reason
    assert bf16.clean_logit_diff == pytest.approx(f32.clean_logit_diff, abs=1e-2)
    assert _patched_logit_diffs(bf16) == pytest.approx(_patched_logit_diffs(f32), abs=1e-2)
    forget_verdict(low)
