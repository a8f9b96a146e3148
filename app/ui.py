"""Shared pieces of the Streamlit pages: the model picker, cached loading, error display,
and the state every page shares.

Pages call only the public API of ``probe``, ``interventions`` and ``circuits``. The model
shown is chosen in the sidebar (default: the bundled ``reference`` model, or the
``GATESCOPE_MODEL`` environment variable) and loaded once (``st.cache_resource``).

The model (a typed directory or hub id included), the prompt and the task are one state for
the whole app: kept in ``st.session_state`` under ``shared.*`` keys (widget keys are dropped
when a page that lacks the widget runs, these are not) and mirrored in the URL's query
parameters (``?model=...&prompt=...&task=...``), so a view can be bookmarked and shared.

The sidebar's model options are the CLI's (``--device``, ``--dtype``, ``--device-map``,
``--backend``, ``--remote``, ``--trust-remote-code``), checked by the same function before
anything is read, and app-wide like the model; device, dtype, device map and backend are in
the URL too, while "trust remote code" and "run remotely" are kept for the session only: a
shared link never runs a checkpoint's code or sends prompts away without the user's own tick.
Cached results are keyed by :class:`ModelRef` (name and options).
"""

from __future__ import annotations

import os
from dataclasses import asdict
from typing import NamedTuple

# plotly imports pandas lazily; two script runs doing that at once (a rerun while the first
# run still draws) saw a half-initialised module, so it is imported whole before any page runs
import pandas  # noqa: F401
import streamlit as st

from probe.errors import GatescopeError

CHOICES = ["reference", "reference-plain", "reference-hybrid", "other (local directory or hub id)"]


def default_model() -> str:
    """The model the app opens on: ``GATESCOPE_MODEL`` if set, else ``reference``."""
    return os.environ.get("GATESCOPE_MODEL", "reference")


class ModelRef(NamedTuple):
    """The model a page works on: its name (bundled name, directory or hub id) and the
    model options it was loaded with, as sorted ``(option, value)`` pairs of those that differ
    from the default. Hashable, so cached computations are keyed by both."""

    name: str
    options: tuple = ()

    def load(self):
        return cached_model(self.name, **dict(self.options))

    def twin(self, name: str) -> ModelRef:
        """Another model under the same options (the gated model's ungated twin, say)."""
        return ModelRef(name, self.options)

    def __str__(self) -> str:
        return self.name


@st.cache_resource(show_spinner="Loading model...")
def _load(
    name: str,
    device: str | None,
    dtype: str | None,
    device_map: str | None,
    backend: str,
    remote: bool,
    trust_remote_code: bool,
):
    from probe import load_model

    return load_model(
        name,
        device=device,
        dtype=dtype,
        device_map=device_map,
        backend=backend,
        remote=remote,
        trust_remote_code=trust_remote_code,
    )


def cached_model(name: str | ModelRef, **opts):
    """The model ``name`` loaded with the model options ``opts`` (device, dtype, device_map,
    backend, remote, trust_remote_code), once per session of the server: the options are
    checked as the CLI checks them before anything is read. A :class:`ModelRef` carries its
    own options."""
    from app.cli_common.model import ModelOptions, check_model_name, check_model_options

    if isinstance(name, ModelRef):
        opts = {**dict(name.options), **opts}
        name = name.name
    options = ModelOptions(**opts)
    check_model_options(options)
    check_model_name(name)
    return _load(name, **asdict(options))


OPTIONS = ("device", "dtype", "device_map", "backend", "remote", "trust_remote_code")
SHARED = ("model", "prompt", "task", "device", "dtype", "device_map", "backend")
#: Options kept for the session but never read from the URL: a shared link must not run a
#: checkpoint's own code or send prompts to a remote server without the user's own tick.
SESSION_ONLY = ("remote", "trust_remote_code")
OPTION_LABELS = {
    "--device-map": "'device map'",
    "--device": "'device'",
    "--dtype": "'dtype'",
    "--backend": "'backend'",
    "--remote": "'run remotely (NDIF)'",
    "--trust-remote-code": "'trust remote code'",
}
DEVICE_MAPS = ["none", "auto", "balanced", "sequential", "cpu"]
#: Option values that mean "not given": kept out of the URL.
URL_DEFAULTS = {"dtype": "default", "device_map": "none", "backend": "hooks"}


def app_words(message: str) -> str:
    """An error written for the CLI, with each option flag named as the sidebar names it."""
    for flag, label in OPTION_LABELS.items():  # --device-map before --device
        message = message.replace(flag, label)
    return message.replace("trust_remote_code=True", "the checkbox")


def shared(name: str, default=None):
    """The app-wide value of ``name`` (model, prompt, task, a model option): this session's,
    else the URL's query parameter (never for the session-only options), else ``default``."""
    key = f"shared.{name}"
    if key not in st.session_state and name in SHARED and name in st.query_params:
        st.session_state[key] = st.query_params[name]
    return st.session_state.get(key, default)


def remember(name: str, value) -> None:
    """Set the app-wide ``name`` and mirror it in the URL (session-only options stay out)."""
    st.session_state[f"shared.{name}"] = value
    if name not in SHARED:
        return
    if value in (None, "") or value == URL_DEFAULTS.get(name):
        if name in st.query_params:
            del st.query_params[name]
    elif st.query_params.get(name) != str(value):
        st.query_params[name] = str(value)


def _mirror_all() -> None:
    """Put every shared value in the URL (a page change starts from a bare URL); drop the
    session-only options from it."""
    for name in SESSION_ONLY:
        if name in st.query_params:
            del st.query_params[name]
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


