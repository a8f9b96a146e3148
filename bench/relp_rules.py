"""The agreement study on the reference models: every method against activation patching.

For each reference model, on the IOI task, per site kind (``resid_pre``, ``attn_out``,
``mlp_out`` per layer x position on the largest group of equal-length prompts, ``head_out``
per layer x head): Pearson r, Spearman r, the number of components, top-5 / top-10 overlap
with activation patching, and each method's time as a ratio to the patching sweep, for
AtP, AtP*, RelP with attention held constant (AH; both gate rules on the gated model) and
without, RelP*, IG (5 steps), and RelP with the GLU product's plain gradient.

    .venv/bin/python bench/relp_rules.py [--prompts 200] [--models reference,reference-plain]
"""

from __future__ import annotations

import argparse
import json

import torch

from circuits.agreement import agreement, methods_for
from circuits.methods import RelP
from probe import load_model
from probe.tasks import load_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--models", default="reference,reference-plain")
    parser.add_argument("--kinds", default="resid_pre,attn_out,mlp_out,head_out")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", dest="json_out", default=None, help="write the results here")
    parser.add_argument(
        "--html", default=None, help="write labelled scatters (PREFIX-model-kind.html)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    task = load_task("ioi").subset(args.prompts)
    out = {}
    for name in args.models.split(","):
        model = load_model(name)
        methods = methods_for(model)
        methods["relp AH glu=gradient"] = RelP(glu_rule="gradient")
        result = agreement(model, task, args.kinds.split(","), progress=False, methods=methods)
        out[name] = result.to_dict()
        print(f"\n{name}: agreement with activation patching, IOI ({len(task)} prompts)")
        print(result.table())
        if args.html:
            for kind in result.stats:
                result.figure(kind).write_html(f"{args.html}-{name}-{kind}.html")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
