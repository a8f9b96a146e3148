"""The SAEs page (app/pages/4_SAEs.py), headless (AppTest): the CLI's training defaults
following the site, Run with progress, feature list and pages with downloads, links that
name the SAE, steering with a shown scale."""

import pytest
from conftest import ROOT, needs_reference
from streamlit.testing.v1 import AppTest
from tiny import prompts, save_tiny

SAES = str(ROOT / "app" / "pages" / "4_SAEs.py")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return str(save_tiny(tmp_path_factory.mktemp("sae_page") / "tiny", "qwen3_next"))


@pytest.fixture(scope="module")
def sae_root(tiny_dir, tmp_path_factory):
    """Two SAEs on the tiny model: a/ at resid_post.1 and b/ at resid_post.0."""
    from probe import load_model
    from probe.sae import SAETrainSpec, train_from_model

    root = tmp_path_factory.mktemp("saes")
    model = load_model(tiny_dir)
    texts = prompts(40, 12)
    for name, site in (("a", "resid_post.1"), ("b", "resid_post.0")):
        spec = SAETrainSpec(width=32, k=4, tokens=1200, batch_size=200, checkpoint_every=0)
        train_from_model(model, site, spec, root / name, texts, progress=False)
    return root


@pytest.fixture
def page(tiny_dir, sae_root, monkeypatch):
    monkeypatch.setenv("GATESCOPE_MODEL", tiny_dir)
    monkeypatch.setenv("GATESCOPE_SAE_DIR", str(sae_root))

    def run(query=None, press_run=True):
        at = AppTest.from_file(SAES, default_timeout=600)
        for key, value in (query or {}).items():
            at.query_params[key] = value
        at.run()
        assert not at.exception, at.exception
        if press_run:
            at.button(key="run").click().run()
            assert not at.exception, at.exception
        return at

    return run


def test_heavy_work_waits_for_run_then_shows_metrics_list_and_page(page):
    at = page(press_run=False)
    assert not at.get("plotly_chart") and any("Run evaluates" in i.value for i in at.info)
    at.button(key="run").click().run()
    assert not at.exception and not at.error, at.error
    assert [m.label for m in at.metric][:4] == ["L0", "explained variance", "dead fraction",
                                                 "CE-loss score"]  # fmt: skip
    assert float(at.metric[0].value) <= 4  # TopK: at most k active latents
    charts = at.get("plotly_chart")
    assert len(charts) == 3  # firing rates, activation histogram, top contexts
    heat = [c for c in charts if c.key == "contexts"]
    assert heat and "token position relative to the peak" in heat[0].proto.spec
    assert "context (rank, peak activation)" in heat[0].proto.spec
    downloads = {d.proto.label for d in at.get("download_button")}
    assert downloads == {"feature list (CSV)", "feature page (JSON)", "contexts (CSV)"}
    assert at.query_params["sae"] == "a" and at.query_params["latent"]


def test_link_names_the_sae_and_resets_on_another(page, tiny_dir, sae_root):
    at = page({"sae": "a", "latent": "7"})
    assert at.selectbox(key="sae").value == "a"
    assert at.number_input(key="latent_a").value == 7
    assert any("?sae=a&latent=7" in c.value for c in at.caption)
    at.selectbox(key="sae").set_value("b").run()
    at.button(key="run").click().run()
    assert not at.exception and not at.error, at.error
    from app.ui import bundled_texts
    from probe import load_model
    from probe.sae import latent_stats, load_trained

    rates = latent_stats(load_model(tiny_dir), load_trained(sae_root / "b"), bundled_texts(300))
    busiest = max(range(32), key=rates["firing_rate"].__getitem__)
    assert at.number_input(key="latent_b").value == busiest  # not a's latent 7
    assert at.query_params["sae"] == "b" and at.query_params["latent"] == str(busiest)


def test_steering_shows_its_scale_and_waits_for_generate(page):
    at = page()
    captions = " ".join(c.value for c in at.caption)
    assert "decoder row norm" in captions and "Added vector: +1x" in captions
    assert not any("steered with latent" in m.value for m in at.markdown)
    at.button(key="steer_run").click().run()
    assert any("steered with latent" in m.value for m in at.markdown)
    at.text_input(key="steer_prompt").set_value("").run()
    at.button(key="steer_run").click().run()
    assert not at.exception and "empty" in at.error[0].value


def test_training_defaults_follow_the_site_as_the_cli_chooses_them(page, tiny_dir):
    from app.ui import bundled_texts
    from probe import load_model
    from probe.sae import default_spec, site_width

    model = load_model(tiny_dir)
    texts = bundled_texts(600)[96:]
    available = sum(len(ids) for ids in model.tokenizer(texts)["input_ids"])
    at = page(press_run=False)
    widths = {}
    for site in ("resid_post.1", "mlp_gate.1", "resid_post.1"):
        at.selectbox(key="train_site_topk").set_value(site).run()
        d_in, _ = site_width(model, model.sites(site)[0])
        want = default_spec(d_in, available)  # what `gatescope sae train` resolves
        widths[site] = at.selectbox(key=f"width_topk_{site}").value
        assert widths[site] == want.width
        assert at.number_input(key=f"k_topk_{site}").value == want.k
        assert at.selectbox(key=f"tokens_topk_{site}").value == want.tokens
        assert f"{want.width} latents, k = {want.k}" in at.caption[0].value
    assert want.batch_size == 1024  # the CLI's, not a page-only one
    assert widths["mlp_gate.1"] != widths["resid_post.1"]  # 128-wide gate, 64-wide residual


def test_missing_directory_then_training_with_progress(tiny_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("GATESCOPE_MODEL", tiny_dir)
    monkeypatch.setenv("GATESCOPE_SAE_DIR", str(tmp_path / "none"))
    at = AppTest.from_file(SAES, default_timeout=600).run()
    assert "does not exist" in at.warning[0].value and not at.error
    at.text_input(key="sae_dir").set_value(str(tmp_path / "new")).run()
    site = at.selectbox(key="train_site_topk").value
    at.selectbox(key=f"width_topk_{site}").set_value(64)
    smallest = min(at.selectbox(key=f"tokens_topk_{site}").options, key=int)
    at.selectbox(key=f"tokens_topk_{site}").set_value(int(smallest))
    at.button(key="train").click().run()
    assert not at.exception and not at.error, at.error
    assert len(list((tmp_path / "new").glob("*/sae_weights.safetensors"))) == 1
    assert at.selectbox(key="sae").value.startswith("topk_")
    assert [m.label for m in at.metric][0] == "L0"  # evaluated after training


@pytest.mark.slow  # trains with the page's defaults on the reference model: minutes of CPU
@needs_reference
def test_page_default_training_on_reference_explains_half_the_variance(monkeypatch, tmp_path):
    """The page's default SAE (gatescope sae train's defaults on the bundled texts) explains
    at least half the variance of its site on the held-out texts."""
    monkeypatch.delenv("GATESCOPE_MODEL", raising=False)
    monkeypatch.setenv("GATESCOPE_SAE_DIR", str(tmp_path))
    at = AppTest.from_file(SAES, default_timeout=3000).run()
    at.button(key="train").click().run()
    assert not at.exception and not at.error, at.error
    labels = [m.label for m in at.metric]
    explained = float(at.metric[labels.index("explained variance")].value)
    print(f"page default on reference: explained variance {explained:.3f}")
    assert explained >= 0.5
    assert not [w for w in at.warning if "explained variance" in w.value]
