"""Every page of the Streamlit app, headless (AppTest), with default and bad inputs."""

import json

import pytest
from conftest import ROOT, needs_reference
from streamlit.testing.v1 import AppTest
from tiny import prompts, save_tiny

HOME = str(ROOT / "app" / "Home.py")
GATES = str(ROOT / "app" / "pages" / "1_Gates.py")


@pytest.fixture()
def tiny_app(model_dir, monkeypatch):
    monkeypatch.setenv("GATESCOPE_MODEL", model_dir)


def _run(path, query=None, press_run=True):
    at = AppTest.from_file(path, default_timeout=600)
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
    assert "`qwen3_next`" in at.markdown[0].value and at.metric[0].value == "2"
    assert len(at.dataframe) == 1


def test_home_unknown_model_is_a_message(monkeypatch, tmp_path):
    monkeypatch.setenv("GATESCOPE_MODEL", str(tmp_path / "no-such-model"))
    at = _run(HOME)
    assert at.error and "not a model directory" in at.error[0].value


def test_model_options_are_checked_before_loading_and_kept_in_the_url(tiny_app):
    at = _run(HOME)
    at.text_input(key="opt_device").set_value("nosuchdevice").run()
    assert not at.exception and "'device' nosuchdevice: not a torch device" in at.error[0].value
    assert "--" not in at.error[0].value  # the sidebar's names, not the CLI's flags
    at.text_input(key="opt_device").set_value("cpu").run()
    at.selectbox(key="opt_map").set_value("auto").run()
    assert not at.exception and "not both" in at.error[0].value
    at.selectbox(key="opt_map").set_value("none").run()
    at.checkbox(key="opt_remote").check().run()
    assert not at.exception and "needs 'backend' nnsight" in at.error[0].value
    at.checkbox(key="opt_remote").uncheck().run()
    at.selectbox(key="opt_dtype").set_value("bfloat16").run()
    assert not at.exception and not at.error
    assert at.query_params["dtype"] in ("bfloat16", ["bfloat16"])
    assert at.query_params["device"] in ("cpu", ["cpu"])
    ref = at.session_state["model_ref"]
    assert dict(ref.options) == {"device": "cpu", "dtype": "bfloat16"}
    import torch

    assert next(ref.load().hf.parameters()).dtype == torch.bfloat16
    # the next page opens with the same options, read from the URL
    gates = AppTest.from_file(GATES, default_timeout=600)
    for key in ("dtype", "device"):
        gates.query_params[key] = at.query_params[key]
    gates.run()
    assert not gates.exception and not gates.error
    assert gates.selectbox(key="opt_dtype").value == "bfloat16"


def test_trust_remote_code_is_a_checkbox_never_implied_nor_taken_from_the_url(
    tmp_path, monkeypatch
):
    from tiny_gated import save_gated_attention

    path = save_gated_attention(tmp_path / "paper")
    monkeypatch.setenv("GATESCOPE_MODEL", str(path))
    at = _run(HOME, {"trust_remote_code": "True"})
    assert at.checkbox(key="opt_trust").value is False
    assert "own modelling code" in at.error[0].value and "'trust remote code'" in at.error[0].value
    at.checkbox(key="opt_trust").check().run()
    assert not at.exception and not at.error
    assert "`gated_attention`" in at.markdown[0].value and at.metric[0].value == "2"
    assert "trust_remote_code" not in at.query_params


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


def test_gates_page_head_choice_redraws_the_text_and_the_pattern(tiny_app):
    at = _run(GATES)
    titles = lambda: [  # noqa: E731
        json.loads(c.proto.spec)["layout"].get("title", {}).get("text", "")
        for c in at.get("plotly_chart")
    ]
    assert any("layer 0 head 0" in t for t in titles())
    text_before = at.get("html")[0].proto.body
    at.selectbox(key="head").set_value(1).run()
    assert not at.exception and not at.error
    assert any("layer 0 head 1" in t for t in titles())
    assert at.get("html")[0].proto.body != text_before  # the gate of head 1 over the text
    assert "Head 1" in at.markdown[0].value or any("head 1" in m.value for m in at.markdown)
    at.slider(key="layer").set_value(1).run()  # another layer keeps the head
    assert not at.exception and any("layer 1 head 1" in t for t in titles())


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
    steer = AppTest.from_file(PAGES["5_Steering"], default_timeout=600)
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
    assert not at.get("plotly_chart")  # a new sweep waits for its Run button
    at.button(key="patching_run").click().run()
    assert at.get("plotly_chart") and at.dataframe[0].value["component"].tolist()
    assert any("all 1 prompts used" in c.value for c in at.caption)
    at.checkbox(key="each_head_out").check().run()  # per position over the pair
    at.button(key="patching_run").click().run()
    assert not at.exception and not at.error
    assert all("@" in c for c in at.dataframe[0].value["component"])
    at.selectbox(key="kind").set_value("resid_pre").run()  # its own default: each position
    assert at.checkbox(key="each_resid_pre").value is True
    at.checkbox(key="each_resid_pre").uncheck().run()
    at.button(key="patching_run").click().run()
    assert not at.exception and not at.error
    xaxis = json.loads(at.get("plotly_chart")[0].proto.spec)["layout"]["xaxis"]
    assert "all at once" in xaxis["title"]["text"]  # one column: what it is, in words
    at.text_input(key="answer").set_value("w5 w6").run()
    assert not at.exception and "token" in at.error[0].value
    at.text_input(key="answer").set_value("w5").run()
    at.text_input(key="corrupt").set_value("w1 w9 w3").run()  # lengths differ
    assert not at.exception and at.error


