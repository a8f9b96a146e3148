"""The ``gatescope`` command line (typer).

Foundation commands live here (``trace``, ``gates``, ``app``); each feature area adds its
commands through a ``register(app)`` function in its own ``app/cli_*.py`` module.
"""

from __future__ import annotations

import importlib
import json
import logging
import subprocess
import sys
from pathlib import Path

import typer

from app.cli_common import (
    MODEL_HELP,
    check_out,
    emit,
    json_out,
    load,
    model_options,
    note,
    positive,
    read_prompts,
    show_progress,
    user_errors,
)

app = typer.Typer(
    name="gatescope",
    help="Interpretability and steering workbench for gated transformers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

#: Command modules mounted on the main app, each with ``register(app)``.
COMMAND_MODULES = (
    "app.cli_reference",
    "app.cli_interventions",
    "app.cli_circuits",
    "app.cli_sae",
    "app.cli_concept",
)


def _positions(text: str | None) -> list[int] | None:
    from probe.errors import GatescopeError

    if not text:
        return None
    try:
        return [int(p) for p in text.split(",")]
    except ValueError:
        raise GatescopeError(
            f"--positions {text}: expected token indices like -1 or 0,3,-1"
        ) from None


@app.command()
@user_errors
@model_options
def trace(
    model: str = typer.Argument(..., help=MODEL_HELP),
    sites: str = typer.Option(..., "--sites", help="e.g. 'attn_gate.*,resid_post.3'"),
    out: Path = typer.Option(..., "--out", help="output .safetensors file"),
    prompt: str = typer.Option(None, "--prompt", help="one prompt"),
    prompts: Path = typer.Option(None, "--prompts", help="file: one prompt per line, or JSONL"),
    positions: str = typer.Option(None, "--positions", help="e.g. '-1' or '0,3,-1'"),
    batch_size: int = typer.Option(16, "--batch-size"),
    json_: bool = typer.Option(False, "--json", help="print the shapes and provenance as JSON"),
    force: bool = typer.Option(False, "--force", help="overwrite an existing --out file"),
) -> None:
    """Capture sites over prompts and save them (one tensor per site) as safetensors."""
    from probe.errors import GatescopeError
    from probe.io import save_safetensors
    from probe.tracer import Tracer

    positive(batch_size, "--batch-size")
    if out.suffix != ".safetensors":
        raise GatescopeError(f"--out {out}: expected a .safetensors file name")
    check_out(out, force)
    texts = read_prompts(prompt, prompts)
    pos = _positions(positions)
    m = load(model)
    if pos is None and len(texts) > 1:
        lengths = {int(n) for n in m.tokenize(texts).lengths}
        if len(lengths) > 1:
            raise GatescopeError(
                "prompts have different token lengths; pass --positions (e.g. -1) "
                "or prompts of equal length"
            )
    bar = show_progress() and len(texts) > batch_size
    chosen = m.sites(sites)
    if show_progress():
        _say_layers_taken(m, sites, chosen)
    with Tracer(m, chosen, positions=pos, device="cpu") as tr:
        for batch in m.batches(texts, batch_size, progress=bar):
            m.forward(batch.input_ids, batch.attention_mask)
    tensors = {str(s): v.contiguous() for s, v in tr.activations.items()}
    note(n_prompts=len(texts), sites=",".join(tensors))
    result = {"out": str(out), "shapes": {k: list(t.shape) for k, t in tensors.items()}}
    from app.cli_common import provenance

    meta = {"model": m.name, "family": m.family.name, "prompts": str(len(texts))}
    meta["provenance"] = json.dumps(provenance(result))
    save_safetensors(tensors, out, metadata=meta)
    if emit(result, json_, None):
        return
    for name, t in tensors.items():
        typer.echo(f"{name}\t{tuple(t.shape)}")
    typer.echo(f"saved {len(tensors)} sites to {out}")


@app.command()
@user_errors
@model_options
@json_out
def gates(
    model: str = typer.Argument(..., help=MODEL_HELP),
    prompt: str = typer.Option(None, "--prompt"),
    prompts: Path = typer.Option(None, "--prompts"),
    batch_size: int = typer.Option(16, "--batch-size"),
    json_: bool = typer.Option(False, "--json", help="print the full report as JSON"),
    out: Path = typer.Option(None, "--out", help="write the report as JSON"),
) -> None:
    """Gate statistics per layer and head of every gate type the model has: attention gates
    (mean, sparsity, sink, max activation), GLU, Gated-DeltaNet, MoE routers, shared expert,
    gated short convolutions."""
    from probe.gates import gate_sites, gate_stats

    positive(batch_size, "--batch-size")
    texts = read_prompts(prompt, prompts)
    m = load(model)
    report = gate_stats(m, texts, batch_size=batch_size, progress=show_progress())
    kinds = dict.fromkeys(s.kind for s in gate_sites(m))  # KIND.*: the layers that have it
    note(n_prompts=len(texts), sites=",".join(f"{k}.*" for k in kinds), positions="all")
    if emit(report.to_dict(), json_, out):
        return
    _print_gate_table(report)


def _say_layers_taken(m, pattern: str, chosen) -> None:
    """On hybrid models ``KIND.*`` keeps the layers that have the kind: say which (stderr)."""
    for part in [p.strip() for p in pattern.split(",") if p.strip()]:
        pieces = part.split(".")
        if len(pieces) >= 2 and pieces[1] == "*":
            layers = sorted({s.layer for s in chosen if s.kind == pieces[0]})
            if len(layers) < m.dims.n_layers:
                typer.echo(
                    f"{part}: layers {', '.join(map(str, layers))} (the layers that have "
                    f"{pieces[0]}; {m.dims.n_layers} in all)",
                    err=True,
                )


def _fmt_cell(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _mean(row):
    return None if row is None else sum(row) / len(row)


def _print_gate_table(report) -> None:
    from rich.console import Console
    from rich.table import Table

    _print_attention_table(report)
    console = Console()
    mixers = {e["index"]: f"{e['mixer']}/{e['mlp']}" for e in report.layer_map or []}
    if report.deltanet is not None:
        d = report.deltanet
        table = Table(title="Gated-DeltaNet (mean over value heads)")
        for c in ["layer", "mixer", "beta", "log decay", "horizon (tokens)", "|gate|<0.1"]:
            table.add_column(c, justify="right")
        for i, beta in enumerate(d["mean_beta"]):
            if beta is None:
                continue
            horizon = _mean(d["retention_horizon"][i])
            table.add_row(
                str(i),
                mixers.get(i, ""),
                _fmt_cell(_mean(beta)),
                _fmt_cell(_mean(d["mean_decay"][i])),
                _fmt_cell(horizon, 1),
                _fmt_cell(_mean(d["gate_below"]["0.1"][i])),
            )
        console.print(table)
    if report.router is not None:
        r = report.router
        table = Table(title=f"MoE routers (top-{r['top_k']})")
        for c in [
            "layer",
            "max load",
            "min load",
            "dead experts",
            "entropy",
            "top-k mass",
            "shared gate",
        ]:
            table.add_column(c, justify="right")
        for i, load in enumerate(r["load"]):
            if load is None:
                continue
            shared = report.shared_gate[i] if report.shared_gate else None
            table.add_row(
                str(i),
                _fmt_cell(max(load)),
                _fmt_cell(min(load)),
                ", ".join(map(str, r["dead_experts"][i])) or "none",
                _fmt_cell(r["entropy"][i]),
                _fmt_cell(r["top_k_mass"][i]),
                _fmt_cell(shared),
            )
        console.print(table)
    if report.conv is not None:
        _print_conv_table(report, mixers)


def _print_conv_table(report, mixers) -> None:
    """Gated short convolutions: B before the convolution, C after it (linear gates)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Gated short convolutions (B: before the conv, C: after it)")
    names = {"conv_gate": "B", "conv_out_gate": "C"}
    cols = ["layer", "mixer"]
    for kind in report.conv:
        cols += [f"mean {names[kind]}", f"mean |{names[kind]}|", f"|{names[kind]}|<0.1"]
    for c in cols:
        table.add_column(c, justify="right")
    first = next(iter(report.conv.values()))
    for i, mean in enumerate(first["mean"]):
        if mean is None:
            continue
        row = [str(i), mixers.get(i, "")]
        for stats in report.conv.values():
            row += [
                _fmt_cell(stats["mean"][i]),
                _fmt_cell(stats["mean_abs"][i]),
                _fmt_cell(stats["below"]["0.1"][i]),
            ]
        table.add_row(*row)
    Console().print(table)


def _print_attention_table(report) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"gates: {report.model} ({report.family}, {report.n_tokens} tokens)")
    cols = ["layer", "mean gate", "gate<0.1", "sink", "max |resid|", "|mlp_gate|<0.01"]
    for c in cols:
        table.add_column(c, justify="right")
    mean_gate = report.layer_mean("mean_gate")
    below = report.layer_mean("gate_below", "0.1")
    sink = report.layer_mean("sink")
    fmt = lambda xs, i: "-" if xs is None or xs[i] is None else f"{xs[i]:.3f}"  # noqa: E731
    glu = report.glu_below["0.01"] if report.glu_below else None
    for i, mx in enumerate(report.max_activation):
        table.add_row(
            str(i), fmt(mean_gate, i), fmt(below, i), fmt(sink, i), f"{mx:.2f}", fmt(glu, i)
        )
    Console().print(table)


#: The app's server settings as flags (as in .streamlit/config.toml, which Streamlit reads only
#: when started in the repository root): no usage statistics, no deploy button, localhost only.
APP_FLAGS = (
    "--browser.gatherUsageStats=false",
    "--browser.serverAddress=localhost",
    "--server.address=localhost",
    "--server.headless=true",
    "--client.toolbarMode=minimal",
)


@app.command("app")
def run_app(port: int = typer.Option(8501, "--port")) -> None:
    """Start the web app (Streamlit) on the bundled reference model, on localhost only."""
    home = Path(__file__).with_name("Home.py")
    cmd = [sys.executable, "-m", "streamlit", "run", str(home), *APP_FLAGS]
    raise typer.Exit(subprocess.call([*cmd, f"--server.port={port}"]))


def _mount_commands() -> None:
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue  # feature not installed in this checkout
        if hasattr(module, "register"):
            module.register(app)
        elif hasattr(module, "reference_app"):
            app.add_typer(module.reference_app, name="reference", help="reference models")


_mount_commands()


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app()


if __name__ == "__main__":
    main()
