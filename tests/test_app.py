"""Every page of the Streamlit app, headless (AppTest), with default and bad inputs."""

import pytest
from conftest import ROOT, needs_reference
from streamlit.testing.v1 import AppTest
from tiny import save_tiny

HOME = str(ROOT / "app" / "Home.py")
GATES = str(ROOT / "app" / "pages" / "1_Gates.py")


@pytest.fixture()
def tiny_app(model_dir, monkeypatch):
    monkeypatch.setenv("GATESCOPE_MODEL", model_dir)


def _run(path, query=None, press_run=True):
    at = AppTest.from_file(path, default_timeout=180)
    for key, value in (query or {}).items():
        at.query_params[key] = value
    at.run()
    assert not at.exception, at.exception
    runs = [b for b in at.button if b.label == "Run"]
    if press_run and runs:  # pages that compute for long wait for their Run button
        runs[0].click().run()
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


def test_gates_page_on_a_hybrid_moe_model_shows_every_gate_type(tmp_path, monkeypatch):
    path = save_tiny(tmp_path / "hybrid", "qwen3_next_hybrid")
    monkeypatch.setenv("GATESCOPE_MODEL", str(path))
    at = _run(GATES)
    assert not at.error
    heads = [h.value for h in at.subheader]
    assert "Layer map" in heads and "Gated-DeltaNet gates" in heads
    assert any(h.startswith("MoE routers") for h in heads)
    keys = {c.proto.id for c in at.get("plotly_chart")}
    assert keys  # charts drawn; layer 0 has no attention gate: a message, not a chart
    assert any("has no attn_gate" in i.value for i in at.info)


@pytest.mark.slow  # runs the reference model's full computation
@needs_reference
def test_gates_page_on_the_reference_models(monkeypatch):
    monkeypatch.delenv("GATESCOPE_MODEL", raising=False)
    at = _run(GATES)
    assert not at.error and len(at.get("plotly_chart")) >= 8


PAGES = {
    name: str(ROOT / "app" / "pages" / f"{name}.py")
    for name in ("2_Patching", "3_Circuits", "5_Steering", "6_Concepts")
}


#: What each page says on the tiny model: its word-level tokenizer reads every word of the
#: bundled tasks, pairs and concept sets as <unk>, so clean and corrupt prompts (positive and
#: negative texts, concept and random sets) are the same token ids.
TINY_OUTCOME = {
    "2_Patching": "clean and corrupt runs give the same logit difference; nothing to patch",
    "3_Circuits": "clean and corrupt runs give the same logit difference; nothing to patch",
    "5_Steering": "is zero or not finite: the positive and negative texts give the same",
    "6_Concepts": "the concept and random sets are identical",
}


@pytest.mark.parametrize("page", list(PAGES))
def test_feature_pages_say_why_they_cannot_run_on_a_tiny_model(tiny_app, page):
    at = _run(PAGES[page])  # never raises (checked in _run)
    errors = [e.value for e in at.error]
    assert any(TINY_OUTCOME[page] in e for e in errors), errors
    assert not at.get("plotly_chart")  # no chart of meaningless numbers


def test_model_and_prompt_carry_across_pages_and_into_the_url(model_dir, monkeypatch):
    monkeypatch.delenv("GATESCOPE_MODEL", raising=False)
    query = {"model": model_dir, "prompt": "w1 w2 w3"}
    at = _run(GATES, query)  # a bookmarked URL opens on its model and prompt
    assert at.selectbox(key="model_choice").value.startswith("other")
    assert at.text_input(key="model_path").value == model_dir
    assert at.text_area(key="prompt").value == "w1 w2 w3" and not at.error
    at.text_area(key="prompt").set_value("w4 w5").run()
    assert at.query_params["prompt"] in ("w4 w5", ["w4 w5"])
    assert at.query_params["model"] in (model_dir, [model_dir])
    # the next page reads the same state: the typed model and the new prompt
    steer = AppTest.from_file(PAGES["5_Steering"], default_timeout=180)
    steer.session_state["shared.model"] = at.session_state["shared.model"]
    steer.session_state["shared.prompt"] = at.session_state["shared.prompt"]
    steer.run()
    assert steer.text_input(key="model_path").value == model_dir
    assert steer.text_input(key="prompt").value == "w4 w5"


