"""``gatescope reference train|eval``: reproduce and evaluate the bundled reference models."""

from __future__ import annotations

from pathlib import Path

import typer

from app.cli_common import (
    MODEL_HELP,
    check_name,
    emit,
    json_out,
    load,
    model_options,
    positive,
    show_progress,
    user_errors,
)

reference_app = typer.Typer(help="Train and evaluate the bundled reference models.")


def _check_train_config(cfg, checkpoint_every: int | None) -> None:
    """Every numeric or named option of ``reference train`` (as ``cfg`` holds them, and the
    ``--checkpoint-every`` given), before the corpus is built."""
    from probe.errors import GatescopeError
    from probe.reference.train import ARCHES, BALANCES, hybrid_layer_types

    if cfg.steps < 1 or cfg.warmup < 0 or cfg.warmup >= cfg.steps:
        raise GatescopeError(
            f"--steps {cfg.steps} --warmup {cfg.warmup}: expected 0 <= warm-up < steps, steps >= 1"
        )
    if cfg.arch not in ARCHES:
        raise GatescopeError(f"--arch {cfg.arch}: expected one of {', '.join(ARCHES)}")
    if cfg.corpus_version not in (1, 2, 3, 4, 5):
        raise GatescopeError(f"--corpus {cfg.corpus_version}: expected 1, 2, 3, 4 or 5")
    if checkpoint_every is not None and checkpoint_every < 1:
        raise GatescopeError(f"--checkpoint-every {checkpoint_every}: expected a positive number")
    if not cfg.lr > 0:
        raise GatescopeError(f"--lr {cfg.lr}: expected a positive learning rate")
    if not cfg.weight_decay >= 0:
        raise GatescopeError(f"--weight-decay {cfg.weight_decay}: expected 0 or more")
    if not cfg.checkpoint_seconds >= 0:  # also NaN
        raise GatescopeError(
            f"--checkpoint-seconds {cfg.checkpoint_seconds}: expected 0 (off) or a positive number"
        )
    if not cfg.router_aux_coef >= 0:
        raise GatescopeError(f"--router-aux-coef {cfg.router_aux_coef}: expected 0 or more")
    if cfg.arch == "hybrid":
        hybrid_layer_types(cfg)  # raises on layer numbers out of range
    if cfg.router_balance not in BALANCES:
        raise GatescopeError(
            f"--router-balance {cfg.router_balance}: expected one of {', '.join(BALANCES)}"
        )


def _layer_list(text: str | None) -> tuple[int, ...] | None:
    from probe.errors import GatescopeError

    if text is None:
        return None
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise GatescopeError(
            f"--attention-layers {text}: expected layer numbers separated by commas, e.g. 1,3"
        ) from None


