"""``gatescope patch`` and ``gatescope steer build|generate|eval``."""

from __future__ import annotations

from pathlib import Path

import typer

from app.cli_common import (
    MODEL_HELP,
    check_out,
    emit,
    finite,
    json_out,
    load,
    model_options,
    note,
    positive,
    provenance,
    read_prompts,
    read_task,
    show_progress,
    user_errors,
)
from probe.errors import GatescopeError
from probe.io import read_jsonl

steer_app = typer.Typer(help="Build steering vectors, generate with them, evaluate them.")


def _positions(text: str | None):
    if text in (None, "all"):
        return None
    if text == "each":
        return "each"
    try:
        return [int(p) for p in text.split(",")]
    except ValueError:
        raise GatescopeError(
            f"--positions {text}: expected all, each, prompt/generated (steer), or numbers "
            "like 0,3,-1"
        ) from None


def patch(
    model: str = typer.Argument(..., help=MODEL_HELP),
    task: str = typer.Option(..., "--task", help="bundled task (ioi, facts, induction) or JSONL"),
    sites: str = typer.Option(..., "--sites", help="e.g. 'head_out.*' or 'resid_pre.*'"),
    positions: str = typer.Option(None, "--positions", help="all (default), each, or 0,3,-1"),
    mode: str = typer.Option("denoise", "--mode", help="denoise or noise"),
    limit: int = typer.Option(None, "--limit", help="use the first N prompts"),
    max_memory: str = typer.Option(
        "auto",
        "--max-memory",
        help="memory budget of the sweep, e.g. 2GB or 512MB; rows per pass are cut to fit "
        "(auto: half the memory free on the device)",
    ),
    json_: bool = typer.Option(False, "--json"),
    out: Path = typer.Option(None, "--out", help="write the result as JSON"),
) -> None:
    """Activation patching sweep: the normalised effect of each component."""
    from interventions.budget import parse_bytes, resolve_budget
    from interventions.patching import activation_patching

    positive(limit, "--limit")
    if max_memory.strip().lower() != "auto":
        parse_bytes(max_memory, "--max-memory")  # a bad size, before the model loads
    pos = _positions(positions)
    t = read_task(task, limit)
    m = load(model)
    budget = resolve_budget(max_memory, m.device)
    result = activation_patching(
        m, t, sites, positions=pos, mode=mode, max_memory=budget, progress=show_progress()
    )
    note(positions=positions or "all", max_memory=budget)
    if not result.resumed and result.resume_reason:  # stderr: --json stays clean
        typer.echo(f"note: every patched pass ran in full: {result.resume_reason}", err=True)
    if emit(result.to_dict(), json_, out):
        return
    typer.echo(
        f"{mode} patching on {t.name} ({result.n_prompts} prompts): clean LD "
        f"{result.clean_logit_diff:.3f}, corrupt LD {result.corrupt_logit_diff:.3f}"
    )
    typer.echo(_memory_line(result))
    for c in result.top(15):
        typer.echo(f"{c.label:>24}  {c.effect:+.3f}")


def _memory_line(result) -> str:
    from interventions.budget import human

    how = "measured" if result.memory.get("measured") else "estimated"
    budget = result.memory.get("budget")
    limit = "no budget" if budget is None else f"budget {human(budget)}"
    return (
        f"{result.rows_per_pass} rows per pass, peak memory {human(result.peak_memory)} "
        f"({how}), {limit}"
    )


def _pairs(path: Path) -> tuple[list[str], list[str]]:
    rows = read_jsonl(path, "--pairs", ("positive", "negative"))
    for n, r in enumerate(rows, 1):
        if not all(isinstance(r[k], str) and r[k].strip() for k in ("positive", "negative")):
            raise GatescopeError(
                f"--pairs {path} pair {n}: 'positive' and 'negative' must be non-empty texts"
            )
    return [r["positive"] for r in rows], [r["negative"] for r in rows]


@steer_app.command("build")
@user_errors
@model_options
def build(
    model: str = typer.Argument(..., help=MODEL_HELP),
    method: str = typer.Option("caa", "--method", help="actadd, caa or pca"),
    pairs: Path = typer.Option(..., "--pairs", help="JSONL with positive/negative texts"),
    site: str = typer.Option(..., "--site", help="e.g. resid_post.1"),
    out: Path = typer.Option(..., "--out", help="NAME.safetensors (+ NAME.json)"),
    json_: bool = typer.Option(False, "--json", help="print the vector's summary as JSON"),
    force: bool = typer.Option(False, "--force", help="overwrite an existing vector"),
) -> None:
    """Build a steering vector from contrast pairs."""
    from interventions.steering import build_vector

    target = Path(out).with_suffix(".safetensors")
    check_out(target, force)
    check_out(target.with_suffix(".json"), force)
    pos, neg = _pairs(pairs)
    vec = build_vector(load(model), method, pos, neg, site, data=Path(pairs).name)
    vec.provenance = {**(vec.provenance or {}), **provenance()}
    path = vec.save(out)
    norm = float(vec.direction.norm())
    note(n_prompts=len(pos))
    if emit(
        {"vector": str(path), "site": str(vec.site), "method": method, "norm": norm}, json_, None
    ):
        return
    typer.echo(f"saved {method} vector at {vec.site} (norm {norm:.3f}) to {path}")


