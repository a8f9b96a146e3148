"""``gatescope attribute``, ``gatescope circuit`` and ``gatescope agreement``."""

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
    read_task,
    show_progress,
    user_errors,
    write_json,
)

TASK_HELP = "bundled task (ioi, facts, induction) or a JSONL file"
GLU_HELP = "RelP rule for the GLU product: half (LRP) or gradient"
GATE_HELP = "RelP rule for the attention output gate: half or constant"
HOLD_HELP = "RelP: hold attention probabilities constant (the AH rule; default on)"
STEPS_HELP = "IG / EAP-IG interpolation steps (default 5)"


def _options(gate_rule, glu_rule, steps, hold_attention) -> dict:
    """The method fields given on the command line (unset ones are left to the method)."""
    return {
        "gate_rule": gate_rule,
        "glu_rule": glu_rule,
        "steps": steps,
        "hold_attention": hold_attention,
    }


def _task(task: str, limit: int | None):
    return read_task(task, limit)


def attribute_cmd(
    model: str = typer.Argument(..., help=MODEL_HELP),
    task: str = typer.Option(..., "--task", help=TASK_HELP),
    method: str = typer.Option("relp", "--method", help="atp, atp*, relp, relp*, ig"),
    sites: str = typer.Option(..., "--sites"),
    positions: str = typer.Option(None, "--positions", help="all (default) or each"),
    gate_rule: str = typer.Option(None, "--gate-rule", help=GATE_HELP),
    glu_rule: str = typer.Option(None, "--glu-rule", help=GLU_HELP),
    steps: int = typer.Option(None, "--steps", help=STEPS_HELP),
    hold_attention: bool = typer.Option(None, "--hold-attention/--free-attention", help=HOLD_HELP),
    limit: int = typer.Option(None, "--limit"),
    json_: bool = typer.Option(False, "--json"),
    out: Path = typer.Option(None, "--out"),
) -> None:
    """Attribution scores (AtP, AtP*, RelP, RelP*, IG) for every component of SITES."""
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
        **_options(gate_rule, glu_rule, steps, hold_attention),
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
    method: str = typer.Option(
        None, "--method", help="atp, atp*, relp, relp*, ig, eap, eap-ig (default: ig, 2 steps)"
    ),
    top_n: int = typer.Option(..., "--top-n", help="nodes to keep"),
    gate_rule: str = typer.Option(None, "--gate-rule", help=GATE_HELP),
    glu_rule: str = typer.Option(None, "--glu-rule", help=GLU_HELP),
    steps: int = typer.Option(None, "--steps", help=STEPS_HELP),
    hold_attention: bool = typer.Option(None, "--hold-attention/--free-attention", help=HOLD_HELP),
    curve: bool = typer.Option(False, "--curve", help="also faithfulness at every size"),
    mib: bool = typer.Option(False, "--mib", help="also MIB edge scores: f(C), CPR, CMD"),
    limit: int = typer.Option(None, "--limit"),
    json_: bool = typer.Option(False, "--json"),
    out: Path = typer.Option(None, "--out"),
) -> None:
    """Build the circuit graph, keep the top-n nodes, print its faithfulness."""
    from circuits.graph import DEFAULT_METHOD, build_graph, faithfulness, faithfulness_curve

    check_out_path(out)
    t = _task(task, limit)
    m = load(model)
    # no --method: build_graph's default (circuits.graph.DEFAULT_METHOD, its steps)
    full = build_graph(m, t, method, **_options(gate_rule, glu_rule, steps, hold_attention))
    method = method or DEFAULT_METHOD
    graph = full.prune(top_n)
    graph.faithfulness = faithfulness(m, t, graph.node_names())
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
    typer.echo(f"{method} circuit, top {top_n} nodes: faithfulness {graph.faithfulness:.3f}")
    for node in sorted(graph.nodes, key=lambda n: -abs(n.score)):
        typer.echo(f"{node.name:>12}  {node.score:+.3f}")
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
    activation patching, per site kind, and each method's time / the patching sweep."""
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
    if emit(payload, json_, out):
        return
    typer.echo("agreement with activation patching (time: ratio to the patching sweep)")
    typer.echo(result.table())


def register(app: typer.Typer) -> None:
    app.command("attribute")(user_errors(model_options(json_out(attribute_cmd))))
    app.command("circuit")(user_errors(model_options(json_out(circuit_cmd))))
    app.command("agreement")(user_errors(model_options(json_out(agreement_cmd))))
