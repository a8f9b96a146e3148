"""``gatescope attribute``, ``gatescope circuit``, ``gatescope path-patch`` and
``gatescope agreement``. Method names, help and defaults come from the registry
(:mod:`circuits.methods`)."""

from __future__ import annotations

from pathlib import Path

import typer

from app.cli_common import (
    MODEL_HELP,
    check_out_path,
    echo_json,
    emit,
    json_out,
    load,
    model_options,
    note,
    positive,
    read_task,
    show_progress,
    user_errors,
    write_json,
)
from circuits.methods import CIRCUIT_DEFAULT, METHODS, NODE_METHODS, from_dict

TASK_HELP = "bundled task (ioi, facts, induction) or a JSONL file"
GLU_HELP = "RelP rule for the GLU product: half (LRP) or gradient"
GATE_HELP = "RelP rule for the attention output gate: half or constant"
HOLD_HELP = "RelP: hold attention probabilities constant (the AH rule; default on)"
STEPS_HELP = "IG / EAP-IG interpolation steps (default 5)"
DROP_HELP = "AtP*: GradDrop (scores become magnitudes; one more backward pass per layer)"
NODE_HELP = f"node method: {', '.join(NODE_METHODS)}"
CIRCUIT_HELP = f"{', '.join(METHODS)} (default: {CIRCUIT_DEFAULT.label})"


def _options(gate_rule, glu_rule, steps, hold_attention, grad_drop=None) -> dict:
    """The method fields given on the command line (unset ones are left to the method)."""
    return {
        "gate_rule": gate_rule,
        "glu_rule": glu_rule,
        "steps": steps,
        "hold_attention": hold_attention,
        "grad_drop": grad_drop,
    }


def _task(task: str, limit: int | None):
    return read_task(task, limit)


def attribute_cmd(
    model: str = typer.Argument(..., help=MODEL_HELP),
    task: str = typer.Option(..., "--task", help=TASK_HELP),
    method: str = typer.Option("relp", "--method", help=NODE_HELP),
    sites: str = typer.Option(..., "--sites"),
    positions: str = typer.Option(None, "--positions", help="all (default) or each"),
    gate_rule: str = typer.Option(None, "--gate-rule", help=GATE_HELP),
    glu_rule: str = typer.Option(None, "--glu-rule", help=GLU_HELP),
    steps: int = typer.Option(None, "--steps", help=STEPS_HELP),
    hold_attention: bool = typer.Option(None, "--hold-attention/--free-attention", help=HOLD_HELP),
    grad_drop: bool = typer.Option(None, "--grad-drop/--no-grad-drop", help=DROP_HELP),
    limit: int = typer.Option(None, "--limit"),
    json_: bool = typer.Option(False, "--json"),
    out: Path = typer.Option(None, "--out"),
) -> None:
    """Attribution scores of a node method of the registry for every component of SITES."""
    from circuits.attribution import attribute

    check_out_path(out)
    pos = None if positions in (None, "all") else positions
    t = _task(task, limit)  # a bad task file is refused before the model loads
    result = attribute(
        load(model),
        t,
        sites,
        method,
        positions=pos,
        **_options(gate_rule, glu_rule, steps, hold_attention, grad_drop),
    )
    if out is not None:
        write_json(result.to_dict(), out)
    if json_:
        echo_json(result.to_dict())
        return
    for c in result.top(15):
        typer.echo(f"{c.label:>24}  {c.effect:+.3f}")


def circuit_cmd(
    model: str = typer.Argument(..., help=MODEL_HELP),
    task: str = typer.Option(..., "--task", help=TASK_HELP),
    method: str = typer.Option(None, "--method", help=CIRCUIT_HELP),
    top_n: int = typer.Option(..., "--top-n", help="nodes to keep"),
    gate_rule: str = typer.Option(None, "--gate-rule", help=GATE_HELP),
    glu_rule: str = typer.Option(None, "--glu-rule", help=GLU_HELP),
    steps: int = typer.Option(None, "--steps", help=STEPS_HELP),
    hold_attention: bool = typer.Option(None, "--hold-attention/--free-attention", help=HOLD_HELP),
    grad_drop: bool = typer.Option(None, "--grad-drop/--no-grad-drop", help=DROP_HELP),
    curve: bool = typer.Option(False, "--curve", help="also faithfulness at every size"),
    mib: bool = typer.Option(False, "--mib", help="also MIB edge scores: f(C), CPR, CMD"),
    limit: int = typer.Option(None, "--limit"),
    json_: bool = typer.Option(False, "--json"),
    out: Path = typer.Option(None, "--out"),
) -> None:
    """Build the circuit graph, keep the top-n nodes, print its faithfulness."""
    from circuits.graph import build_graph, faithfulness, faithfulness_curve

    check_out_path(out)
    t = _task(task, limit)  # the task is read before the model loads
    m = load(model)
    # no --method: the registry's CIRCUIT_DEFAULT (the given fields over its own)
    options = _options(gate_rule, glu_rule, steps, hold_attention, grad_drop)
    full = build_graph(m, t, method, **options)
    label = from_dict(full.meta["method"]).label
    graph = full.prune(top_n)
    graph.faithfulness = faithfulness(m, t, graph.ports())
    data = graph.to_dict()
    note(sites="resid_pre.*,resid_mid.*,resid_post.*,head_out.*,mlp_out.*")
    if curve:
        data["curve"] = faithfulness_curve(m, t, full).to_dict()
    if mib:
        from circuits.mib import mib_score

        data["mib"] = mib_score(m, t, full).to_dict()
    if out is not None:
        write_json(data, out)
    if json_:
        echo_json(data)
        return
    typer.echo(f"{label} circuit, top {top_n} nodes: faithfulness {graph.faithfulness:.3f}")
    for text in graph.notes:
        typer.echo(f"note: {text}")
    for node in sorted(graph.nodes, key=lambda n: -abs(n.score)):
        typer.echo(f"{node.name:>14}  {node.score:+.3f}")
    if curve:
        sizes, values = data["curve"]["sizes"], data["curve"]["values"]
        typer.echo(
            "faithfulness by size: "
            + ", ".join(f"{n}:{v:.2f}" for n, v in zip(sizes, values, strict=True))
        )
        smallest = next((n for n, v in zip(sizes, values, strict=True) if v >= 0.8), None)
        typer.echo(f"smallest circuit reaching 0.8: {smallest}")
    if mib:
        score = data["mib"]
        typer.echo(
            f"MIB: CPR {score['cpr']:.3f}, CMD {score['cmd']:.3f} over {score['n_edges']} edges"
        )
        typer.echo(
            "f(C) by % of edges: "
            + ", ".join(
                f"{100 * p:g}:{v:.2f}"
                for p, v in zip(score["fractions"], score["faithfulness"], strict=True)
            )
        )


