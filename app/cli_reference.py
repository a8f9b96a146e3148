"""``gatescope reference train|eval``: reproduce and evaluate the bundled reference models."""

from __future__ import annotations

from pathlib import Path

import typer

from app.cli_common import MODEL_HELP, echo_json, load, user_errors

reference_app = typer.Typer(help="Train and evaluate the bundled reference models.")


@reference_app.command("train")
@user_errors
def train(
    out: Path = typer.Option(..., "--out", help="run directory (checkpoints, final model)"),
    arch: str = typer.Option("gated", "--arch", help="gated (Qwen3-Next) or plain (Qwen3)"),
    steps: int = typer.Option(3000, "--steps"),
    seed: int = typer.Option(0, "--seed"),
    resume: bool = typer.Option(False, "--resume", help="continue from the last checkpoint"),
) -> None:
    """Train a reference model from scratch (about 30 minutes on 2 CPU cores)."""
    from probe.errors import GatescopeError
    from probe.reference.train import TrainConfig, train_reference

    if steps < 1:
        raise GatescopeError(f"--steps {steps}: expected a positive number of steps")
    if arch not in ("gated", "plain"):
        raise GatescopeError(f"--arch {arch}: expected 'gated' or 'plain'")
    final = train_reference(TrainConfig(arch=arch, steps=steps, seed=seed), out, resume=resume)
    typer.echo(f"saved {final}")


@reference_app.command("eval")
@user_errors
def evaluate(
    model: str = typer.Argument("reference", help=MODEL_HELP),
    json_: bool = typer.Option(False, "--json"),
    limit: int = typer.Option(None, "--limit", help="use only the first N IOI/induction rows"),
) -> None:
    """Held-out figures: IOI, induction, facts, prose perplexity, gates and sink."""
    from probe.reference.evaluate import evaluate_reference

    result = evaluate_reference(load(model), limit=limit)
    if json_:
        echo_json(result.to_dict())
        return
    for key, value in result.to_dict().items():
        if isinstance(value, float):
            value = f"{value:.3f}"
        elif isinstance(value, list):
            value = " ".join(f"{v:.3f}" for v in value)
        typer.echo(f"{key:>26}: {value}")


@reference_app.command("tasks")
@user_errors
def tasks(
    out: Path = typer.Option(Path("data/tasks"), "--out", help="directory for the JSONL files"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Regenerate the task, steering and concept data (held-out prompts) from the seed."""
    from probe.reference.corpus import build_corpus
    from probe.reference.task_data import write_task_data
    from probe.reference.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(build_corpus(seed).documents)
    for name, rows in write_task_data(out, tokenizer, seed).items():
        typer.echo(f"{name}.jsonl\t{rows} rows")


@reference_app.command("bundle")
@user_errors
def bundle_cmd(
    run: Path = typer.Argument(..., help="the --out directory of `reference train`"),
    name: str = typer.Option(..., "--name", help="reference-gated or reference-plain"),
) -> None:
    """Evaluate a trained model and install it as a bundled reference model (with README)."""
    from probe.model import load_model
    from probe.reference.bundle import bundle
    from probe.reference.evaluate import evaluate_reference

    model = load_model(str(Path(run) / "model"))
    model.name = name
    dest = bundle(run, name, evaluate_reference(model))
    typer.echo(f"installed {dest}")
