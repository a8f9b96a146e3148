"""The agreement study's figures against hand-computed values and scipy, the target verdict,
and methods_for read from the registry."""

import math

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr

from circuits.agreement import AgreementResult, compare, methods_for, overlap, pearson, spearman


def test_overlap_by_hand():
    # |x|: 3, 5, 1, 0.5 -> top-2 {1, 0}; |y|: 4, 0.1, 2, 3 -> top-2 {0, 3}: one shared
    assert overlap([3, -5, 1, 0.5], [-4, 0.1, 2, 3], 2) == 0.5
    assert overlap([3, -5, 1, 0.5], [-4, 0.1, 2, 3], 3) == pytest.approx(2 / 3)  # {1,0,2} {0,3,2}
    assert overlap([1, 2], [2, 1], 10) == 1.0  # k capped at the length
    assert math.isnan(overlap([], [], 5))


def test_compare_by_hand():
    # dx = (-1, 0, 1), dy = (-1, 1, 0): r = 1 / sqrt(2 * 2) = 0.5; the ranks are the values
    out = compare([1, 2, 3], [1, 3, 2])
    assert out == {"pearson": 0.5, "spearman": 0.5, "n": 3, "top5": 1.0, "top10": 1.0}
    assert compare([1, 2, 3], [3, 2, 1])["pearson"] == pytest.approx(-1.0)
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))


@pytest.mark.parametrize("seed", range(5))
def test_pearson_and_spearman_match_scipy(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=40)
    y = 0.3 * x + rng.normal(size=40)
    y[::5] = y[0]  # ties, which Spearman ranks by their average
    x[1::7] = x[1]
    assert pearson(list(x), list(y)) == pytest.approx(pearsonr(x, y)[0], abs=1e-12)
    assert spearman(list(x), list(y)) == pytest.approx(spearmanr(x, y)[0], abs=1e-12)


def _result(stats, fast):
    return AgreementResult(
        model="m",
        task="t",
        stats=stats,
        patching={},
        scores={},
        labels={},
        fast=fast,
    )


def test_verdict_picks_the_best_fast_method_meeting_the_target():
    row = lambda r, t: {"pearson": r, "spearman": r, "n": 10, "top5": t, "top10": t}  # noqa: E731
    stats = {
        "head_out": {"atp": row(0.96, 0.8), "ig": row(0.98, 0.9), "atp*": row(0.99, 1.0)},
        "mlp_out": {"atp": row(0.97, 0.7), "ig": row(0.90, 0.9)},
    }
    result = _result(stats, fast=["atp", "ig"])  # atp* is not fast
    assert result.verdict("head_out") == ("ig", ["atp", "ig"])
    assert result.verdict("mlp_out") == (None, [])
    text = result.verdicts()
    assert "head_out: ig (r 0.980" in text
    assert "mlp_out: no fast method meets" in text and "highest fast r: atp" in text


def test_methods_for_reads_the_registry(tiny_model):
    from circuits.methods import NODE_METHODS

    gated, plain = methods_for(tiny_model("qwen3_next")), methods_for(tiny_model("llama"))
    assert {m.name for m in gated.values()} == set(NODE_METHODS)
    assert {"atp", "atp*", "atp*(grad_drop=True)", "relp", "relp(hold_attention=False)",
            "relp(gate_rule=constant)", "relp*", "ig", "ig(steps=2)"} <= set(gated)  # fmt: skip
    assert not any("gate_rule=constant" in k for k in plain)  # no attention gate to rule on
    assert all(label == m.label for label, m in gated.items())
