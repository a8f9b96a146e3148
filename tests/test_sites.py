import pytest

from probe import GatescopeError, Site, expand_sites
from probe.sites import SITE_KINDS


def test_every_kind_round_trips_through_text():
    for kind in SITE_KINDS:
        site = Site(kind, 2)
        assert Site.parse(str(site)) == site
    assert Site.parse("head_out.3.5") == Site("head_out", 3, 5)
    assert str(Site("attn_gate", 1, 0)) == "attn_gate.1.0"


def test_patterns_expand():
    assert expand_sites("resid_post.*", 3, 4) == [Site("resid_post", i) for i in range(3)]
    assert expand_sites("mlp_gate.0-2", 4, 4) == [Site("mlp_gate", i) for i in range(3)]
    assert expand_sites("head_out.1.*", 2, 3) == [Site("head_out", 1, h) for h in range(3)]
    both = expand_sites("attn_gate.0, resid_pre.1", 2, 2)
    assert both == [Site("attn_gate", 0), Site("resid_pre", 1)]


def test_unknown_kind_suggests_nearest():
    with pytest.raises(GatescopeError, match="Did you mean 'attn_gate'"):
        Site.parse("atn_gate.1")


@pytest.mark.parametrize(
    "text, message",
    [
        ("resid_post.9", "out of range; this model has layers 0-3"),
        ("head_out.1.7", "out of range; this model has heads 0-3"),
        ("resid_post.1.2", "has no heads"),
        ("resid_post", "expected kind.layer"),
        ("resid_post.x", "bad layer"),
        ("", "no sites given"),
    ],
)
def test_bad_patterns_are_refused(text, message):
    with pytest.raises(GatescopeError, match=message):
        expand_sites(text, 4, 4)


def test_pattern_is_not_one_site():
    with pytest.raises(GatescopeError, match="pattern"):
        Site.parse("resid_post.*")
