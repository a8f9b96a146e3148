"""Family-specific behaviour: hybrid and MoE layers, Qwen3.5, TransformerLens, refusals."""

import pytest
import torch
import transformers as tf
from tiny import (
    LINEAR,
    _common,
    prompts,
    qwen3_next_config,
    save_tiny,
    tiny_hooked,
    tiny_tokenizer,
)

from probe import GatescopeError, Site, Tracer, load_model
from probe.families import supported_model_types


def _hybrid_moe():
    cfg = qwen3_next_config(
        layer_types=["linear_attention", "full_attention"],
        num_experts=4,
        num_experts_per_tok=2,
        mlp_only_layers=[],
        decoder_sparse_step=2,
        moe_intermediate_size=32,
        shared_expert_intermediate_size=32,
        **LINEAR,
    )
    torch.manual_seed(0)
    return load_model(tf.Qwen3NextForCausalLM(cfg).eval(), tokenizer=tiny_tokenizer())


def test_hybrid_layers_refuse_gate_sites_with_the_layers_that_have_them():
    model = _hybrid_moe()
    lacks_gate = r"layer 0 \(linear_attention.*no attn_gate.*exists on layers: 1"
    with pytest.raises(GatescopeError, match=lacks_gate):
        model.check_site(Site("attn_gate", 0))
    lacks_glu = r"layer 1 \(full_attention, moe MLP\) has no mlp_gate.*exists on layers: 0"
    with pytest.raises(GatescopeError, match=lacks_glu):
        model.check_site(Site("mlp_gate", 1))


def test_hybrid_model_traces_what_each_layer_has():
    model = _hybrid_moe()
    batch = model.tokenize(prompts(2))
    before = model.run(batch)
    with Tracer(
        model,
        [
            "resid_pre.*",
            "attn_out.*",
            "mlp_out.*",
            "resid_mid.*",
            "resid_post.*",
            "attn_gate.1",
            "mlp_gate.0",
        ],
    ) as tr:
        assert torch.equal(model.run(batch), before)
    for layer in (0, 1):
        get = lambda k, layer=layer: tr[Site(k, layer)]  # noqa: E731
        assert torch.equal(get("resid_pre") + get("attn_out"), get("resid_mid"))
        assert torch.equal(get("resid_mid") + get("mlp_out"), get("resid_post"))


def test_qwen3_5_text_model_has_the_gate():
    cfg = tf.Qwen3_5TextConfig(
        **_common(layer_types=["linear_attention", "full_attention"], **LINEAR)
    )
    model = load_model(tf.Qwen3_5ForCausalLM(cfg).eval(), tokenizer=tiny_tokenizer())
    assert model.family.name == "qwen3_5" and model.is_gated
    with Tracer(model, ["attn_gate.1", "mlp_gate.*"]) as tr:
        model.run(prompts(1))
    assert tr["attn_gate.1"].shape[-2:] == (model.dims.n_heads, model.dims.d_head)


def _hooked_transformer(gated: bool):
    return load_model(tiny_hooked(gated), tokenizer=tiny_tokenizer())


@pytest.mark.parametrize("gated", [True, False])
def test_hooked_transformer_family(gated):
    model = _hooked_transformer(gated)
    assert model.family.name == "hooked_transformer"
    assert ("mlp_up" in model.kinds) == gated
    batch = model.tokenize(prompts(2))
    before = model.run(batch)
    with Tracer(model, [f"{k}.*" for k in model.kinds]) as tr:
        assert torch.equal(model.run(batch), before)
    get = lambda k: tr[Site(k, 1)]  # noqa: E731
    torch.testing.assert_close(get("resid_pre") + get("attn_out"), get("resid_mid"))
    assert get("head_out").shape[2:] == (4, 16)
    if gated:
        hidden = torch.nn.functional.silu(get("mlp_gate_pre")) * get("mlp_up")
        torch.testing.assert_close(hidden, get("mlp_hidden"))


def test_unsupported_architecture_lists_supported_ones():
    cfg = tf.BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
    )
    with pytest.raises(GatescopeError, match="unsupported architecture.*qwen3_next"):
        load_model(tf.BertModel(cfg))
    assert "qwen3_next" in supported_model_types() and "gpt2" in supported_model_types()


def test_unsupported_config_flag_is_refused():
    cfg = tf.LlamaConfig(**_common(mlp_bias=True))
    with pytest.raises(GatescopeError, match="mlp_bias=True"):
        load_model(tf.LlamaForCausalLM(cfg))


def test_load_from_local_directory(tmp_path, tiny_model):
    save_tiny(tmp_path / "m", "qwen3_next")
    model = load_model(tmp_path / "m")
    assert model.family.name == "qwen3_next" and model.tokenizer is not None
    assert not model.hf.training
    original = tiny_model("qwen3_next")
    torch.testing.assert_close(model.run(prompts(1)), original.run(prompts(1)))


def test_missing_directory_and_unknown_hub_id_fail_clearly(tmp_path):
    with pytest.raises(GatescopeError, match="not a model directory"):
        load_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(GatescopeError, match="could not read its config"):
        load_model(tmp_path / "empty")


def test_prompt_errors(tiny_model):
    model = tiny_model("llama")
    with pytest.raises(GatescopeError, match="prompt 1 is empty"):
        model.tokenize(["w1 w2", "  "])
    with pytest.raises(GatescopeError, match="context is 64 tokens"):
        model.tokenize(" ".join(["w5"] * 65))
