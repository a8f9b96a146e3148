"""``gatescope concept cav|tcav|probe``."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from app.cli_common import MODEL_HELP, echo_json, load, user_errors
from probe.errors import GatescopeError

concept_app = typer.Typer(help="Concept activation vectors, TCAV and linear probes.")
SET_HELP = "bundled set name (e.g. concept_sport) or a JSONL file with a text field"


def _random_sets(spec: str) -> list[list[str]]:
    """'random_*' (all bundled random sets), or comma-separated names/files."""
    from probe.tasks import TASKS_DIR, load_texts

    if spec.endswith("*"):
        names = sorted(p.stem for p in TASKS_DIR.glob(spec.rstrip("*") + "*.jsonl"))
        if not names:
            raise GatescopeError(f"--random {spec}: no bundled sets match")
        return [load_texts(n) for n in names]
    return [load_texts(s.strip()) for s in spec.split(",") if s.strip()]


@concept_app.command("cav")
@user_errors
def cav_cmd(
    model: str = typer.Argument(..., help=MODEL_HELP),
    concept: str = typer.Option(..., "--concept", help=SET_HELP),
    random: str = typer.Option("random_0", "--random", help=SET_HELP + " (or random_*)"),
    site: str = typer.Option(..., "--site"),
    pooling: str = typer.Option("last", "--pooling", help="last or mean"),
    json_: bool = typer.Option(False, "--json"),
) -> None:
    """Train CAVs (one per random set) and report their held-out accuracy."""
    from probe.concepts import train_cav
    from probe.tasks import load_texts

    m = load(model)
    texts = load_texts(concept)
    cavs = [
        train_cav(m, texts, r, site, pooling, seed=i, names=(concept, f"random set {i}"))
        for i, r in enumerate(_random_sets(random))
    ]
    rows = [{"random": c.random, "accuracy": c.accuracy} for c in cavs]
    if json_:
        echo_json({"site": site, "concept": concept, "cavs": rows})
        return
    for r in rows:
        typer.echo(f"{concept} vs {r['random']}: held-out accuracy {r['accuracy']:.3f}")


@concept_app.command("tcav")
@user_errors
def tcav_cmd(
    model: str = typer.Argument(..., help=MODEL_HELP),
    concept: str = typer.Option(..., "--concept", help=SET_HELP),
    random: str = typer.Option("random_*", "--random", help="at least 10 sets"),
    site: str = typer.Option(..., "--site"),
    target: str = typer.Option(..., "--target", help="a word (its logit) or 'word|other'"),
    inputs: str = typer.Option(..., "--inputs", help=SET_HELP),
    json_: bool = typer.Option(False, "--json"),
) -> None:
    """TCAV score of a concept for a target, with a t-test against random CAVs."""
    from probe.concepts import tcav
    from probe.tasks import load_texts

    result = tcav(
        load(model), load_texts(concept), _random_sets(random), site, target, load_texts(inputs)
    )
    if json_:
        echo_json(result.to_dict())
        return
    random_mean = sum(result.random_scores) / len(result.random_scores)
    verdict = "significant" if result.significant else "not significant"
    typer.echo(
        f"TCAV {result.score:.3f} (random {random_mean:.3f}), p = {result.p_value:.3g}, {verdict}"
    )


@concept_app.command("probe")
@user_errors
def probe_cmd(
    model: str = typer.Argument(..., help=MODEL_HELP),
    labels: Path = typer.Option(..., "--labels", help="JSONL with text and label fields"),
    sites: str = typer.Option(..., "--sites", help="site kinds, e.g. resid_post,attn_gate"),
    json_: bool = typer.Option(False, "--json"),
) -> None:
    """Linear probe accuracy per layer (and a shuffled-label baseline) for each site kind."""
    from probe.concepts import probe_layers

    if not Path(labels).is_file():
        raise GatescopeError(f"--labels {labels}: no such file")
    rows = [json.loads(x) for x in Path(labels).read_text().splitlines() if x.strip()]
    if not rows or any("text" not in r or "label" not in r for r in rows):
        raise GatescopeError(f"--labels {labels}: every line needs 'text' and 'label'")
    m = load(model)
    results = [
        probe_layers(
            m,
            [r["text"] for r in rows],
            [int(r["label"]) for r in rows],
            kind.strip().split(".")[0],
        )
        for kind in sites.split(",")
    ]
    if json_:
        echo_json([r.to_dict() for r in results])
        return
    for r in results:
        for layer, acc, base in zip(r.layers, r.accuracy, r.shuffled, strict=True):
            typer.echo(f"{r.kind}.{layer}: accuracy {acc:.3f} (shuffled labels {base:.3f})")


def register(app: typer.Typer) -> None:
    app.add_typer(concept_app, name="concept")
