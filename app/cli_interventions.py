"""``gatescope patch`` and ``gatescope steer build|generate|eval``."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from app.cli_common import MODEL_HELP, check_out_path, echo_json, load, read_prompts, user_errors
from probe.errors import GatescopeError

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
    json_: bool = typer.Option(False, "--json"),
    out: Path = typer.Option(None, "--out", help="write the result as JSON"),
) -> None:
    """Activation patching sweep: the normalised effect of each component."""
    from app.cli_common import write_json
    from interventions.patching import activation_patching
    from probe.tasks import load_task

    check_out_path(out)
    t = load_task(task)
    t = t.subset(limit) if limit else t
    result = activation_patching(
        load(model), t, sites, positions=_positions(positions), mode=mode, progress=not json_
    )
    if out is not None:
        write_json(result.to_dict(), out)
    if json_:
        echo_json(result.to_dict())
        return
    typer.echo(
        f"{mode} patching on {t.name} ({result.n_prompts} prompts): clean LD "
        f"{result.clean_logit_diff:.3f}, corrupt LD {result.corrupt_logit_diff:.3f}"
    )
    for c in result.top(15):
        typer.echo(f"{c.label:>24}  {c.effect:+.3f}")


def _pairs(path: Path) -> tuple[list[str], list[str]]:
    if not Path(path).is_file():
        raise GatescopeError(f"--pairs {path}: no such file")
    rows = [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln.strip()]
    if not rows or any("positive" not in r or "negative" not in r for r in rows):
        raise GatescopeError(f"--pairs {path}: expected JSON lines with 'positive' and 'negative'")
    return [r["positive"] for r in rows], [r["negative"] for r in rows]


@steer_app.command("build")
@user_errors
def build(
    model: str = typer.Argument(..., help=MODEL_HELP),
    method: str = typer.Option("caa", "--method", help="actadd, caa or pca"),
    pairs: Path = typer.Option(..., "--pairs", help="JSONL with positive/negative texts"),
    site: str = typer.Option(..., "--site", help="e.g. resid_post.1"),
    out: Path = typer.Option(..., "--out", help="NAME.safetensors (+ NAME.json)"),
) -> None:
    """Build a steering vector from contrast pairs."""
    from interventions.steering import build_vector

    check_out_path(out)
    pos, neg = _pairs(pairs)
    vec = build_vector(load(model), method, pos, neg, site, data=Path(pairs).name)
    path = vec.save(out)
    typer.echo(
        f"saved {method} vector at {vec.site} (norm {float(vec.direction.norm()):.3f}) to {path}"
    )


@steer_app.command("generate")
@user_errors
def steer_generate(
    model: str = typer.Argument(..., help=MODEL_HELP),
    vector: Path = typer.Option(..., "--vector"),
    coef: float = typer.Option(..., "--coef"),
    prompt: str = typer.Option(..., "--prompt"),
    max_new_tokens: int = typer.Option(20, "--max-new-tokens"),
    positions: str = typer.Option(
        "all", "--positions", help="all, prompt, generated, or token indices like 0,-1"
    ),
) -> None:
    """Generate with and without the steering vector, side by side."""
    from interventions.steering import SteeringVector, generate

    pos = positions if positions in ("prompt", "generated") else _positions(positions)
    if pos == "each":
        raise GatescopeError("--positions each: steering takes all, prompt, generated or indices")
    m = load(model)
    vec = SteeringVector.load(vector, m)
    typer.echo(f"unsteered: {prompt}{generate(m, prompt, None, max_new_tokens=max_new_tokens)}")
    steered = generate(m, prompt, vec, coef, max_new_tokens, pos)
    typer.echo(f"steered ({coef:+g}): {prompt}{steered}")


@steer_app.command("eval")
@user_errors
def steer_eval(
    model: str = typer.Argument(..., help=MODEL_HELP),
    vector: Path = typer.Option(..., "--vector"),
    prompts: Path = typer.Option(..., "--prompts", help="held-out prompts (text or JSONL)"),
    positive: str = typer.Option(None, "--positive-words", help="comma-separated"),
    negative: str = typer.Option(None, "--negative-words", help="comma-separated"),
    coefs: str = typer.Option("-4,-2,-1,0,1,2,4", "--coefs"),
    n_random: int = typer.Option(10, "--random", help="random vectors of equal norm"),
    json_: bool = typer.Option(False, "--json"),
) -> None:
    """Behaviour metric per coefficient for the vector and random controls of equal norm."""
    from interventions.steering import SteeringVector, evaluate_steering, word_logit_metric
    from probe.tasks import TASKS_DIR

    m = load(model)
    vec = SteeringVector.load(vector, m)
    if positive is None or negative is None:
        words = json.loads((TASKS_DIR / "sentiment_words.json").read_text())
        positive = positive or ",".join(words["positive"])
        negative = negative or ",".join(words["negative"])
    metric = word_logit_metric(m, positive.split(","), negative.split(","))
    try:
        coef_list = [float(c) for c in coefs.split(",")]
    except ValueError:
        raise GatescopeError(f"--coefs {coefs}: expected numbers like -2,0,2") from None
    result = evaluate_steering(m, vec, read_prompts(None, prompts), metric, coef_list, n_random)
    if json_:
        echo_json(result.to_dict())
        return
    for i, c in enumerate(result.coefs):
        rand = [r[i] for r in result.random]
        typer.echo(
            f"coef {c:+6.2f}: vector {result.vector[i]:+.3f}   random "
            f"[{min(rand):+.3f}, {max(rand):+.3f}]"
        )


def register(app: typer.Typer) -> None:
    app.command("patch")(user_errors(patch))
    app.add_typer(steer_app, name="steer")