def _option_widgets() -> dict:
    """The sidebar's model options (as the CLI's --device, --dtype, --device-map, --backend,
    --remote, --trust-remote-code), each app-wide; returns the non-default ones."""
    given = any(shared(k) not in (None, "", False, URL_DEFAULTS.get(k)) for k in OPTIONS)
    box = st.sidebar.expander("Model options", expanded=given)
    device = box.text_input(
        "device", shared("device", ""), key="opt_device", placeholder="default (cpu, cuda:1...)"
    ).strip()
    dtypes = ["default", "float32", "bfloat16", "float16"]
    dtype = shared_choice(box, "dtype", "dtype", dtypes, key="opt_dtype")
    device_map = shared_choice(box, "device_map", "device map", DEVICE_MAPS, key="opt_map")
    backend = shared_choice(box, "backend", "backend", ["hooks", "nnsight"], key="opt_backend")
    remote = box.checkbox("run remotely (NDIF)", bool(shared("remote", False)), key="opt_remote")
    trust = box.checkbox(
        "trust remote code",
        bool(shared("trust_remote_code", False)),
        key="opt_trust",
        help="run the checkpoint's own modelling code (transformers trust_remote_code); "
        "only for a source you trust",
    )
    remember("device", device)
    remember("remote", remote)
    remember("trust_remote_code", trust)
    given = {
        "device": device or None,
        "dtype": None if dtype == "default" else dtype,
        "device_map": None if device_map == "none" else device_map,
        "backend": backend,
        "remote": remote,
        "trust_remote_code": trust,
    }
    defaults = {"backend": "hooks", "remote": False, "trust_remote_code": False}
    return {k: v for k, v in given.items() if v != defaults.get(k)}


def pick_model():
    """Sidebar model picker with the model options; returns the loaded Model, or None after
    showing an error. The choice (and a typed path) and the options are app-wide."""
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
    name = name.strip()
    remember("model", name)
    options = _option_widgets()
    st.session_state["model_ref"] = ModelRef(name, tuple(sorted(options.items())))
    if not name:
        st.info("Type a local model directory or a hub id in the sidebar.")
        return None
    try:
        return cached_model(name, **options)
    except GatescopeError as exc:
        st.error(app_words(str(exc)))
    except (OSError, ValueError) as exc:
        st.error(f"could not load '{name}': {exc}")
    return None


def show_error(exc: Exception) -> None:
    st.error(str(exc))


def model_name(model) -> ModelRef:
    """What the current model was loaded as: its name and model options (the cache key for
    results; ``str()`` of it is the name)."""
    ref = st.session_state.get("model_ref")
    return ref if ref is not None else ModelRef(model.name)


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


def token_labels(tokenizer, ids) -> list[str]:
    """One label per token id, ``"i:text"``, with each multi-byte character shown whole on
    the token that completes it (the text each token adds to the decoded prefix), so no
    label shows a lone ``\\ufffd``; a token that adds nothing yet shows ``…``."""
    ids = [int(i) for i in ids]
    labels, before = [], ""
    for i in range(len(ids)):
        text = tokenizer.decode(ids[: i + 1])
        piece = text[len(before) :] if text.startswith(before) else text
        piece = piece.replace("\ufffd", "")
        labels.append(f"{i}:{piece if piece.strip() else repr(piece) if piece else '…'}")
        before = text if "\ufffd" not in text else before
    return labels


def prompt_labels(model, prompt: str) -> list[str]:
    """:func:`token_labels` of ``prompt`` as the model tokenizes it."""
    return token_labels(
        model.tokenizer, model.tokenizer(prompt, add_special_tokens=True)["input_ids"]
    )


def csv_text(rows: list[dict]) -> str:
    """``rows`` (dicts with the same keys) as CSV text, a header line first."""
    import csv
    import io

    out = io.StringIO()
    if rows:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return out.getvalue()


def grid_rows(z, x, y, x_name: str, y_name: str, value: str) -> list[dict]:
    """A heatmap's numbers in long form: one row per cell (``None`` for a gap)."""
    rows = []
    for label_y, row in zip(y, z, strict=True):
        for label_x, v in zip(x, row, strict=True):
            missing = v is None or v != v  # NaN marks a gap
            rows.append({y_name: label_y, x_name: label_x, value: None if missing else v})
    return rows


def download_csv(where, label: str, rows: list[dict], file_name: str, key: str) -> None:
    """A CSV download button for the numbers behind a figure."""
    where.download_button(
        f"{label} (CSV)", csv_text(rows), file_name=file_name, mime="text/csv", key=key
    )


@st.cache_resource
def _finished() -> set:
    return set()


def run_button(args: tuple, key: str, info: str) -> bool:
    """Whether the long computation keyed by ``args`` may run now: it finished before in
    this server (its results are cached, so it draws at once) or its Run button was just
    pressed. Otherwise shows ``info`` under the button and returns False."""
    if (key, args) in _finished():
        return True
    if st.button("Run", key=key, type="primary"):
        return True
    st.info(info)
    return False


def finished(args: tuple, key: str) -> None:
    """Record that the computation keyed by ``args`` ran to the end (see :func:`run_button`)."""
    _finished().add((key, args))


@st.cache_resource
def _memo_store() -> dict:
    return {}


def memo(key: tuple, compute):
    """``compute()``'s value for ``key``, computed once per server: a cache for work that
    moves a progress bar drawn outside it (``st.cache_data`` replays the elements a cached
    function touches and refuses ones made outside it). ``key`` names the work in full."""
    store = _memo_store()
    if key not in store:
        store[key] = compute()
    return store[key]
