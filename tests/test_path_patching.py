"""Path patching on a model that is linear apart from attention with constant patterns."""

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


def test_paths_of_a_sender_sum_to_its_patching_effect():
    # linear: a sender's change splits over the first receiver each path reaches (the
    # logits directly, or a later head's q / k / v, whose own effect runs downstream)
    model, task = _linear(), _task2()
    heads = [f"head.{i}.{h}" for i in range(2) for h in range(4)]
    receivers = ["logits"] + [f"{r}.{c}" for r in heads for c in "qkv"]
    senders = ["embed", *heads[:4]]
    result = path_patching(model, task, senders, receivers)
    patched = activation_patching(model, task, "resid_pre.0,head_out.0", progress=False)
    total = {"embed": patched.components[0].effect}
    total.update({f"head.0.{c.head}": c.effect for c in patched.components[1:]})
    for s in senders:
        paths = result.effects[s]
        assert s == "embed" or "head.0.1.v" not in paths  # receivers downstream only
        assert sum(paths.values()) == pytest.approx(total[s], abs=1e-4)
        assert all(abs(paths[r]) < 1e-6 for r in paths if r[-1] in "qk")  # q = k = 0
    assert abs(result.effects["embed"]["head.1.2.v"]) > 1e-3  # not all on one path


def test_bad_names_are_refused():
    model, task = _linear(1), _task2()
    with pytest.raises(GatescopeError, match="sender 'head.3.0'"):
        path_patching(model, task, ["head.3.0"], ["logits"])
    with pytest.raises(GatescopeError, match="receiver 'head.0.1.x'"):
        path_patching(model, task, ["embed"], ["head.0.1.x"])