@reference_app.command("train")
@user_errors
def train(
    out: Path = typer.Option(..., "--out", help="run directory (checkpoints, final model)"),
    arch: str = typer.Option(
        "gated",
        "--arch",
        help="gated (Qwen3-Next, full attention), plain (Qwen3) or hybrid (Qwen3-Next: "
        "Gated-DeltaNet x3 + full attention, MoE MLPs)",
    ),
    steps: int = typer.Option(3000, "--steps"),
    seed: int = typer.Option(0, "--seed"),
    resume: bool = typer.Option(False, "--resume", help="continue from the last checkpoint"),
    init: Path = typer.Option(None, "--init", help="continue training this model directory"),
    lr: float = typer.Option(3e-3, "--lr", help="peak learning rate"),
    warmup: int = typer.Option(100, "--warmup", help="linear warm-up steps"),
    weight_decay: float = typer.Option(
        0.1, "--weight-decay", help="AdamW weight decay of the weight matrices"
    ),
    weight_decay_except: str = typer.Option(
        None,
        "--weight-decay-except",
        help="weight matrices of these modules (comma-separated, e.g. q_proj) keep weight "
        "decay 0.1",
    ),
    induction_tail: bool = typer.Option(
        True,
        help="induction documents go on into a third copy (--no-induction-tail: the "
        "first corpus of the bundled models)",
    ),
    threads: int = typer.Option(None, "--threads", help="CPU threads (1 when two runs share)"),
    tokenizer: Path = typer.Option(
        None, "--tokenizer", help="a fresh run uses this model directory's tokenizer"
    ),
    init_embeddings: Path = typer.Option(
        None, "--init-embeddings", help="a fresh run starts from this model's token embeddings"
    ),
    corpus: int = typer.Option(
        4,
        "--corpus",
        help="corpus version: 4 (current: with long word lists), 3 (short word lists), "
        "2 (none), 1 (the earliest twins' first stages)",
    ),
    induction_docs: bool = typer.Option(
        True,
        help="--no-induction-docs leaves the induction documents out (a first stage that "
        "learns the token embeddings from the other text only)",
    ),
    freeze_embeddings: bool = typer.Option(
        False,
        "--freeze-embeddings",
        help="keep the token embeddings (tied to the unembedding) as --init has them",
    ),
    checkpoint_every: int = typer.Option(None, "--checkpoint-every", help="steps per checkpoint"),
    checkpoint_seconds: float = typer.Option(
        300.0,
        "--checkpoint-seconds",
        help="also checkpoint after this many seconds of wall time since the last (0: off)",
    ),
    stop_after: int = typer.Option(
        None, "--stop-after", help="checkpoint after this many steps and stop (then --resume)"
    ),
    router_aux_coef: float = typer.Option(
        0.01, "--router-aux-coef", help="hybrid: the MoE load-balancing loss coefficient"
    ),
    router_balance: str = typer.Option(
        "family",
        "--router-balance",
        help="hybrid: family (the model's own load-balancing loss, expert loads pooled over "
        "the layers) or layer (the same loss per MoE layer, averaged: no expert left unused "
        "in one layer)",
    ),
    attention_layers: str = typer.Option(
        None,
        "--attention-layers",
        help="hybrid: the full-attention layers, comma-separated (default: the last layer)",
    ),
) -> None:
    """Train a reference model (see data/models/*/README.md for the bundled models' recipe)."""
    import torch

    from probe.errors import GatescopeError
    from probe.reference.train import TrainConfig, checkpoint_step, train_reference

    if threads is not None:
        if threads < 1:
            raise GatescopeError(f"--threads {threads}: expected a positive number")
        torch.set_num_threads(threads)
    cfg = TrainConfig(
        arch=arch,
        steps=steps,
        seed=seed,
        lr=lr,
        warmup=warmup,
        weight_decay=weight_decay,
        decay_except=tuple(weight_decay_except.split(",")) if weight_decay_except else (),
        induction_tail=induction_tail,
        init=None if init is None else str(init),
        checkpoint_every=checkpoint_every or min(250, max(1, steps // 4)),
        checkpoint_seconds=checkpoint_seconds,
        corpus_version=corpus,
        induction_docs=induction_docs,
        freeze_embeddings=freeze_embeddings,
        stop_after=stop_after,
        tokenizer=None if tokenizer is None else str(tokenizer),
        init_embeddings=None if init_embeddings is None else str(init_embeddings),
        router_aux_coef=router_aux_coef,
        router_balance=router_balance,
        attention_layers=_layer_list(attention_layers),
    )
    _check_train_config(cfg, checkpoint_every)
    at = checkpoint_step(out) if resume else None
    if resume:
        where = f"step {at} of {out / 'checkpoint'}" if at is not None else "no checkpoint"
        typer.echo(
            f"resuming from {where}" + ("" if at is not None else "; training from step 0"),
            err=True,
        )
    final = train_reference(cfg, out, resume=resume, progress=show_progress())
    typer.echo(
        f"saved {final}" if final else f"stopped at step {stop_after}; continue with --resume"
    )


@reference_app.command("eval")
@user_errors
@model_options
@json_out
def evaluate(
    model: str = typer.Argument("reference", help=MODEL_HELP),
    json_: bool = typer.Option(False, "--json"),
    out: Path = typer.Option(None, "--out", help="write the figures as JSON"),
    limit: int = typer.Option(None, "--limit", help="use only the first N IOI/induction rows"),
    twin: str = typer.Option(
        "auto", "--twin", help="compare the gate effects with this model ('none': skip)"
    ),
) -> None:
    """Held-out figures: IOI, induction, facts, prose perplexity, the gate effects of the
    Gated Attention paper against the twin, and on a hybrid its router and DeltaNet figures."""
    from probe.reference.evaluate import evaluate_reference

    positive(limit, "--limit")
    result = evaluate_reference(load(model), limit=limit, twin=None if twin == "none" else twin)
    if emit(result.to_dict(), json_, out):
        return
    for key, value in result.to_dict().items():
        if key == "hybrid":
            continue  # nested tables: see --json
        if key == "paper_effects":
            value = value["verdict"] if value else None
        elif isinstance(value, float):
            value = f"{value:.3f}"
        elif isinstance(value, list):
            value = " ".join(
                "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))
                for v in value
            )
        typer.echo(f"{key:>26}: {value}")
    if result.hybrid:
        typer.echo(f"{'dead experts':>26}: {result.hybrid['dead_experts']}")
        typer.echo(f"{'mean shared gate':>26}: {result.hybrid['mean_shared_gate']:.3f}")


@reference_app.command("tasks")
@user_errors
def tasks(
    out: Path = typer.Option(Path("data/tasks"), "--out", help="directory for the JSONL files"),
    seed: int = typer.Option(0, "--seed"),
    tokenizer: str = typer.Option(
        "reference", "--tokenizer", help="the model whose tokenizer sets the token counts"
    ),
) -> None:
    """Regenerate the task, steering and concept data (held-out prompts) from the seed."""
    from transformers import AutoTokenizer

    from probe.paths import BUNDLED_MODELS, bundled_model_dir
    from probe.reference.task_data import write_task_data

    source = bundled_model_dir(tokenizer) if tokenizer in BUNDLED_MODELS else tokenizer
    for name, rows in write_task_data(out, AutoTokenizer.from_pretrained(source), seed).items():
        typer.echo(f"{name}.jsonl\t{rows} rows")


@reference_app.command("bundle")
@user_errors
def bundle_cmd(
    run: Path = typer.Argument(..., help="the --out directory of `reference train`"),
    name: str = typer.Option(
        ..., "--name", help="reference-gated, reference-plain or reference-hybrid"
    ),
    twin: str = typer.Option(
        "auto", "--twin", help="the model the paper's gate effects are compared with"
    ),
) -> None:
    """Evaluate a trained model and install it as a bundled reference model (with README)."""

    check_name(name)

    from probe.load import load_model
    from probe.reference.bundle import bundle
    from probe.reference.evaluate import evaluate_reference

    model = load_model(str(Path(run) / "model"))
    model.name = name
    dest = bundle(run, name, evaluate_reference(model, twin=twin))
    typer.echo(f"installed {dest}")
