"""Shared pieces of the Streamlit pages: the model picker, cached loading, error display,
and the state every page shares.

Pages call only the public API of ``probe``, ``interventions`` and ``circuits``. The model
shown is chosen in the sidebar (default: the bundled ``reference`` model, or the
``GATESCOPE_MODEL`` environment variable) and loaded once (``st.cache_resource``).

The model (a typed directory or hub id included), the prompt and the task are one state for
the whole app: kept in ``st.session_state`` under ``shared.*`` keys (widget keys are dropped
when a page that lacks the widget runs, these are not) and mirrored in the URL's query
parameters (``?model=...&prompt=...&task=...``), so a view can be bookmarked and shared.
"""

from __future__ import annotations

import os

# plotly imports pandas lazily; two script runs doing that at once (a rerun while the first
# run still draws) saw a half-initialised module, so it is imported whole before any page runs
import pandas  # noqa: F401
import streamlit as st

from probe.errors import GatescopeError

CHOICES = ["reference", "reference-plain", "reference-hybrid", "other (local directory or hub id)"]


def default_model() -> str:
    """The model the app opens on: ``GATESCOPE_MODEL`` if set, else ``reference``."""
    return os.environ.get("GATESCOPE_MODEL", "reference")


@st.cache_resource(show_spinner="Loading model...")
def cached_model(name: str):
    from probe import load_model

    return load_model(name)


SHARED = ("model", "prompt", "task")


def shared(name: str, default=None):
    """The app-wide value of ``name`` (model, prompt, task): this session's, else the URL's
    query parameter, else ``default``."""
    key = f"shared.{name}"
    if key not in st.session_state and name in st.query_params:
        st.session_state[key] = st.query_params[name]
    return st.session_state.get(key, default)


def remember(name: str, value) -> None:
    """Set the app-wide ``name`` and mirror it in the URL."""
    st.session_state[f"shared.{name}"] = value
    if value in (None, ""):
        if name in st.query_params:
            del st.query_params[name]
    elif st.query_params.get(name) != str(value):
        st.query_params[name] = str(value)


def _mirror_all() -> None:
    """Put every shared value in the URL (a page change starts from a bare URL)."""
    for name in SHARED:
        value = shared(name)
        if value not in (None, ""):
            remember(name, value)


def shared_text(label: str, default: str, key: str, area: bool = False, **kw) -> str:
    """A text input (or area) holding the app-wide prompt."""
    widget = st.text_area if area else st.text_input
    value = widget(label, shared("prompt", default), key=key, **kw)
    remember("prompt", value)
    return value


def shared_choice(where, name: str, label: str, options: list, key: str, **kw):
    """A selectbox over ``options`` holding the app-wide ``name`` (the task, say)."""
    current = shared(name)
    index = options.index(current) if current in options else 0
    value = where.selectbox(label, options, index=index, key=key, **kw)
    remember(name, value)
    return value


def pick_model():
    """Sidebar model picker; returns the loaded Model, or None after showing an error. The
    choice (and a typed path) is the app-wide ``model``."""
    st.sidebar.header("Model")
    _mirror_all()
    wanted = shared("model")
    if wanted is None:
        wanted = default_model()
    default = wanted if wanted in CHOICES[:-1] else CHOICES[-1]
    choice = st.sidebar.selectbox(
        "model", CHOICES, index=CHOICES.index(default), key="model_choice"
    )
    name = choice
    if choice == CHOICES[-1]:
        fallback = "" if wanted in CHOICES else wanted
        name = st.sidebar.text_input("directory or hub id", value=fallback, key="model_path")
        remember("model", name.strip())
        if not name.strip():
            st.info("Type a local model directory or a hub id in the sidebar.")
            return None
    else:
        remember("model", choice)
    try:
        return cached_model(name.strip())
    except GatescopeError as exc:
        st.error(str(exc))
    except (OSError, ValueError) as exc:
        st.error(f"could not load '{name}': {exc}")
    return None


def show_error(exc: Exception) -> None:
    st.error(str(exc))


def model_name(model) -> str:
    """The name the current model was loaded under (the cache key for results)."""
    choice = st.session_state.get("model_choice", default_model())
    if choice in CHOICES[:-1]:
        return choice
    return st.session_state.get("model_path") or model.name


def bundled_texts(n: int = 200) -> list[str]:
    """Up to ``n`` sentences from the bundled random text sets (prose, topic and sentiment
    sentences); a few built-in ones when data/tasks is absent."""
    from probe.tasks import load_texts

    texts: list[str] = []
    for i in range(12):
        try:
            texts += load_texts(f"random_{i}")
        except GatescopeError:
            break
        if len(texts) >= n:
            break
    return texts[:n] or [
        "When Mary and John went to the store, John gave a drink to Mary.",
        "The weather today is cold and wet.",
        "I loved the film and its music.",
    ]


CUSTOM = "your own pair"


def make_task(spec: tuple):
    """``("bundled", name, n)`` or ``("custom", clean, corrupt, answer, wrong)``."""
    from probe.tasks import Task, load_task

    if spec[0] == "bundled":
        return load_task(spec[1]).subset(spec[2])
    _, clean, corrupt, answer, wrong = spec
    return Task("custom pair", [clean], [corrupt], [answer], [wrong])


def pair_inputs(model) -> tuple | None:
    """Clean / corrupt prompts and answer / wrong tokens typed on the page: the task spec, or
    None after showing why the pair cannot be used (lengths differ, a word of several tokens)."""
    left, right = st.columns(2)
    clean = left.text_input(
        "clean prompt", "When Mary and John went to the store, John gave a drink to", key="clean"
    )
    corrupt = right.text_input(
        "corrupt prompt",
        "When Mary and John went to the store, Mary gave a drink to",
        key="corrupt",
    )
    answer = left.text_input("answer (one token)", " Mary", key="answer")
    wrong = right.text_input("wrong answer (one token)", " John", key="wrong")
    spec = ("custom", clean, corrupt, answer, wrong)
    try:
        make_task(spec).tokenize(model.tokenizer)
    except GatescopeError as exc:
        st.error(str(exc))
        return None
    return spec
