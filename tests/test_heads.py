from test_patching import _task
from tiny import tiny_hf, tiny_tokenizer

from interventions.heads import direct_logit_attribution, interchange_test
from probe import Tracer, load_model
from probe.locate import resolve_path


def test_head_dla_sums_to_the_attention_outputs_direct_effect():
    model = load_model(tiny_hf("qwen3_next"), tokenizer=tiny_tokenizer())
    task = _task()
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


def test_interchange_test_shapes_and_p_values():
    model = load_model(tiny_hf("qwen3_next"), tokenizer=tiny_tokenizer())
    result = interchange_test(model, _task(), n_null=4)
    assert len(result.scores) == 2 and len(result.scores[0]) == 4
    assert all(0 < p <= 1 for row in result.p_values for p in row)
    assert all(s >= 0 for row in result.scores for s in row)
