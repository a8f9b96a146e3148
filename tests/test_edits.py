import math

import pytest
import torch
from tiny import prompts

from interventions.edits import (
    Ablate,
    Add,
    ClampGate,
    Patch,
    ProjectOut,
    Rotate,
    ScaleGate,
    intervene,
)
from probe import GatescopeError, Site, Tracer


def test_patch_clean_into_clean_changes_nothing(model):
    batch = model.tokenize(prompts(3, seed=4))
    with Tracer(model, ["resid_mid.1", "head_out.0", "attn_gate.1"]) as tr:
        clean = model.run(batch)
    edits = [Patch(s, source=tr[s]) for s in ("resid_mid.1", "head_out.0", "attn_gate.1")]
    with intervene(model, edits):
        assert torch.equal(model.run(batch), clean)


def test_clamping_a_gate_to_zero_equals_zeroing_the_head(model):
    batch = model.tokenize(prompts(2))
    with intervene(model, ClampGate("attn_gate.1.2", value=0.0)):
        clamped = model.run(batch)
    with intervene(model, Ablate("head_out.1.2")):
        zeroed = model.run(batch)
    assert torch.equal(clamped, zeroed)
    with (
        intervene(model, ClampGate("attn_gate.1.2", value=1.0)),
        Tracer(model, "attn_gate.1") as tr,
    ):
        model.run(batch)
    assert torch.equal(tr["attn_gate.1"][:, :, 2], torch.ones_like(tr["attn_gate.1"][:, :, 2]))


def test_scaling_a_gate_scales_the_heads_it_gates(model):
    batch = model.tokenize(prompts(2))
    with Tracer(model, "head_out.0") as plain:
        base = model.run(batch)
    with intervene(model, ScaleGate("attn_gate.0", factor=1.0)):
        assert torch.equal(model.run(batch), base)  # factor 1: the unedited run, bit for bit
    with (
        intervene(model, ScaleGate("attn_gate.0", factor=0.5)),
        Tracer(model, "head_out.0") as half,
    ):
        scaled = model.run(batch)
    # attention's output is value * sigmoid(gate) per element: halving the gate halves the
    # heads' outputs, and the logits are those of a run with halved head outputs written in
    torch.testing.assert_close(half["head_out.0"], 0.5 * plain["head_out.0"])
    with intervene(model, Patch("head_out.0", source=0.5 * plain["head_out.0"])):
        torch.testing.assert_close(model.run(batch), scaled)
    assert not torch.allclose(scaled, base, atol=1e-3)


def test_add_respects_positions_and_zero_is_identity(model):
    batch = model.tokenize(prompts(1))
    base = model.run(batch)
    vec = torch.randn(model.dims.d_model)
    with intervene(model, Add("resid_post.0", vector=vec, coef=0.0)):
        assert torch.equal(model.run(batch), base)
    with intervene(model, Add("resid_post.0", vector=vec, coef=3.0, positions=[-1])):
        moved = model.run(batch)
    assert torch.equal(moved[:, :-1], base[:, :-1]) and not torch.equal(moved[:, -1], base[:, -1])
    with pytest.raises(GatescopeError, match="not a finite number"):
        Add("resid_post.0", vector=vec, coef=math.nan)
    with pytest.raises(GatescopeError, match="width"):
        with intervene(model, Add("resid_post.0", vector=torch.ones(3))):
            model.run(batch)
    with pytest.raises(GatescopeError, match="out of range"):
        with intervene(model, Add("resid_post.0", vector=vec, positions=[99])):
            model.run(batch)


def test_project_out_and_rotation(model):
    batch = model.tokenize(prompts(2))
    r = torch.randn(model.dims.d_model)
    with (
        intervene(model, ProjectOut("resid_post.0", direction=r)),
        Tracer(model, "resid_post.0") as tr,
    ):
        model.run(batch)
    assert (tr["resid_post.0"] @ (r / r.norm())).abs().max() < 1e-5
    u, v = torch.randn(model.dims.d_model), torch.randn(model.dims.d_model)
    with Tracer(model, "resid_mid.1") as before:
        model.run(batch)
    with (
        intervene(model, Rotate("resid_mid.1", u=u, v=v, angle=0.7)),
        Tracer(model, "resid_mid.1") as after,
    ):
        model.run(batch)
    torch.testing.assert_close(
        before["resid_mid.1"].norm(dim=-1), after["resid_mid.1"].norm(dim=-1)
    )
    assert not torch.allclose(before["resid_mid.1"], after["resid_mid.1"])


def test_edits_are_removed_on_error(model):
    batch = model.tokenize(prompts(1))
    base = model.run(batch)
    with pytest.raises(RuntimeError):
        with intervene(model, Ablate("mlp_out.0")):
            raise RuntimeError("x")
    assert torch.equal(model.run(batch), base)
    with pytest.raises(GatescopeError, match="need a gate site"):
        ClampGate(Site("head_out", 0), value=0)


def test_gate_patch_per_head_from_another_run(model):
    clean, other = model.tokenize(prompts(2, seed=1)), model.tokenize(prompts(2, seed=2))
    with Tracer(model, ["attn_gate.1", "head_out.1"]) as src:
        model.run(other)
    with (
        intervene(model, Patch("attn_gate.1.2", source=src["attn_gate.1"][:, :, 2])),
        Tracer(model, "attn_gate.1") as tr,
    ):
        model.run(clean)
    torch.testing.assert_close(tr["attn_gate.1"][:, :, 2], src["attn_gate.1"][:, :, 2])
    with Tracer(model, "attn_gate.1") as base:
        model.run(clean)
    assert torch.equal(tr["attn_gate.1"][:, :, :2], base["attn_gate.1"][:, :, :2])


def test_prompt_and_generated_positions_without_a_cache(model):
    """No KV cache: every pass starts at 0, so the prompt length must be given."""
    batch = model.tokenize(prompts(1, length=6))
    base = model.run(batch)
    vec = torch.randn(model.dims.d_model) * 5
    with intervene(model, Add("resid_post.0", vector=vec, positions="generated", prompt_len=4)):
        out = model.run(batch)
    assert torch.equal(out[:, :4], base[:, :4]) and not torch.allclose(out[:, 4:], base[:, 4:])
    with intervene(model, Add("resid_post.0", vector=vec, positions="prompt", prompt_len=4)):
        out = model.run(batch)
    assert not torch.allclose(out[:, :4], base[:, :4])


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda d: Add("resid_post.0", vector=torch.ones(d), coef=math.inf), "not a finite"),
        (lambda d: Add("resid_post.0", vector=torch.full((d,), math.nan)), "NaN"),
        (lambda d: Add("resid_post.0"), "expected a vector"),
        (lambda d: ProjectOut("resid_post.0", direction=torch.zeros(d)), "zero vector"),
        (lambda d: ClampGate("attn_gate.0", value=1.5), r"outside \[0, 1\]"),
        (lambda d: ScaleGate("attn_gate.0", factor=-1.0), "negative"),
        (lambda d: Add("resid_post.0", vector=torch.ones(d), positions="later"), "expected None"),
    ],
)
def test_bad_edits_are_refused(model, make, match):
    with pytest.raises(GatescopeError, match=match):
        make(model.dims.d_model)
