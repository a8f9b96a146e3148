"""RelP over all sites vs the full activation-patching sweep (issue: circuits).

In one run on the same model and IOI prompts (one token length): RelP scores every
component of ``resid_pre``, ``attn_out``, ``mlp_out`` (per layer x position) and ``head_out``
(per layer x head) with two forward passes and one backward pass per site set; activation
patching runs the batched sweep over the same components. TransformerLens's attribution
patching is not a library function (it is a tutorial recipe built on ``run_with_cache`` and
backward hooks), so the anchor here is the patching sweep.

    .venv/bin/python bench/bench_attribution.py [--model reference] [--prompts 24]
"""

from __future__ import annotations

import argparse
import time

import torch

from circuits.attribution import attribute
from interventions.patching import activation_patching
from probe import load_model
from probe.tasks import load_task

SITES = (
    ("resid_pre.*", "each"),
    ("attn_out.*", "each"),
    ("mlp_out.*", "each"),
    ("head_out.*", None),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="reference")
    parser.add_argument("--prompts", type=int, default=24)
    args = parser.parse_args()
    model = load_model(args.model)
    task = load_task("ioi").subset(args.prompts)
    timings = {"relp": 0.0, "patching": 0.0}
    components = 0
    for sites, positions in SITES:
        start = time.perf_counter()
        rel = attribute(model, task, sites, "relp", positions=positions)
        timings["relp"] += time.perf_counter() - start
        start = time.perf_counter()
        with torch.no_grad():
            activation_patching(model, task, sites, positions=positions, progress=False)
        timings["patching"] += time.perf_counter() - start
        components += len(rel.components)
    print(
        f"{args.model}, {components} components: RelP {timings['relp']:.2f} s, activation "
        f"patching {timings['patching']:.2f} s -> RelP is "
        f"{timings['patching'] / timings['relp']:.1f}x faster"
    )


if __name__ == "__main__":
    main()
