"""Pretrained SAEs through SAELens's registry, offline: a local directory laid out as a release
(SAELens's format per SAE id), entered in SAELens's own (cached) registry."""

import json

import pytest
import torch
from tiny import prompts, save_tiny
from typer.testing import CliRunner

from probe import GatescopeError, load_model
from probe.sae import evaluate_sae, hook_to_site, load_pretrained, load_trained
from probe.sites import Site

RELEASE = "gatescope-local-tiny"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("pretrained") / "tiny", "qwen3_next")


def _release(root):
    """A release directory: one TopK SAE per id (TransformerLens and HF hook names), a
    transcoder (resid_mid -> mlp_out) and one on a normalised input gatescope lacks."""
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig
    from sae_lens.saes.transcoder import Transcoder, TranscoderConfig

    torch.manual_seed(0)
    saes = {
        "layer_1": ("blocks.1.hook_resid_post", None),
        "hf_layer_0": ("model.layers.0", None),
        "norm_in": ("blocks.1.ln2.hook_normalized", None),
        "transcoder_1": ("blocks.1.hook_resid_mid", "blocks.1.hook_mlp_out"),
    }
    for sae_id, (hook, hook_out) in saes.items():
        meta = SAEMetadata(model_name="tiny", hook_name=hook)
        if hook_out:
            meta.hook_name_out = hook_out
            cfg = TranscoderConfig(d_in=64, d_sae=48, d_out=64, apply_b_dec_to_input=False)
            sae = Transcoder(cfg)
        else:
            sae = TopKSAE(TopKSAEConfig(d_in=64, d_sae=48, k=6))
        sae.cfg.metadata = meta
        with torch.no_grad():
            for p in sae.parameters():
                p.normal_(0, 0.1)
        sae.save_model(root / f"saes/{sae_id}")
    return {i: f"saes/{i}" for i in saes}


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """SAELens's registry with the local release added (the cached directory itself, so
    SAELens's own lookups see it too)."""
    from sae_lens.loading.pretrained_saes_directory import (
        PretrainedSAELookup,
        get_pretrained_saes_directory,
    )

    repo = tmp_path / "repo"
    saes_map = _release(repo)
    entry = PretrainedSAELookup(
        release=RELEASE, repo_id=str(repo), model="tiny", conversion_func=None,
        saes_map=saes_map, expected_var_explained={}, expected_l0={}, neuronpedia_id={},
        norm_scaling_factor={}, config_overrides=None,
    )  # fmt: skip
    monkeypatch.setitem(get_pretrained_saes_directory(), RELEASE, entry)
    return repo


def test_hook_names_map_to_sites():
    for hook, site in [
        ("blocks.3.hook_resid_post", "resid_post.3"),
        ("blocks.0.hook_resid_pre", "resid_pre.0"),
        ("blocks.2.hook_mlp_out", "mlp_out.2"),
        ("blocks.2.attn.hook_z", "head_out.2"),
        ("blocks.2.mlp.hook_post", "mlp_hidden.2"),
        ("model.layers.12", "resid_post.12"),
        ("model.layers.5.mlp", "mlp_out.5"),
        ("model.language_model.layers.5.self_attn", "attn_out.5"),
        ("resid_mid.4", "resid_mid.4"),
    ]:
        assert hook_to_site(hook) == Site.parse(site), hook
    with pytest.raises(GatescopeError, match="normalised input"):
        hook_to_site("blocks.3.ln2.hook_normalized")
    with pytest.raises(GatescopeError, match="no gatescope site; supported"):
        hook_to_site("encoder.layer.3.output")


def test_load_a_local_release_and_evaluate_it(registry, tiny_dir, tmp_path):
    from sae_lens import SAE

    model = load_model(str(tiny_dir))
    p = load_pretrained(RELEASE, "layer_1", out=tmp_path / "sae", model=model)
    assert p.site == Site("resid_post", 1) and p.architecture == "topk" and p.d_sae == 48
    original = SAE.load_from_disk(registry / "saes/layer_1")
    tr = load_trained(p.path)
    x = torch.randn(10, 64)
    assert torch.equal(tr.encode(x), original.encode(x))
    meta = json.loads((p.path / "gatescope.json").read_text())
    assert meta["pretrained"]["release"] == RELEASE and meta["model_fingerprint"]
    ev = evaluate_sae(model, tr, prompts(10, length=8))
    assert ev.site == "resid_post.1" and ev.l0 <= 6
    hf = load_pretrained(RELEASE, "hf_layer_0")
    assert hf.site == Site("resid_post", 0) and hf.path is None
    tc = load_pretrained(RELEASE, "transcoder_1", out=tmp_path / "tc", model=model)
    assert (tc.site, tc.out_site) == (Site("resid_mid", 1), Site("mlp_out", 1))
    ev = evaluate_sae(model, load_trained(tc.path), prompts(10, length=8))
    assert ev.out_site == "mlp_out.1"


def test_unknown_release_id_and_hook_are_refused(registry, tmp_path):
    with pytest.raises(
        GatescopeError, match=f"RELEASE gatescope-local-tini.*did you mean {RELEASE}"
    ):
        load_pretrained("gatescope-local-tini", "layer_1")
    with pytest.raises(GatescopeError, match="ID layer_2.*did you mean.*layer_1"):
        load_pretrained(RELEASE, "layer_2")
    with pytest.raises(GatescopeError, match="normalised input"):
        load_pretrained(RELEASE, "norm_in", out=tmp_path / "n")
    assert not (tmp_path / "n").exists()


def test_cli_load_then_eval(registry, tiny_dir, tmp_path):
    from app.cli import app

    runner = CliRunner()
    out = tmp_path / "loaded"
    res = runner.invoke(
        app, ["sae", "load", RELEASE, "layer_1", "--out", str(out), "--model", str(tiny_dir)]
    )
    assert res.exit_code == 0, res.output
    assert "resid_post.1" in res.output and str(out) in res.output
    text = tmp_path / "t.txt"
    text.write_text("\n".join(prompts(8, length=8)) + "\n")
    res = runner.invoke(app, ["sae", "eval", str(out), "--text", str(text), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout[res.stdout.index("{") :])["site"] == "resid_post.1"
    res = runner.invoke(app, ["sae", "features", str(out), "--latent", "0", "--text", str(text)])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout[res.stdout.index("{") :])["latent"] == 0
    bad = runner.invoke(
        app, ["sae", "load", "no-such-release-xyz", "x", "--out", str(tmp_path / "b")]
    )
    assert bad.exit_code == 2 and "not a release" in bad.output
    again = runner.invoke(app, ["sae", "load", RELEASE, "layer_1", "--out", str(out)])
    assert again.exit_code == 2 and "already exists" in again.output