def path_patch_cmd(
    model: str = typer.Argument(..., help=MODEL_HELP),
    task: str = typer.Option(..., "--task", help=TASK_HELP),
    senders: str = typer.Option(
        ..., "--senders", help="writers, comma-separated: resid_pre.0, head_out.L.H, mlp_out.L"
    ),
    receivers: str = typer.Option(
        None,
        "--receivers",
        help="readers, comma-separated: head_out.L.H.q/.k/.v/.g, mlp_out.L.in, logits "
        "(default: every reader downstream)",
    ),
    top: int = typer.Option(10, "--top", help="receivers printed per sender"),
    limit: int = typer.Option(None, "--limit"),
    json_: bool = typer.Option(False, "--json"),
    out: Path = typer.Option(None, "--out"),
) -> None:
    """Path patching: each sender's effect along its direct path into each receiver."""
    from circuits.path_patching import path_patching

    positive(top, "--top")
    t = _task(task, limit)  # the task is read before the model loads
    split = lambda text: [p.strip() for p in text.split(",") if p.strip()]  # noqa: E731
    note(sites=f"senders {senders}; receivers {receivers or 'every reader downstream'}")
    result = path_patching(load(model), t, split(senders), split(receivers) if receivers else None)
    if emit(result.to_dict(), json_, out):
        return
    typer.echo("path patching (denoising: effect of the sender's clean write on one path)")
    for sender in result.effects:
        typer.echo(sender)
        for receiver, effect in result.top(sender, top):
            typer.echo(f"  -> {receiver:<18} {effect:+.3f}")


def agreement_cmd(
    model: str = typer.Argument(..., help=MODEL_HELP),
    task: str = typer.Option(..., "--task", help=TASK_HELP),
    sites: str = typer.Option(
        "resid_pre,attn_out,mlp_out,head_out", "--sites", help="site kinds, comma-separated"
    ),
    limit: int = typer.Option(None, "--limit"),
    json_: bool = typer.Option(False, "--json"),
    out: Path = typer.Option(None, "--out"),
) -> None:
    """Pearson r, Spearman r, n and top-5/10 overlap of every registered node method with
    activation patching, per site kind, each method's time / the patching sweep, and the
    best fast method per kind."""
    from circuits.agreement import agreement
    from probe.errors import GatescopeError
    from probe.sites import SITE_KINDS

    kinds = [k.strip().split(".")[0] for k in sites.split(",") if k.strip()]
    bad = [k for k in kinds if k not in SITE_KINDS]
    if bad:
        raise GatescopeError(f"--sites: unknown site kinds {bad}; known: {', '.join(SITE_KINDS)}")
    t = _task(task, limit)
    result = agreement(load(model), t, kinds, progress=show_progress())
    payload = {
        "pearson": result.pearson,
        "spearman": result.spearman,
        "stats": result.stats,
        "seconds": result.seconds,
        "methods": result.methods,
    }
    payload["best_fast"] = {kind: result.verdict(kind)[0] for kind in result.stats}
    if emit(payload, json_, out):
        return
    typer.echo("agreement with activation patching (time: ratio to the patching sweep)")
    typer.echo(result.table())
    typer.echo("best fast method per site kind (r >= 0.95 and top-10 >= 0.8):")
    typer.echo(result.verdicts())


def register(app: typer.Typer) -> None:
    app.command("attribute")(user_errors(model_options(json_out(attribute_cmd))))
    app.command("circuit")(user_errors(model_options(json_out(circuit_cmd))))
    app.command("path-patch")(user_errors(model_options(json_out(path_patch_cmd))))
    app.command("agreement")(user_errors(model_options(json_out(agreement_cmd))))
