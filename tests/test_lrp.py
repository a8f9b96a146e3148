"""LRP rules: relevance conservation on bias-free models, and no trace after the context."""

import pytest
import torch
from tiny import prompts, tiny_hf, tiny_tokenizer

from circuits.lrp import lrp_rules
from probe import GatescopeError, load_model


def _relevance_at_embeddings(model, gate_rule):
    batch = model.tokenize(["w1 w2 w3 w4 w5 w6"])
    store = {}

    def leaf(module, args, output):
        store["e"] = output.detach().requires_grad_(True)
        return store["e"]

    handle = model.module(model.family.embed).register_forward_hook(leaf)
    try:
        with lrp_rules(model, gate_rule):
            target = model.forward(batch.input_ids, batch.attention_mask)[0, -1, 7]
            target.backward()
    finally:
        handle.remove()
    return float(target.detach()), float((store["e"] * store["e"].grad).sum().detach())


@pytest.mark.parametrize("name", ["qwen3_next", "llama", "gemma2"])
@pytest.mark.parametrize("gate_rule", ["half", "constant"])
def test_relevance_is_conserved_on_bias_free_models(name, gate_rule):
    # Every rule passes relevance on unchanged (frozen norm scale and constant attention make
    # those steps linear; the identity and half rules split it exactly), these models have no
    # biases, and nothing is absorbed elsewhere: only float32 rounding remains. The attention
    # probabilities' normalisation eps and RMSNorm eps are inside frozen scales. Tolerance
    # 1e-4 relative to max(1, |logit|).
    model = load_model(tiny_hf(name), tokenizer=tiny_tokenizer())
    logit, relevance = _relevance_at_embeddings(model, gate_rule)
    assert abs(logit - relevance) <= 1e-4 * max(1.0, abs(logit))


def test_rules_change_gradients_but_not_values():
    model = load_model(tiny_hf("qwen3_next"), tokenizer=tiny_tokenizer())
    batch = model.tokenize(prompts(2))

    def run():
        model.hf.zero_grad()
        logits = model.forward(batch.input_ids, batch.attention_mask)
        logits[:, -1, 5].sum().backward()
        return logits.detach(), model.hf.model.embed_tokens.weight.grad.clone()

    before_logits, before_grad = run()
    with lrp_rules(model):
        during_logits, during_grad = run()
    after_logits, after_grad = run()
    torch.testing.assert_close(during_logits, before_logits, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(during_grad, before_grad)
    assert torch.equal(after_logits, before_logits) and torch.equal(after_grad, before_grad)
    assert model.hf.config._attn_implementation == "eager"
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.hf.modules()) == 0


def test_rules_are_removed_on_error_and_bad_rule_refused():
    model = load_model(tiny_hf("llama"), tokenizer=tiny_tokenizer())
    with pytest.raises(RuntimeError):
        with lrp_rules(model):
            raise RuntimeError("x")
    assert sum(len(m._forward_hooks) for m in model.hf.modules()) == 0
    with pytest.raises(GatescopeError, match="half or constant"):
        with lrp_rules(model, "third"):
            pass


@pytest.mark.parametrize("glu_rule, share", [("half", 0.5), ("gradient", 1.0)])
def test_glu_rule_sets_the_linear_branch_coefficient(glu_rule, share):
    # h = act(gate) * up: under the plain gradient d h / d up = act(gate); the half rule
    # passes half of it (each factor receives half the relevance)
    from probe.hooks import hook_sites
    from probe.sites import Site

    model = load_model(tiny_hf("llama"), tokenizer=tiny_tokenizer())
    batch = model.tokenize(prompts(2))
    seen = {}

    def leaf(value, info):
        seen["up"] = value.detach().requires_grad_(True)
        return seen["up"]

    def read(value, info):
        seen["act"] = value.detach()
        return value

    def arriving(value, info):  # the product as the rest of the model sees it
        value.retain_grad()
        seen["h"] = value
        return value

    entries = [(Site("mlp_up", 1), leaf), (Site("mlp_gate", 1), read)]
    entries.append((Site("mlp_hidden", 1), arriving))
    with lrp_rules(model, glu_rule=glu_rule), hook_sites(model, entries, write=True):
        logits = model.forward(batch.input_ids, batch.attention_mask)
        logits[:, -1, 3].sum().backward()
    expected = share * seen["act"] * seen["h"].grad
    torch.testing.assert_close(seen["up"].grad, expected, rtol=1e-4, atol=1e-7)


def test_unknown_glu_rule_is_refused():
    model = load_model(tiny_hf("llama"), tokenizer=tiny_tokenizer())
    with pytest.raises(GatescopeError, match="GLU rule 'full' is unknown; choose half or gradient"):
        with lrp_rules(model, glu_rule="full"):
            pass
