"""MIB circuit-track scores (CPR, CMD) for every edge-scoring method, task and model.

For each bundled model and task, each method's graph (:func:`circuits.graph.build_graph`)
ranks its edges (every writer into every reader: each head's q / k / v / gate input, block
inputs, the logits); circuits of the top 0.1 % .. 100 % of edges are scored by edge patching
(:mod:`circuits.mib`): f(C), CPR (area under f, higher is better) and CMD (area under
|1 - f|, lower is better). Methods, from the registry: the edge methods EAP (AtP's gradient)
and EAP-IG (k = 1..5), and the node methods whose gradient differs, each in the settings it
lists: RelP (with and without the AH rule, both gate rules on gated models, the GLU
product's plain gradient) and IG (k = 0..4, and k = 0, 1 of 2); plus ``gatescope circuit``'s
default (``circuits.methods.CIRCUIT_DEFAULT``). AtP* and RelP* correct node scores only, so
their edges are AtP's and RelP's.

    .venv/bin/python bench/mib_scores.py [--prompts 100] [--tasks ioi,facts,induction]
        [--models reference,reference-plain] [--html PREFIX]
"""

from __future__ import annotations

import argparse
import json

import torch

from circuits.graph import build_graph
from circuits.methods import CIRCUIT_DEFAULT, EDGE_METHODS, METHODS, Method
from circuits.mib import EdgePatcher, mib_score
from probe import GatescopeError, load_model
from probe.tasks import load_task


def edge_methods(model) -> dict[str, Method]:
    """Label -> method: the registry's edge methods and the node methods with their own
    gradient (module docstring), and the circuit default."""
    out = {}
    for name in (*EDGE_METHODS, "relp", "ig"):
        for method in METHODS[name].variants(model):
            out[method.label] = method
    out.setdefault(CIRCUIT_DEFAULT.label, CIRCUIT_DEFAULT)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--models", default="reference,reference-plain")
    parser.add_argument("--tasks", default="ioi,facts,induction")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", dest="json_out", default=None)
    parser.add_argument("--html", default=None, help="curves: PREFIX-model-task.html")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows, out = [], []
    for model_name in args.models.split(","):
        model = load_model(model_name)
        for task_name in args.tasks.split(","):
            task = load_task(task_name).subset(args.prompts)
            try:
                patcher = EdgePatcher(model, task)
            except GatescopeError as err:
                rows.append(f"{model_name:<16}{task_name:<11}{'-':<48} skipped: {err}")
                continue
            curves = []
            for name, method in edge_methods(model).items():
                score = mib_score(model, task, build_graph(model, task, method), patcher=patcher)
                score.method = name
                curves.append(score)
                out.append(score.to_dict())
                f = " ".join(f"{v:5.2f}" for v in score.faithfulness)
                rows.append(
                    f"{model_name:<16}{task_name:<11}{name:<48}{score.cpr:7.3f}{score.cmd:7.3f}"
                    f"{score.n_edges:6d}   {f}"
                )
            if args.html:
                import plotly.graph_objects as go

                fig = go.Figure()
                for s in curves:
                    fig.add_trace(
                        go.Scatter(
                            x=s.fractions,
                            y=s.faithfulness,
                            name=f"{s.method} CPR {s.cpr:.2f} CMD {s.cmd:.2f}",
                        )
                    )
                fig.update_layout(
                    title=f"MIB faithfulness: {model_name}, {task_name}",
                    xaxis={"title": "fraction of edges", "type": "log"},
                    yaxis_title="f(C)",
                )
                fig.write_html(f"{args.html}-{model_name}-{task_name}.html")
    fractions = " ".join(f"{p * 100:5g}" for p in curves[0].fractions) if out else ""
    print(f"MIB circuit scores ({args.prompts} prompts per task); f(C) at % of edges: {fractions}")
    print(f"{'model':<16}{'task':<11}{'method':<48}{'CPR':>7}{'CMD':>7}{'edges':>6}   f(C)")
    print("\n".join(rows))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