def test_patching_a_custom_pair_and_its_bad_inputs(tiny_app):
    at = _run(PAGES["2_Patching"], {"task": "your own pair"})
    at.text_input(key="clean").set_value("w1 w2 w3 w4").run()
    at.text_input(key="corrupt").set_value("w1 w9 w3 w4").run()
    at.text_input(key="answer").set_value("w5").run()
    at.text_input(key="wrong").set_value("w6").run()
    assert not at.exception and not at.error, at.error
    assert at.get("plotly_chart") and at.dataframe[0].value["component"].tolist()
    assert any("all 1 prompts used" in c.value for c in at.caption)
    at.checkbox(key="each_head_out").check().run()  # per position over the pair
    assert not at.exception and not at.error
    assert all("@" in c for c in at.dataframe[0].value["component"])
    at.selectbox(key="kind").set_value("resid_pre").run()  # its own default: each position
    assert at.checkbox(key="each_resid_pre").value is True
    at.text_input(key="answer").set_value("w5 w6").run()
    assert not at.exception and "token" in at.error[0].value
    at.text_input(key="answer").set_value("w5").run()
    at.text_input(key="corrupt").set_value("w1 w9 w3").run()  # lengths differ
    assert not at.exception and at.error


@pytest.mark.slow  # builds a RelP graph on the reference model
@needs_reference
def test_circuits_node_count_resets_when_the_task_changes(monkeypatch):
    monkeypatch.delenv("GATESCOPE_MODEL", raising=False)
    at = _run(PAGES["3_Circuits"], {"task": "ioi"})
    slider = [s for s in at.slider if s.key.startswith("size_")][0]
    default = slider.value
    slider.set_value(max(0, default - 1) if default else 1).run()
    at.selectbox(key="task").set_value("induction").run()
    assert not at.exception and not at.get("plotly_chart")  # a new task waits for Run again
    at.button(key="circuits_run").click().run()
    assert not at.exception
    fresh = [s for s in at.slider if s.key.startswith("size_")][0]
    assert "induction" in fresh.key and not at.error


def test_circuits_on_your_own_pair_with_the_node_inspector(tiny_app):
    at = _run(PAGES["3_Circuits"], {"task": "your own pair"})
    for key, value in (("clean", "w1 w2 w3 w4"), ("corrupt", "w1 w9 w3 w4"), ("answer", "w5")):
        at.text_input(key=key).set_value(value).run()
    at.text_input(key="wrong").set_value("w6").run()
    assert not at.exception and not at.error and not at.get("plotly_chart")  # waits for Run
    at.button(key="circuits_run").click().run()
    assert not at.exception and not at.error, at.error
    assert len(at.get("plotly_chart")) == 3  # agreement scatter, circuit graph, faithfulness
    inspector = [s for s in at.selectbox if s.key.startswith("inspect_")][0]
    assert inspector.options and inspector.value == inspector.options[0]
    inspector.set_value(inspector.options[-1]).run()
    assert not at.exception and not at.error
    labels = [m.label for m in at.metric]
    assert "direct logit attribution" in labels and any("logit lens" in x for x in labels)
    at.text_input(key="wrong").set_value("w6 w7").run()  # two tokens: a message, no run
    assert not at.exception and "token" in at.error[0].value


def test_steering_page_bad_pairs(tiny_app):
    at = _run(PAGES["5_Steering"])
    at.text_area(key="pairs").set_value("only one side").run()
    assert not at.exception and "positive text | negative text" in at.error[0].value


@pytest.mark.slow  # runs the reference model's full computation
@needs_reference
@pytest.mark.parametrize("page", list(PAGES))
def test_feature_pages_on_the_reference_model(monkeypatch, page):
    monkeypatch.delenv("GATESCOPE_MODEL", raising=False)
    at = _run(PAGES[page])
    if page == "5_Steering":  # its chart is the random-vector control, behind its own button
        at.button(key="steer_run").click().run()
    assert not at.exception and not at.error and at.get("plotly_chart")


# The SAEs page has its own tests: tests/test_sae_page.py.


@pytest.mark.slow  # runs the reference model's full computation
@needs_reference
def test_patching_page_layer_by_head_and_by_position(monkeypatch):
    monkeypatch.delenv("GATESCOPE_MODEL", raising=False)
    at = _run(PAGES["2_Patching"])
    heads = at.dataframe[0].value["component"].tolist()
    assert heads and all("@" not in c and c.startswith("head_out.") for c in heads)
    at.checkbox(key="each_head_out").check().run()
    assert not at.exception and not at.error
    assert all("@" in c for c in at.dataframe[0].value["component"])


@pytest.mark.slow  # runs the reference model's full computation
@needs_reference
def test_concepts_page_bad_target_is_a_message(monkeypatch):
    monkeypatch.delenv("GATESCOPE_MODEL", raising=False)
    at = _run(PAGES["6_Concepts"], press_run=False)
    at.text_input(key="target").set_value("wonderfulness|terrible").run()
    assert not at.exception and "not a single token" in at.error[0].value
    at.text_input(key="target").set_value("wonderful|terrible").run()  # the page recovers
    assert not at.exception and not at.error and not at.get("plotly_chart")  # waits for Run
    at.button(key="concepts_run").click().run()
    assert not at.exception and not at.error and at.get("plotly_chart")
    table = at.dataframe[0].value
    assert len(table) == 4 and table["TCAV"].notna().all()
