import pytest
import torch
from tiny import DH, D, Zero, _common, tiny_tokenizer
from torch import nn

from interventions.heads import direct_logit_attribution, interchange_test
from probe import Tracer, load_model
from probe.locate import resolve_path
from probe.tasks import Task


def test_head_dla_sums_to_the_attention_outputs_direct_effect(tiny_model, make_task):
    model = tiny_model("qwen3_next")
    task = make_task("toy")
    dla = direct_logit_attribution(model, task)
    batch = task.tokenize(model.tokenizer)
    with Tracer(model, ["attn_out.1", "resid_post.1"], positions=[-1]) as tr:
        model.forward(batch.clean_ids, batch.attention_mask)
    x = tr["resid_post.1"][:, 0]
    scale = resolve_path(model.hf, model.family.final_norm)(x) / x
    w_u = model.hf.lm_head.weight
    direction = w_u[batch.answer_ids] - w_u[batch.wrong_ids]
    expected = float((tr["attn_out.1"][:, 0] * scale * direction).sum(-1).mean().detach())
    assert abs(sum(dla.scores[1]) - expected) < 1e-4
    assert len(dla.figure().data) == 1


def _copying_head_model():
    """One attention layer, identity norms, no MLP, uniform attention (q = k = 0), tied
    embeddings. Head 0 copies the mean of the tokens' first d_head embedding coordinates into
    the residual stream (its value and output maps are that projection); head 1 shares head
    0's values but writes nothing; heads 2 and 3 stay random."""
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.LlamaConfig(**_common(num_hidden_layers=1))
    cfg._attn_implementation = "eager"
    hf = tf.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        hf.model.embed_tokens.weight.normal_()
        hf.lm_head.weight.copy_(hf.model.embed_tokens.weight)
        layer = hf.model.layers[0]
        layer.input_layernorm = nn.Identity()
        layer.post_attention_layernorm = nn.Identity()
        layer.mlp = Zero()
        hf.model.norm = nn.Identity()
        attn = layer.self_attn
        attn.q_proj.weight.zero_()
        attn.k_proj.weight.zero_()
        attn.v_proj.weight[:DH].copy_(torch.eye(DH, D))  # key-value head 0 (heads 0 and 1)
        attn.o_proj.weight[:, :DH].copy_(torch.eye(D, DH))  # head 0 writes its value back
        attn.o_proj.weight[:, DH : 2 * DH].zero_()  # head 1 writes nothing
    return load_model(hf, tokenizer=tiny_tokenizer())


def test_interchange_test_finds_the_copying_head_and_not_the_silent_one():
    """Prompts share all but their first word, which is the answer (corrupt: another word).
    Swapping head 0 from the matched prompt moves the logit difference by about twice as
    much as a swap from another prompt (whose first word is neither answer nor wrong word),
    so the matched swap beats every null draw: p is the smallest possible, 1 / (1 + n_null).
    Head 1 writes nothing: its effect is exactly 0 and p is 1."""
    n = 8
    clean = [f"w{20 + i} w5 w6 w7" for i in range(n)]
    corrupt = [f"w{40 + i} w5 w6 w7" for i in range(n)]
    task = Task(
        name="copy",
        clean=clean,
        corrupt=corrupt,
        answers=[f"w{20 + i}" for i in range(n)],
        wrongs=[f"w{40 + i}" for i in range(n)],
    )
    result = interchange_test(_copying_head_model(), task, n_null=9)
    copying, silent = 0, 1
    assert result.p_values[0][copying] == pytest.approx(0.1)  # 1 / (1 + 9): none reaches it
    assert result.scores[0][copying] > 0
    assert result.scores[0][silent] == 0.0 and result.p_values[0][silent] == 1.0
