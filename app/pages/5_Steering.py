"""Steering: build a vector from contrast pairs, compare generations, check random controls."""

import json

import streamlit as st

from app.ui import cached_model, model_name, pick_model
from interventions.steering import build_vector, evaluate_steering, generate, word_logit_metric
from probe.errors import GatescopeError
from probe.tasks import TASKS_DIR, load_texts

st.set_page_config(page_title="gatescope: steering", layout="wide")
st.title("Steering")


def bundled_pairs() -> str:
    path = TASKS_DIR / "sentiment_pairs.jsonl"
    if not path.is_file():
        return "The film was great. | The film was awful."
    rows = [json.loads(x) for x in path.read_text().splitlines()[:30]]
    return "\n".join(f"{r['positive']} | {r['negative']}" for r in rows)


@st.cache_data(show_spinner="Building the vector...")
def vector(name: str, pairs_text: str, method: str, site: str):
    pairs = [line.split("|") for line in pairs_text.splitlines() if line.strip()]
    if not pairs or any(len(p) != 2 for p in pairs):
        raise GatescopeError("write one pair per line as 'positive text | negative text'")
    return build_vector(
        cached_model(name),
        method,
        [p[0].strip() for p in pairs],
        [p[1].strip() for p in pairs],
        site,
    )


@st.cache_data(show_spinner="Evaluating against random vectors...")
def evaluation(name: str, pairs_text: str, method: str, site: str):
    model = cached_model(name)
    words = json.loads((TASKS_DIR / "sentiment_words.json").read_text())
    metric = word_logit_metric(model, words["positive"], words["negative"])
    return evaluate_steering(
        model,
        vector(name, pairs_text, method, site),
        load_texts("sentiment_prompts"),
        metric,
        n_random=10,
    )


model = pick_model()
if model is None:
    st.stop()
name = model_name(model)
pairs_text = st.text_area(
    "contrast pairs (positive | negative)", bundled_pairs(), height=150, key="pairs"
)
cols = st.columns(3)
method = cols[0].selectbox("method", ["caa", "actadd", "pca"], key="method")
site = cols[1].selectbox(
    "site",
    [f"resid_post.{i}" for i in range(model.dims.n_layers)],
    index=model.dims.n_layers // 2,
    key="site",
)
coef = cols[2].slider("coefficient", -8.0, 8.0, 4.0, 0.5, key="coef")
prompt = st.text_input("prompt", "Honestly, the film was", key="prompt")
try:
    vec = vector(name, pairs_text, method, site)
    left, right = st.columns(2)
    left.markdown(f"**unsteered**\n\n{prompt}{generate(model, prompt, None, max_new_tokens=16)}")
    steered = generate(model, prompt, vec, coef, max_new_tokens=16)
    right.markdown(f"**steered ({coef:+g})**\n\n{prompt}{steered}")
    if (TASKS_DIR / "sentiment_words.json").is_file():
        st.plotly_chart(
            evaluation(name, pairs_text, method, site).figure(),
            width="stretch",
            key="steering_eval",
        )
except GatescopeError as exc:
    st.error(str(exc))