def test_patching_noise_mode_and_whole_token_labels(tiny_app):
    at = _run(PAGES["2_Patching"], {"task": "your own pair"})
    for key, value in (("clean", "w1 w2 w3 w4"), ("corrupt", "w1 w9 w3 w4"), ("answer", "w5")):
        at.text_input(key=key).set_value(value).run()
    at.text_input(key="wrong").set_value("w6").run()
    at.selectbox(key="mode").set_value("noise").run()
    at.checkbox(key="each_head_out").check().run()
    at.button(key="patching_run").click().run()
    assert not at.exception and not at.error, at.error
    captions = " ".join(c.value for c in at.caption)
    assert "-1 = clean behaviour destroyed" in captions and "restored" not in captions
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert spec["data"][0]["zmin"] == -1 and spec["data"][0]["zmax"] == 1  # a fixed range
    ticks = spec["layout"]["xaxis"]["ticktext"]
    assert ticks[1:5] == ["1:w1", "2: w2", "3: w3", "4: w4"] or ticks[:4] == [
        "0:w1",
        "1: w2",
        "2: w3",
        "3: w4",
    ], ticks
    assert "noise" in spec["layout"]["title"]["text"]


@needs_reference
def test_whole_token_labels_keep_multi_byte_characters():
    from transformers import AutoTokenizer

    from app.ui import token_labels

    tok = AutoTokenizer.from_pretrained(str(ROOT / "data" / "models" / "reference-gated"))
    text = "caf\u00e9 \u2014 na\u00efve \U0001f600 ok"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    singles = [tok.decode([i]) for i in ids]
    assert any("\ufffd" in t for t in singles)  # the per-token decode breaks characters
    labels = token_labels(tok, ids)
    assert len(labels) == len(ids)
    assert not any("\ufffd" in label for label in labels)
    for char in ("\u00e9", "\u2014", "\u00ef", "\U0001f600"):  # each shown whole, once
        assert sum(char in label for label in labels) == 1, (char, labels)


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


def test_steering_page_prompt_method_site_and_strength(tiny_app):
    at = _run(PAGES["5_Steering"])
    at.text_area(key="pairs").set_value("w1 w2 w3 | w4 w5 w6\nw7 w8 w9 | w10 w11 w12").run()
    at.text_input(key="prompt").set_value("w3 w4 w5").run()
    assert not at.exception and not at.error, at.error
    texts = lambda: [t.value for t in at.text]  # noqa: E731
    assert len(texts()) == 3 and all(t.startswith("w3 w4 w5") for t in texts())
    first = texts()
    at.select_slider(key="strength").set_value(1.0).run()
    assert not at.exception and not at.error
    assert "strength +1 adds" in at.caption[0].value
    assert [m.value for m in at.markdown if m.value.startswith("**strength")][0].startswith(
        "**strength -1"
    )
    assert texts()[1] == first[1]  # the unsteered column does not change with the strength
    for method in ("actadd", "pca"):
        at.selectbox(key="method").set_value(method).run()
        assert not at.exception and not at.error, (method, at.error)
    at.selectbox(key="site").set_value("resid_post.0").run()
    assert not at.exception and not at.error and "|resid_post.0|" in at.caption[0].value
    at.text_input(key="prompt").set_value("").run()
    assert not at.exception and "empty" in at.error[0].value
    at.text_input(key="prompt").set_value("w3 w4 w5").run()
    at.text_area(key="pairs").set_value("w1 w2 | w3 w4").run()
    assert not at.exception and "PCA needs at least 2 contrast pairs" in at.error[0].value
    at.text_area(key="pairs").set_value("w1 | w1\nw2 | w2").run()  # no contrast at all
    assert not at.exception and "zero or not finite" in at.error[0].value


