"""RelP's rules against activation patching on the reference models (issue: circuits).

For each reference model, on the IOI task: Pearson r between activation patching and AtP,
IG (5 steps) and RelP under each combination of its two rules for products of activation
streams -- the attention output gate (``half`` or ``constant``; gated model only) and the GLU
product (``half``, the LRP rule, or ``gradient``) -- per site kind: ``resid_pre``,
``attn_out``, ``mlp_out`` per layer x position (the largest group of equal-length prompts),
``head_out`` per layer x head.

    .venv/bin/python bench/relp_rules.py [--prompts 200] [--models reference,reference-plain]
"""

from __future__ import annotations

import argparse
import json

import torch

from circuits.agreement import agreement
from probe import load_model
from probe.tasks import load_task


def variants(gated: bool) -> dict[str, dict]:
    methods = {"atp": {"method": "atp"}, "ig": {"method": "ig", "steps": 5}}
    for gate in ("half", "constant") if gated else ("half",):
        for glu in ("half", "gradient"):
            name = f"relp gate={gate} glu={glu}" if gated else f"relp glu={glu}"
            methods[name] = {"method": "relp", "gate_rule": gate, "glu_rule": glu}
    return methods


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--models", default="reference,reference-plain")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", dest="json_out", default=None, help="write the table here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    task = load_task("ioi").subset(args.prompts)
    table = {}
    for name in args.models.split(","):
        model = load_model(name)
        result = agreement(model, task, progress=False, methods=variants(model.is_gated))
        table[name] = result.pearson
        kinds = list(result.pearson)
        print(f"\n{name}: Pearson r with activation patching, {len(task)} IOI prompts")
        print("method".ljust(30) + "".join(k.rjust(11) for k in kinds))
        for method in result.pearson[kinds[0]]:
            row = "".join(f"{result.pearson[k][method]:11.3f}" for k in kinds)
            print(method.ljust(30) + row)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(table, f, indent=2)


if __name__ == "__main__":
    main()
