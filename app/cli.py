"""The ``gatescope`` command line (typer).

Foundation commands live here (``trace``, ``gates``, ``app``); each feature area adds its
commands through a ``register(app)`` function in its own ``app/cli_*.py`` module.
"""

from __future__ import annotations

import importlib
import logging
import subprocess
import sys
from pathlib import Path

import typer

from app.cli_common import (
    BACKEND_HELP,
    DEVICE_HELP,
    DEVICE_MAP_HELP,
    DTYPE_HELP,
    MODEL_HELP,
    REMOTE_HELP,
    atomic_path,
    check_out_path,
    echo_json,
    load,
    read_prompts,
    user_errors,
    write_json,
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


@app.command()
@user_errors
def trace(
    model: str = typer.Argument(..., help=MODEL_HELP),
    sites: str = typer.Option(..., "--sites", help="e.g. 'attn_gate.*,resid_post.3'"),
    out: Path = typer.Option(..., "--out", help="output .safetensors file"),
    prompt: str = typer.Option(None, "--prompt", help="one prompt"),
    prompts: Path = typer.Option(None, "--prompts", help="file: one prompt per line, or JSONL"),
    positions: str = typer.Option(None, "--positions", help="e.g. '-1' or '0,3,-1'"),
    batch_size: int = typer.Option(16, "--batch-size"),
    device: str = typer.Option(None, "--device", help=DEVICE_HELP),
    device_map: str = typer.Option(None, "--device-map", help=DEVICE_MAP_HELP),
    dtype: str = typer.Option(None, "--dtype", help=DTYPE_HELP),
    backend: str = typer.Option("hooks", "--backend", help=BACKEND_HELP),
    remote: bool = typer.Option(False, "--remote", help=REMOTE_HELP),
) -> None:
    """Capture sites over prompts and save them (one tensor per site) as safetensors."""
    from safetensors.torch import save_file

    from probe.errors import GatescopeError
    from probe.tracer import Tracer

    texts = read_prompts(prompt, prompts)
    if out.suffix != ".safetensors":
        raise GatescopeError(f"--out {out}: expected a .safetensors file name")
    check_out_path(out)
    m = load(
        model, device=device, dtype=dtype, device_map=device_map, backend=backend, remote=remote
    )
    pos = [int(p) for p in positions.split(",")] if positions else None
    if pos is None and len(texts) > 1:
        lengths = {int(n) for n in m.tokenize(texts).lengths}
        if len(lengths) > 1:
            raise GatescopeError(
                "prompts have different token lengths; pass --positions (e.g. -1) "
                "or prompts of equal length"
            )
    with Tracer(m, sites, positions=pos, device="cpu") as tr:
        for batch in m.batches(texts, batch_size, progress=len(texts) > batch_size):
            m.forward(batch.input_ids, batch.attention_mask)
    tensors = {str(s): v.contiguous() for s, v in tr.activations.items()}
    meta = {"model": m.name, "family": m.family.name, "prompts": str(len(texts))}
    with atomic_path(out) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    for name, t in tensors.items():
        typer.echo(f"{name}\t{tuple(t.shape)}")
    typer.echo(f"saved {len(tensors)} sites to {out}")


@app.command()
@user_errors
def gates(
    model: str = typer.Argument(..., help=MODEL_HELP),
    prompt: str = typer.Option(None, "--prompt"),
    prompts: Path = typer.Option(None, "--prompts"),
    json_: bool = typer.Option(False, "--json", help="print the full report as JSON"),
    out: Path = typer.Option(None, "--out", help="write the report as JSON"),
    batch_size: int = typer.Option(16, "--batch-size"),
    device: str = typer.Option(None, "--device", help=DEVICE_HELP),
    device_map: str = typer.Option(None, "--device-map", help=DEVICE_MAP_HELP),
    dtype: str = typer.Option(None, "--dtype", help=DTYPE_HELP),
    backend: str = typer.Option("hooks", "--backend", help=BACKEND_HELP),
    remote: bool = typer.Option(False, "--remote", help=REMOTE_HELP),
) -> None:
    """Gate statistics per layer and head: mean gate, sparsity, sink, max activation."""
    from probe.gates import gate_stats

    texts = read_prompts(prompt, prompts)
    check_out_path(out)
    m = load(
        model, device=device, dtype=dtype, device_map=device_map, backend=backend, remote=remote
    )
    report = gate_stats(m, texts, batch_size=batch_size, progress=not json_)
    if out is not None:
        write_json(report.to_dict(), out)
    if json_:
        echo_json(report.to_dict())
        return
    _print_gate_table(report)


def _print_gate_table(report) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"gates: {report.model} ({report.family}, {report.n_tokens} tokens)")
    cols = ["layer", "mean gate", "gate<0.1", "sink", "max |resid|", "|mlp_gate|<0.01"]
    for c in cols:
        table.add_column(c, justify="right")
    mean_gate = report.layer_mean("mean_gate")
    below = report.layer_mean("gate_below", "0.1")
    sink = report.layer_mean("sink")
    fmt = lambda xs, i: "-" if xs is None else f"{xs[i]:.3f}"  # noqa: E731
    glu = report.glu_below["0.01"] if report.glu_below else None
    for i, mx in enumerate(report.max_activation):
        table.add_row(
            str(i), fmt(mean_gate, i), fmt(below, i), fmt(sink, i), f"{mx:.2f}", fmt(glu, i)
        )
    Console().print(table)


@app.command("app")
def run_app(port: int = typer.Option(8501, "--port")) -> None:
    """Start the web app (Streamlit) on the bundled reference model."""
    home = Path(__file__).with_name("Home.py")
    cmd = [sys.executable, "-m", "streamlit", "run", str(home), "--server.port", str(port)]
    raise typer.Exit(subprocess.call(cmd))


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
