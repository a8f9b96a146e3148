"""``gatescope concept cav|tcav|probe``."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from app.cli_common import MODEL_HELP, check_out_path, echo_json, load, user_errors, write_json
from probe.errors import GatescopeError

concept_app = typer.Typer(help="Concept activation vectors, TCAV and linear probes.")
SET_HELP = "bundled set name (e.g. concept_sport) or a JSONL file with a text field"
OUT_HELP = "also write the numbers to this JSON file"


def _emit(obj: dict | list, json_: bool, out: Path | None) -> bool:
    """Write ``obj`` to ``out`` and/or print it as JSON; True if printed."""
    if out is not None:
        write_json(obj, out)
    if json_:
        echo_json(obj)
    return json_


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
    out: Path | None = typer.Option(None, "--out", help=OUT_HELP + " (directions included)"),
) -> None:
    """Train CAVs (one per random set) and report their held-out accuracy."""
    from probe.concepts import fit_cav, pooled_activations
    from probe.tasks import load_texts

    check_out_path(out)
    m = load(model)
    sites = m.sites(site)
    if len(sites) != 1:
        raise GatescopeError(f"--site {site}: give one site (e.g. resid_post.2), not a pattern")
    where = sites[0]
    xc = pooled_activations(m, load_texts(concept), where, pooling)[where]
    cavs = []
    for i, texts in enumerate(_random_sets(random)):
        xr = pooled_activations(m, texts, where, pooling)[where]
        cavs.append(fit_cav(xc, xr, i, site, (concept, f"random set {i}"), pooling))
    rows = [{"random": c.random, "accuracy": c.accuracy, "gap": c.gap} for c in cavs]
    if out is not None:
        write_json({"site": site, "concept": concept, "cavs": [c.to_dict() for c in cavs]}, out)
    if _emit({"site": site, "concept": concept, "cavs": rows}, json_, None):
        return
    for r in rows:
        typer.echo(f"{concept} vs {r['random']}: held-out accuracy {r['accuracy']:.3f}")


@concept_app.command("tcav")
@user_errors
def tcav_cmd(
    model: str = typer.Argument(..., help=MODEL_HELP),
    concept: str = typer.Option(..., "--concept", help=SET_HELP),
    random: str = typer.Option("random_*", "--random", help="at least 10 sets"),
    site: str = typer.Option(..., "--site", help="a site, or KIND.* for every layer"),
    target: str = typer.Option(..., "--target", help="a word (its logit) or 'word|other'"),
    inputs: str = typer.Option(..., "--inputs", help=SET_HELP),
    pooling: str = typer.Option("last", "--pooling", help="last or mean"),
    json_: bool = typer.Option(False, "--json"),
    out: Path | None = typer.Option(None, "--out", help=OUT_HELP),
) -> None:
    """TCAV score of a concept for a target, with a t-test against random CAVs (at every
    layer side by side when the site is KIND.*)."""
    from probe.concepts import cross_layer, tcav
    from probe.tasks import load_texts

    check_out_path(out)
    m = load(model)
    args = (load_texts(concept), _random_sets(random))
    rest = (target, load_texts(inputs), pooling)
    if site.endswith(".*"):
        layers = cross_layer(m, *args, site[:-2], *rest)
        results = layers.results
        if _emit(layers.to_dict(), json_, out):
            return
    else:
        results = [tcav(m, *args, site, *rest)]
        if _emit(results[0].to_dict(), json_, out):
            return
    for r in results:
        random_mean = sum(r.random_scores) / len(r.random_scores)
        verdict = "significant" if r.significant else "not significant"
        typer.echo(
            f"{r.site}: TCAV {r.score:.3f} (random {random_mean:.3f}), p = {r.p_value:.3g} "
            f"(scores {r.p_tcav:.3g}, CAV accuracy {r.p_accuracy:.3g}), {verdict}"
        )


@concept_app.command("probe")
@user_errors
def probe_cmd(
    model: str = typer.Argument(..., help=MODEL_HELP),
    labels: Path = typer.Option(..., "--labels", help="JSONL with text and label fields"),
    sites: str = typer.Option(..., "--sites", help="site kinds, e.g. resid_post,attn_gate"),
    pooling: str = typer.Option("last", "--pooling", help="last or mean"),
    json_: bool = typer.Option(False, "--json"),
    out: Path | None = typer.Option(None, "--out", help=OUT_HELP),
) -> None:
    """Linear probe accuracy per layer (and a shuffled-label baseline) for each site kind."""
    from probe.concepts import probe_layers

    check_out_path(out)
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
            pooling,
        )
        for kind in sites.split(",")
    ]
    if _emit([r.to_dict() for r in results], json_, out):
        return
    for r in results:
        for layer, acc, base in zip(r.layers, r.accuracy, r.shuffled, strict=True):
            typer.echo(f"{r.kind}.{layer}: accuracy {acc:.3f} (shuffled labels {base:.3f})")


def register(app: typer.Typer) -> None:
    app.add_typer(concept_app, name="concept")