def _degenerate(tokenizer, text: str) -> str:
    """Why a continuation reads as junk ("" when it does not): few distinct tokens, or one
    token repeated three times in a row ("so so so", "ssss")."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    run = longest = 1
    for a, b in zip(ids, ids[1:], strict=False):
        run = run + 1 if a == b else 1
        longest = max(longest, run)
    distinct = len(set(ids)) / max(1, len(ids))
    if distinct < 0.6:
        return f"{distinct:.2f} distinct tokens"
    return f"a token {longest} times in a row" if longest >= 3 else ""


@pytest.mark.slow  # generates with the reference model
@needs_reference
def test_steering_default_is_readable_and_steered_on_the_reference_model(monkeypatch):
    monkeypatch.delenv("GATESCOPE_MODEL", raising=False)
    at = _run(PAGES["5_Steering"])
    assert not at.exception and not at.error
    assert at.select_slider(key="strength").value > 0  # the page opens steered
    prompt = at.text_input(key="prompt").value
    minus, plain, plus = (t.value.removeprefix(prompt) for t in at.text)
    from probe import load_model

    tokenizer = load_model("reference").tokenizer
    assert not _degenerate(tokenizer, plain), plain  # the measure passes unsteered text
    assert _degenerate(tokenizer, " nice, so so so so so so so Vera sent a toy")  # and flags junk
    for steered in (minus, plus):
        assert steered != plain  # the steering shows in the text
        assert not _degenerate(tokenizer, steered), (steered, _degenerate(tokenizer, steered))


def test_concepts_page_bad_inputs_on_a_tiny_model(tiny_app):
    at = _run(PAGES["6_Concepts"], press_run=False)
    assert not at.exception and not at.error and not at.get("plotly_chart")  # waits for Run
    for bad in ("", "w5|", "w5|w6|w7", " | w6"):
        at.text_input(key="target").set_value(bad).run()
        assert not at.exception and "expected a word or 'word|other word'" in at.error[0].value
        assert not any(b.label == "Run" for b in at.button)  # nothing can run
    at.text_input(key="target").set_value("w5 w6|w7").run()
    assert not at.exception and "single token" in at.error[0].value
    at.text_input(key="target").set_value("w5|w6").run()
    assert not at.exception and not at.error
    assert at.button(key="concepts_run")  # a good target: the Run button is back
    kinds = at.selectbox(key="kind").options
    assert "attn_gate" in kinds and "resid_post" in kinds


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
    if any(b.label == "Run" for b in at.button):  # not yet computed in this process
        at.button(key="patching_run").click().run()
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
    at.slider(key="n_random").set_value(11).run()  # a computation no other test has run
    assert not at.exception and not at.error and not at.get("plotly_chart")  # waits for Run
    at.button(key="concepts_run").click().run()
    assert not at.exception and not at.error and at.get("plotly_chart")
    table = at.dataframe[0].value
    assert len(table) == 4 and table["TCAV"].notna().all()


def test_progress_hooks_report_every_step_in_order(tiny_model):
    """The hooks the pages' progress bars hang on: each step once, counted up to the total."""
    from circuits.agreement import agreement
    from circuits.methods import AtP
    from interventions.steering import build_vector, evaluate_steering
    from probe.concepts import cross_layer
    from probe.tasks import Task

    model = tiny_model()
    seen = []
    hook = lambda what, done, total: seen.append((what, done, total))  # noqa: E731
    task = Task("t", ["w1 w2 w3 w4"], ["w1 w9 w3 w4"], ["w5"], ["w6"])
    methods = {"atp": AtP(), "atp again": AtP()}
    result = agreement(model, task, ("mlp_out",), False, methods, on_step=hook)
    assert [s[1:] for s in seen] == [(1, 3), (2, 3), (3, 3)]
    assert [s[0] for s in seen] == ["patched mlp_out", "atp on mlp_out", "atp again on mlp_out"]
    assert set(result.stats["mlp_out"]) == set(methods)

    seen.clear()
    vec = build_vector(model, "caa", ["w1 w2", "w3 w4"], ["w5 w6", "w7 w8"], "resid_post.1")
    ev = evaluate_steering(
        model, vec, ["w1 w2 w3"], lambda logits, lengths: 0.0, (0, 1), 2, on_step=hook
    )
    assert [s[1:] for s in seen] == [(1, 3), (2, 3), (3, 3)] and len(ev.random) == 2

    seen.clear()
    sets = [prompts(6, 5, seed=i) for i in range(11)]
    result = cross_layer(
        model, sets[0], sets[1:], "resid_post", "w5|w6", prompts(4, 6), on_step=hook
    )
    n_layers = model.dims.n_layers
    total = 1 + 10 + 1 + n_layers  # concept set, random sets, gradients, CAVs per layer
    assert [s[1:] for s in seen] == [(i, total) for i in range(1, total + 1)]
    assert seen[-1][0] == f"CAVs at resid_post.{n_layers - 1}" and len(result.layers) == n_layers


def test_gatescope_app_passes_the_server_settings_as_flags(monkeypatch):
    """Streamlit reads .streamlit/config.toml only when started in the repository root: the
    command passes the same settings (the browser test runs it from elsewhere)."""
    import tomllib

    from typer.testing import CliRunner

    import app.cli

    calls = []
    monkeypatch.setattr(app.cli.subprocess, "call", lambda cmd: calls.append(cmd) or 0)
    result = CliRunner().invoke(app.cli.app, ["app", "--port", "8600"])
    assert result.exit_code == 0, result.output
    flags = dict(a.removeprefix("--").split("=", 1) for a in calls[0] if a.startswith("--"))
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    for section, values in config.items():
        for name, value in values.items():
            want = str(value).lower() if isinstance(value, bool) else str(value)
            assert flags.get(f"{section}.{name}") == want, (section, name)
    assert flags["server.port"] == "8600" and flags["server.address"] == "localhost"
