"""Every page of the Streamlit app, headless (AppTest), with default and bad inputs."""

import pytest
from conftest import ROOT, needs_reference
from streamlit.testing.v1 import AppTest
from tiny import save_tiny

HOME = str(ROOT / "app" / "Home.py")
GATES = str(ROOT / "app" / "pages" / "1_Gates.py")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return str(save_tiny(tmp_path_factory.mktemp("app") / "tiny", "qwen3_next"))


@pytest.fixture()
def tiny_app(tiny_dir, monkeypatch):
    monkeypatch.setenv("GATESCOPE_MODEL", tiny_dir)


def _run(path):
    at = AppTest.from_file(path, default_timeout=180).run()
    assert not at.exception, at.exception
    return at


def test_home_shows_the_model(tiny_app):
    at = _run(HOME)
    assert not at.error
    assert [m.value for m in at.metric][:2] == ["qwen3_next", "2"]
    assert len(at.dataframe) == 1


def test_home_unknown_model_is_a_message(monkeypatch, tmp_path):
    monkeypatch.setenv("GATESCOPE_MODEL", str(tmp_path / "no-such-model"))
    at = _run(HOME)
    assert at.error and "not a model directory" in at.error[0].value


def test_gates_page_charts_and_bad_prompts(tiny_app):
    at = _run(GATES)
    assert not at.error
    assert len(at.get("plotly_chart")) >= 7
    at.text_area(key="prompt").set_value("   ").run()
    assert not at.exception and "empty" in at.error[0].value
    at.text_area(key="prompt").set_value(" ".join(["w3"] * 80)).run()
    assert not at.exception and "context is 64 tokens" in at.error[0].value
    at.text_area(key="prompt").set_value("w1 w2 w3").run()
    assert not at.exception and not at.error


@needs_reference
def test_gates_page_on_the_reference_models(monkeypatch):
    monkeypatch.delenv("GATESCOPE_MODEL", raising=False)
    at = _run(GATES)
    assert not at.error and len(at.get("plotly_chart")) >= 8


PAGES = {
    name: str(ROOT / "app" / "pages" / f"{name}.py")
    for name in ("2_Patching", "3_Circuits", "4_Steering", "5_Concepts")
}


@pytest.mark.parametrize("page", list(PAGES))
def test_feature_pages_run_without_exceptions_on_a_tiny_model(tiny_app, page):
    at = _run(PAGES[page])
    # a tiny random model with a word-level tokenizer cannot read the bundled tasks: the page
    # must say so in words (or draw its charts), never raise
    assert at.error or at.get("plotly_chart")


def test_steering_page_bad_pairs(tiny_app):
    at = _run(PAGES["4_Steering"])
    at.text_area(key="pairs").set_value("only one side").run()
    assert not at.exception and "positive text | negative text" in at.error[0].value


@needs_reference
@pytest.mark.parametrize("page", list(PAGES))
def test_feature_pages_on_the_reference_model(monkeypatch, page):
    monkeypatch.delenv("GATESCOPE_MODEL", raising=False)
    at = _run(PAGES[page])
    assert not at.error and at.get("plotly_chart")
