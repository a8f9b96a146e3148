"""Steering: build a vector from contrast pairs, compare generations, check random controls.

The strength is in units of the site's typical norm (mean |resid_post| over the bundled
prompts): strength 0.25 adds a vector a quarter as long as a typical residual vector."""

import json

import streamlit as st
import torch

from app.ui import cached_model, memo, model_name, pick_model, shared_text
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


STRENGTHS = [-1.0, -0.5, -0.25, -0.1, 0.0, 0.1, 0.25, 0.5, 1.0]
#: The page's defaults, a rule rather than a tuned number: CAA (the mean difference of all
#: pairs) at the residual stream a third of the way in, a quarter of the site's typical norm.
#: Measured on the bundled models (greedy continuations of a few prompts): at a quarter of the
#: norm the middle layer of the gated model fell into repeating one word, a third of the way
#: in the text moved and stayed readable on all three; a half of the norm and more was junk on
#: most sites (tests/test_app.py checks the default on the reference model).
DEFAULT_METHOD, DEFAULT_STRENGTH = "caa", 0.25


def default_layer(n_layers: int) -> int:
    return n_layers // 3


@st.cache_data(show_spinner="Measuring the site's typical norm...")
def typical_norm(name: str, site: str) -> float:
    """Mean norm of the site's value per token over the bundled sentiment prompts."""
    from probe import Tracer

    model = cached_model(name)
    norms = []
    with torch.no_grad():
        for batch in model.batches(load_texts("sentiment_prompts")[:32], 16):
            with Tracer(model, site, device="cpu", dtype=torch.float32) as tr:
                model.forward(batch.input_ids, batch.attention_mask)
            value = next(iter(tr.activations.values())).flatten(2)  # (B, T, D)
            mask = batch.attention_mask.bool().cpu()
            norms.append(value.norm(dim=-1)[mask])
    return float(torch.cat(norms).mean())


@st.cache_data(show_spinner=False)
def continuation(name, pairs_text: str, method: str, site: str, prompt: str, coef):
    """16 greedy tokens after ``prompt``, steered with ``coef`` times the vector (None:
    unsteered)."""
    vec = vector(name, pairs_text, method, site) if coef is not None else None
    return generate(cached_model(name), prompt, vec, coef, max_new_tokens=16)


def evaluation(name, pairs_text: str, method: str, site: str, coefs: tuple, on_step=None):
    """The word-logit metric per strength for the vector and 10 random vectors of its norm,
    once per server; ``on_step`` hears of each finished vector."""

    def compute():
        model = cached_model(name)
        words = json.loads((TASKS_DIR / "sentiment_words.json").read_text())
        return evaluate_steering(
            model,
            vector(name, pairs_text, method, site),
            load_texts("sentiment_prompts"),
            word_logit_metric(model, words["positive"], words["negative"]),
            coefs=coefs,
            n_random=10,
            on_step=on_step,
        )

    return memo(("steering control", name, pairs_text, method, site, coefs), compute)


model = pick_model()
if model is None:
    st.stop()
name = model_name(model)
pairs_text = st.text_area(
    "contrast pairs (positive | negative)", bundled_pairs(), height=150, key="pairs"
)
cols = st.columns(3)
methods = ["caa", "actadd", "pca"]
method = cols[0].selectbox("method", methods, index=methods.index(DEFAULT_METHOD), key="method")
site = cols[1].selectbox(
    "site",
    [f"resid_post.{i}" for i in range(model.dims.n_layers)],
    index=default_layer(model.dims.n_layers),
    key="site",
)
strength = cols[2].select_slider(
    "strength (x the site's typical norm)", STRENGTHS, value=DEFAULT_STRENGTH, key="strength"
)
prompt = shared_text("prompt", "Honestly, the film was", key="prompt")
try:
    vec = vector(name, pairs_text, method, site)
    typical = typical_norm(name, site)
    vnorm = float(vec.direction.norm())
    coefs = tuple(s_ * typical / vnorm for s_ in STRENGTHS)
    coef = coefs[STRENGTHS.index(strength)]
    st.caption(
        f"vector norm {vnorm:.3g}; typical |{site}| {typical:.3g}; strength {strength:+g} "
        f"adds {abs(strength) * typical:.3g} (coefficient {coef:+.3g} on the vector)"
    )
    shown = [-strength, 0.0, strength] if strength else [0.0]
    for col, s_ in zip(st.columns(len(shown)), shown, strict=True):
        c = coefs[STRENGTHS.index(s_)] if s_ in STRENGTHS else -coef
        vec_args = (pairs_text, method, site) if s_ else ("", "", "")  # unsteered: one entry
        text = continuation(name, *vec_args, prompt, c if s_ else None)
        col.markdown(f"**strength {s_:+g}**" + ("" if s_ else " (unsteered)"))
        col.text(prompt + text)
    if (TASKS_DIR / "sentiment_words.json").is_file():
        run = st.button("Run the random-vector control (about 10 s)", key="steer_run")
        key = (name, pairs_text, method, site)
        if run or st.session_state.get("steer_done") == key:
            bar = st.progress(0.0, text="the steering vector at every strength...")
            ev = evaluation(
                name,
                pairs_text,
                method,
                site,
                coefs,
                on_step=lambda what, i, n: bar.progress(i / n, text=f"{what} done ({i} of {n})"),
            )
            bar.empty()
            st.session_state["steer_done"] = key
            fig = ev.figure()
            fig.update_traces(x=list(STRENGTHS))
            fig.add_vline(x=strength, line_dash="dash", annotation_text="current")
            fig.update_layout(
                xaxis_title="strength (x typical norm)",
                yaxis_title="positive - negative word logits",
            )
            st.plotly_chart(fig, width="stretch", key="steering_eval")
            beats = ev.beats_random_at(coef)
            st.markdown(
                f"**Verdict at strength {strength:+g}:** "
                + (
                    "outside the band of 10 random vectors of equal norm."
                    if beats
                    else "inside the band of random vectors of equal norm: no better than noise."
                )
            )
            st.download_button(
                "effect per strength (JSON)",
                json.dumps({"strength": STRENGTHS, **ev.to_dict()}),
                file_name="steering.json",
                key="steer_json",
            )
except GatescopeError as exc:
    st.error(str(exc))
