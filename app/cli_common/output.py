"""Results: ``--json`` / ``--out FILE`` / ``--force`` (``@json_out``, the path checked
before any work), the provenance block every result carries, and writing or printing it."""

from __future__ import annotations

import inspect
import json
import sys
import time
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

from app.cli_common.run import _RUN, _add_params, _opt
from probe import io
from probe.io import check_out

_OUT_PARAMS = [
    _opt("json_", False, "--json", help="print the result as JSON on stdout"),
    _opt("out", None, "--out", help="write the result as JSON to this file", annotation=Path),
    _opt("force", False, "--force", help="overwrite an existing --out file"),
]


def json_out(fn: Callable) -> Callable:
    """Add ``--json``, ``--out FILE`` and ``--force`` to a command (those it declares itself
    are kept) and check the ``--out`` path before any work."""
    own = set(inspect.signature(fn).parameters)

    @wraps(fn)
    def wrapper(*args, **kwargs):
        values = {}
        for p in _OUT_PARAMS:
            values[p.name] = kwargs.get(p.name) if p.name in own else kwargs.pop(p.name, None)
        check_out(values["out"], bool(values["force"]))
        return fn(*args, **kwargs)

    _add_params(fn, wrapper, _OUT_PARAMS)
    return wrapper


METRICS = {
    "patch": (
        "logit difference",
        "LD = logit(answer) - logit(wrong) at the last token; denoise effect = "
        "(LD_patched - LD_corrupt) / (LD_clean - LD_corrupt); noise effect = "
        "(LD_patched - LD_clean) / (LD_clean - LD_corrupt)",
    ),
    "attribute": (
        "attributed logit difference",
        "score = attribution of LD = logit(answer) - logit(wrong), normalised by "
        "(LD_clean - LD_corrupt) like denoising activation patching",
    ),
    "circuit": (
        "faithfulness",
        "(LD_circuit - LD_corrupt) / (LD_clean - LD_corrupt), nodes outside the circuit "
        "patched from the corrupt run",
    ),
    "path-patch": (
        "logit difference",
        "(LD_path - LD_corrupt) / (LD_clean - LD_corrupt): the corrupt run with one receiver "
        "reading its input plus the sender's clean - corrupt write",
    ),
    "agreement": ("correlation", "Pearson / Spearman r of method scores with patching effects"),
    "gates": ("gate statistics", "mean sigmoid gate, fraction below thresholds, sink, max |x|"),
    "steer eval": ("word logit difference", "mean logit(positive words) - mean logit(negative)"),
    "steer build": (
        "steering vector",
        "caa: mean(act(positive) - act(negative)) at the last token; actadd: act(positive) - "
        "act(negative) of the first pair; pca: first right singular vector of the uncentred "
        "differences, scaled to their mean norm",
    ),
    "steer generate": (
        "generated text",
        "greedy continuation with coef * vector added to the site's value at the chosen "
        "positions, next to the unsteered continuation",
    ),
    "trace": ("site activations", "the value of each site per prompt and position, unmodified"),
    "reference eval": (
        "held-out accuracy and perplexity",
        "IOI: accuracy (logit(answer) > logit(wrong)) and mean LD; induction and facts: top-1 "
        "accuracy; prose: perplexity = exp(mean next-token cross-entropy); gate effects per "
        "layer against the ungated twin",
    ),
    "sae eval": (
        "reconstruction and downstream loss",
        "explained variance = 1 - sum |x - x_hat|^2 / sum |x - mean x|^2; L0 = mean active "
        "latents; CE loss score = (CE_zero-ablated - CE_sae) / (CE_zero-ablated - CE_clean)",
    ),
    "sae features": (
        "latent activations",
        "top-activating tokens per latent with context, and the latent's decoder direction "
        "through the unembedding (logit effect = W_U @ W_dec[latent])",
    ),
    "concept cav": ("held-out accuracy", "logistic-regression CAV, concept vs random set"),
    "concept tcav": (
        "TCAV score",
        "fraction of inputs with a positive directional derivative of the target logit along "
        "the CAV; t-test against random CAVs",
    ),
    "concept probe": ("probe accuracy", "held-out logistic-regression accuracy per layer"),
}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gatescope")
    except PackageNotFoundError:
        return "unknown"


def provenance(result: Any = None) -> dict:
    """The provenance block of the current command's result."""
    run = _RUN.get()
    if run is None:
        return {"gatescope": _version()}
    metric = METRICS.get(run.command)
    block: dict[str, Any] = {
        "gatescope": _version(),
        "command": f"gatescope {run.command}",
        "model": run.model,
        "sources": [{"path": p, "sha256": h} for p, h in (io.SOURCES.get() or {}).items()],
        **run.options,
    }
    if metric is not None:
        block["metric"], block["formula"] = metric
    if isinstance(result, dict):
        for key in ("n_prompts", "metric", "mode", "task", "site", "sites"):
            if key in result and not isinstance(result[key], (dict, list)):
                block.setdefault(key, result[key])
    block.update(run.notes or {})
    if "sites" not in block and "site" in block:  # one key for one site or a pattern
        block["sites"] = block["site"]
    if run.model is not None:
        block.setdefault("device", run.model["device"])
        block.setdefault("dtype", run.model["dtype"])
    block["started"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(run.started))
    block["seconds"] = round(time.time() - run.started, 3)
    return block


def _with_provenance(obj: Any) -> Any:
    run = _RUN.get()
    if run is None:
        return obj
    if run.cached is None or run.cached[0] is not obj:  # one block for --json and --out
        run.cached = (obj, provenance(obj if isinstance(obj, dict) else None))
    block = run.cached[1]
    if isinstance(obj, dict):
        return {**obj, "provenance": block}
    return {"results": obj, "provenance": block}


def write_json(obj: Any, path: Path) -> None:
    """Write a result (with its provenance) atomically, with the user's umask."""
    io.write_text(path, json.dumps(_with_provenance(obj), indent=2))


def echo_json(obj: Any) -> None:
    """Print a result (with its provenance) as JSON on stdout."""
    sys.stdout.write(json.dumps(_with_provenance(obj), indent=2) + "\n")


def emit(obj: Any, json_: bool, out: Path | None) -> bool:
    """Write ``obj`` to ``out`` and/or print it as JSON; True if printed."""
    if out is not None:
        write_json(obj, out)
    if json_:
        echo_json(obj)
    return bool(json_)


def check_out_path(path: Path | None, force: bool = True) -> None:
    """Refuse an output path that is a directory or whose directory does not exist (and an
    existing file unless ``force``), before any work starts."""
    check_out(path, force)
