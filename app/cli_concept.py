"""``gatescope concept cav|tcav|probe``."""

from __future__ import annotations

from pathlib import Path

import typer

from app.cli_common import MODEL_HELP, emit, json_out, load, model_options, note, user_errors
from probe.errors import GatescopeError

concept_app = typer.Typer(help="Concept activation vectors, TCAV and linear probes.")
SET_HELP = "bundled set name (e.g. concept_sport) or a JSONL file with a text field"
OUT_HELP = "also write the numbers to this JSON file"


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
@model_options
@json_out
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
    note(n_prompts=len(xc), positions=pooling)
    if out is not None:
        emit({"site": site, "concept": concept, "cavs": [c.to_dict() for c in cavs]}, False, out)
    if emit({"site": site, "concept": concept, "cavs": rows}, json_, None):
        return
    for r in rows:
        typer.echo(f"{concept} vs {r['random']}: held-out accuracy {r['accuracy']:.3f}")


@concept_app.command("tcav")
@user_errors
@model_options
@json_out
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

    args = (load_texts(concept), _random_sets(random))
    m = load(model)
    rest = (target, load_texts(inputs), pooling)
    note(n_prompts=len(rest[1]), positions=pooling)
    if site.endswith(".*"):
        layers = cross_layer(m, *args, site[:-2], *rest)
        results = layers.results
        if emit(layers.to_dict(), json_, out):
            return
    else:
        results = [tcav(m, *args, site, *rest)]
        if emit(results[0].to_dict(), json_, out):
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
@model_options
@json_out
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
    from probe.io import read_jsonl

    wanted = [_kind_layer(k.strip()) for k in sites.split(",") if k.strip()]
    if not wanted:
        raise GatescopeError(f"--sites {sites!r}: give site kinds, e.g. resid_post,attn_gate")
    rows = read_jsonl(labels, "--labels", ("text", "label"))
    y, names = _labels(labels, [r["label"] for r in rows])
    m = load(model)
    for kind, layer in wanted:  # unknown kinds and layers out of range fail here, not later
        m.sites(f"{kind}.{0 if layer is None else layer}")
    texts = [r["text"] for r in rows]
    results = []
    for kind, layer in wanted:
        r = probe_layers(m, texts, y, kind, pooling).to_dict()
        if layer is not None:  # resid_post.2: that layer only
            keep = [i for i, x in enumerate(r["layers"]) if x == layer]
            r = {k: [v[i] for i in keep] if isinstance(v, list) else v for k, v in r.items()}
        if names:
            r["label_names"] = names
        results.append(r)
    note(n_prompts=len(texts), positions=pooling, seed=0)
    if emit(results, json_, out):
        return
    for r in results:
        for layer, acc, base in zip(r["layers"], r["accuracy"], r["shuffled"], strict=True):
            typer.echo(f"{r['kind']}.{layer}: accuracy {acc:.3f} (shuffled labels {base:.3f})")


def _kind_layer(text: str) -> tuple[str, int | None]:
    kind, _, layer = text.partition(".")
    if layer in ("", "*"):
        return kind, None
    try:
        return kind, int(layer)
    except ValueError:
        raise GatescopeError(
            f"--sites {text}: expected a site kind (resid_post) or one layer (resid_post.2)"
        ) from None


def _labels(path: Path, raw: list) -> tuple[list[int], list[str] | None]:
    """Integer labels as given; text labels (``"sport"``) numbered in sorted order."""
    if all(isinstance(v, int) and not isinstance(v, bool) for v in raw):
        return list(raw), None
    if all(isinstance(v, str) and v for v in raw):
        names = sorted(set(raw))
        return [names.index(v) for v in raw], names
    kinds = (int, str)
    bad = next((i for i, v in enumerate(raw, 1) if not isinstance(v, kinds) or v is True), 1)
    raise GatescopeError(
        f"--labels {path}: labels must be all whole numbers or all texts (line {bad} has "
        f'{raw[bad - 1]!r}); e.g. {{"text": "...", "label": "sport"}}'
    )


def register(app: typer.Typer) -> None:
    app.add_typer(concept_app, name="concept")
