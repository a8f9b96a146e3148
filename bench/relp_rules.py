"""The agreement study on the reference models: every method against activation patching.

For each reference model, on the IOI task, per site kind (``resid_pre``, ``attn_out``,
``mlp_out`` per layer x position on the largest group of equal-length prompts, ``head_out``
per layer x head): Pearson r, Spearman r, the number of components n, top-5 / top-10 overlap
with activation patching, and each method's time as a ratio to the patching sweep, for every
node method of the registry in the settings it lists (``circuits.methods``: AtP, AtP* with
and without GradDrop, RelP with and without the AH rule, both gate rules on the gated model,
the GLU product's plain gradient, RelP*, IG with 5 and 2 steps). Then, per model and kind,
the best *fast* method (at most 3 forward and 2 backward passes) by the target: Pearson
r >= 0.95 and top-10 overlap >= 0.8; and the fast methods meeting it on every kind of every
model, from which ``circuits.methods.CIRCUIT_DEFAULT`` (the default of ``gatescope circuit``)
is chosen.

    .venv/bin/python bench/relp_rules.py [--prompts 200] [--models reference,reference-plain]
        [--kinds resid_pre,attn_out,mlp_out,head_out] [--methods LABEL,...] [--json F]
"""

from __future__ import annotations

import argparse
import json

import torch

from circuits.agreement import agreement, meets_target, methods_for
from circuits.methods import CIRCUIT_DEFAULT
from probe import load_model
from probe.tasks import load_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--models", default="reference,reference-plain")
    parser.add_argument("--kinds", default="resid_pre,attn_out,mlp_out,head_out")
    parser.add_argument("--methods", default=None, help="only these method labels")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", dest="json_out", default=None, help="write the results here")
    parser.add_argument(
        "--html", default=None, help="write labelled scatters (PREFIX-model-kind.html)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    task = load_task("ioi").subset(args.prompts)
    out, everywhere = {}, None
    for name in args.models.split(","):
        model = load_model(name)
        methods = methods_for(model)
        if args.methods:
            wanted = [m.strip() for m in args.methods.split(",")]
            unknown = sorted(set(wanted) - set(methods))
            if unknown:
                parser.error(f"--methods: unknown labels {unknown}; known: {sorted(methods)}")
            methods = {k: methods[k] for k in wanted}
        result = agreement(model, task, args.kinds.split(","), progress=False, methods=methods)
        out[name] = result.to_dict()
        print(f"\n{name}: agreement with activation patching, IOI ({len(task)} prompts)")
        print(result.table())
        print(f"\n{name}: best fast method per site kind (r >= 0.95 and top-10 >= 0.8)")
        print(result.verdicts())
        meeting = {
            m for m in result.fast if all(meets_target(row[m]) for row in result.stats.values())
        }
        everywhere = meeting if everywhere is None else everywhere & meeting
        if args.html:
            for kind in result.stats:
                result.figure(kind).write_html(f"{args.html}-{name}-{kind}.html")
    shown = ", ".join(sorted(everywhere)) if everywhere else "none"
    print(f"\nfast methods meeting the target on every kind of every model: {shown}")
    print(
        f"gatescope circuit's default (circuits.methods.CIRCUIT_DEFAULT): {CIRCUIT_DEFAULT.label}"
    )
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