@steer_app.command("generate")
@user_errors
@model_options
@json_out
def steer_generate(
    model: str = typer.Argument(..., help=MODEL_HELP),
    vector: Path = typer.Option(..., "--vector"),
    coef: float = typer.Option(..., "--coef"),
    prompt: str = typer.Option(..., "--prompt"),
    max_new_tokens: int = typer.Option(20, "--max-new-tokens"),
    positions: str = typer.Option(
        "all", "--positions", help="all, prompt, generated, or token indices like 0,-1"
    ),
    json_: bool = typer.Option(False, "--json"),
    out: Path = typer.Option(None, "--out", help="write both texts as JSON"),
) -> None:
    """Generate with and without the steering vector, side by side."""
    from interventions.steering import SteeringVector, generate

    finite(coef, "--coef")
    positive(max_new_tokens, "--max-new-tokens", allow_none=False)
    if not prompt.strip():
        raise GatescopeError("--prompt is empty; give some text")
    pos = positions if positions in ("prompt", "generated") else _positions(positions)
    if pos == "each":
        raise GatescopeError("--positions each: steering takes all, prompt, generated or indices")
    SteeringVector.load(vector)  # a broken vector file fails before the model loads
    m = load(model)
    vec = SteeringVector.load(vector, m)
    plain = generate(m, prompt, None, max_new_tokens=max_new_tokens)
    steered = generate(m, prompt, vec, coef, max_new_tokens, pos)
    note(n_prompts=1, site=str(vec.site), positions=positions, coef=coef)
    result = {"prompt": prompt, "coef": coef, "unsteered": plain, "steered": steered}
    if emit(result, json_, out):
        return
    typer.echo(f"unsteered: {prompt}{plain}")
    typer.echo(f"steered ({coef:+g}): {prompt}{steered}")


@steer_app.command("eval")
@user_errors
@model_options
@json_out
def steer_eval(
    model: str = typer.Argument(..., help=MODEL_HELP),
    vector: Path = typer.Option(..., "--vector"),
    prompts: Path = typer.Option(..., "--prompts", help="held-out prompts (text or JSONL)"),
    positive_words: str = typer.Option(None, "--positive-words", help="comma-separated"),
    negative_words: str = typer.Option(None, "--negative-words", help="comma-separated"),
    coefs: str = typer.Option("-4,-2,-1,0,1,2,4", "--coefs"),
    n_random: int = typer.Option(10, "--random", help="random vectors of equal norm"),
    json_: bool = typer.Option(False, "--json"),
    out: Path = typer.Option(None, "--out", help="write the curves as JSON"),
) -> None:
    """Behaviour metric per coefficient for the vector and random controls of equal norm."""
    from interventions.steering import SteeringVector, evaluate_steering, word_logit_metric
    from probe.io import read_json
    from probe.tasks import TASKS_DIR

    try:
        coef_list = [float(c) for c in coefs.split(",")]
    except ValueError:
        raise GatescopeError(f"--coefs {coefs}: expected numbers like -2,0,2") from None
    for c in coef_list:
        finite(c, "--coefs")
    if n_random < 0:
        raise GatescopeError(f"--random {n_random}: expected 0 or more random vectors")
    texts = read_prompts(None, prompts)
    SteeringVector.load(vector)
    if positive_words is None or negative_words is None:
        words = read_json(TASKS_DIR / "sentiment_words.json", "word list")
        positive_words = positive_words or ",".join(words["positive"])
        negative_words = negative_words or ",".join(words["negative"])
    m = load(model)
    vec = SteeringVector.load(vector, m)
    metric = word_logit_metric(m, positive_words.split(","), negative_words.split(","))
    result = evaluate_steering(m, vec, texts, metric, coef_list, n_random, progress=show_progress())
    note(n_prompts=len(texts), site=str(vec.site), positions="all", seed=0)
    if emit(result.to_dict(), json_, out):
        return
    for i, c in enumerate(result.coefs):
        rand = [r[i] for r in result.random]
        span = f"[{min(rand):+.3f}, {max(rand):+.3f}]" if rand else "-"
        typer.echo(f"coef {c:+6.2f}: vector {result.vector[i]:+.3f}   random {span}")


def register(app: typer.Typer) -> None:
    app.command("patch")(user_errors(model_options(json_out(patch))))
    app.add_typer(steer_app, name="steer")
