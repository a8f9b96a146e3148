"""Path patching: a sender's paths add up to its patching effect where the layers after it
are linear apart from attention, with value paths (uniform attention) and with query and key
paths (a sharp softmax, each sender read through one channel)."""

import pytest
import torch
from tiny import attention_only as _attention_only
from tiny import replace_task as _task2

from circuits.path_patching import path_patching
from interventions.patching import activation_patching
from probe import GatescopeError


def _linear(layers: int = 2):
    """Identity norms, no MLP, q = k = 0: uniform attention, so every path is linear."""
    model = _attention_only(layers)
    with torch.no_grad():
        for layer in model.hf.model.layers:
            layer.self_attn.q_proj.weight.zero_()
            layer.self_attn.k_proj.weight.zero_()
    return model


def _patched(model, task) -> dict[str, float]:
    patched = activation_patching(model, task, "resid_pre.0,head_out.0", progress=False)
    return {str(c.site): c.effect for c in patched.components}


def test_paths_of_a_sender_sum_to_its_patching_effect():
    # linear: a sender's change splits over the first receiver each path reaches (the
    # logits directly, or a later head's q / k / v, whose own effect runs downstream)
    model, task = _linear(), _task2()
    heads = [f"head_out.{i}.{h}" for i in range(2) for h in range(4)]
    receivers = ["logits"] + [f"{r}.{c}" for r in heads for c in "qkv"]
    senders = ["resid_pre.0", "head_out.0.0", "head_out.0.3"]
    result = path_patching(model, task, senders, receivers)
    total = _patched(model, task)
    for s in senders:
        paths = result.effects[s]
        assert s == "resid_pre.0" or "head_out.0.1.v" not in paths  # downstream only
        assert sum(paths.values()) == pytest.approx(total[s], abs=1e-4)
        assert all(abs(paths[r]) < 1e-6 for r in paths if r[-1] in "qk")  # q = k = 0
    assert abs(result.effects["resid_pre.0"]["head_out.1.2.v"]) > 1e-3  # not all on one path


def _one_channel_each():
    """Two attention layers, identity norms, no MLP, a saturated softmax in layer 1; layer 1's
    query reads nothing of head 0.0's write and its key nothing of head 0.1's, its value
    neither: head 0.0 reaches layer 1 through keys only, head 0.1 through queries only."""
    model = _attention_only(2)
    first, second = model.hf.model.layers
    d = model.dims.d_head
    o = first.self_attn.o_proj.weight  # (d_model, H * d_head)

    def away_from(*heads):  # projector onto the complement of those heads' write spaces
        cols = torch.cat([o[:, h * d : (h + 1) * d] for h in heads], dim=1)
        q, _ = torch.linalg.qr(cols)
        return torch.eye(o.shape[0]) - q @ q.T

    with torch.no_grad():
        attn = second.self_attn
        attn.q_proj.weight.copy_(attn.q_proj.weight @ away_from(0))
        attn.k_proj.weight.copy_(attn.k_proj.weight @ away_from(1))
        attn.v_proj.weight.copy_(attn.v_proj.weight @ away_from(0, 1))
        attn.q_proj.weight.mul_(30.0)  # the unnormalised stream is small: most queries
        attn.k_proj.weight.mul_(30.0)  # now put (almost) all their weight on one key
    return model


def test_query_and_key_paths_sum_to_the_patching_effect():
    # each later head's output depends on the sender through one input only, and everything
    # after layer 1 is linear: the k (or q) paths plus the direct path are the whole effect,
    # through a saturating softmax (so the paths are far from their linear estimates)
    model, task = _one_channel_each(), _task2()
    receivers = ["logits"] + [f"head_out.1.{h}.{c}" for h in range(4) for c in "qkv"]
    result = path_patching(model, task, ["head_out.0.0", "head_out.0.1"], receivers)
    total = _patched(model, task)
    for sender, channel in (("head_out.0.0", "k"), ("head_out.0.1", "q")):
        paths = result.effects[sender]
        assert sum(paths.values()) == pytest.approx(total[sender], abs=1e-4)
        others = [v for r, v in paths.items() if r != "logits" and r[-1] != channel]
        assert max(abs(v) for v in others) < 1e-6
        through = [v for r, v in paths.items() if r[-1] == channel]
        assert max(abs(v) for v in through) > 1e-2, paths
        assert abs(paths["logits"] - total[sender]) > 1e-2  # not the direct path alone


def test_bad_names_are_refused():
    model, task = _linear(1), _task2()
    with pytest.raises(GatescopeError, match="sender 'head_out.3.0' is not a writer"):
        path_patching(model, task, ["head_out.3.0"], ["logits"])
    with pytest.raises(GatescopeError, match="receiver 'head_out.0.1.x'"):
        path_patching(model, task, ["resid_pre.0"], ["head_out.0.1.x"])
    with pytest.raises(GatescopeError, match="receiver 'head_out.0.1' is not a reader"):
        path_patching(model, task, ["resid_pre.0"], ["head_out.0.1"])
