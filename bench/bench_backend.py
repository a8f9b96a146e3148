"""Overhead of the nnsight backend over the local hook backend (issue: beyond one machine).

In one run, on the same random 6-layer Qwen3-Next model (d_model 256, 8 heads) and the same
inputs, the same gatescope code runs on both backends; each figure is nnsight time / hook
time (median of interleaved repeats):

1. tracing every layer's ``attn_gate``, ``mlp_gate`` and ``resid_post`` (batch 8 x 128);
2. gate statistics over 64 prompts of 64 tokens (streaming, batch 16);
3. a write: clamping every attention gate of one layer to 0 (batch 8 x 128);
4. an activation-patching sweep of every head's output, full passes on both (the hook
   backend's resumed passes are timed apart, in ``bench_patching.py``), 16 prompt pairs;
5. RelP over ``head_out`` and ``mlp_out`` of every layer (two forward passes and one
   backward pass), the same 16 pairs.

    .venv/bin/python bench/bench_backend.py [--repeats 10]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_tracer import build_hf  # noqa: E402
from tiny import tiny_tokenizer  # noqa: E402

from probe import Site, Tracer, hook_sites, load_model  # noqa: E402
from probe.gates import gate_stats  # noqa: E402
from probe.nnsight_backend import use_nnsight  # noqa: E402


def _task(n: int = 16):
    from probe.tasks import Task

    g = torch.Generator().manual_seed(3)
    clean, corrupt, ans, wrong = [], [], [], []
    for _ in range(n):
        w = [f"w{int(i)}" for i in torch.randint(10, 200, (24,), generator=g)]
        clean.append(" ".join(w))
        corrupt.append(" ".join([*w[:-4], f"w{int(torch.randint(10, 200, (1,), generator=g))}",
                                 *w[-3:]]))  # fmt: skip
        ans.append(f"w{int(torch.randint(10, 200, (1,), generator=g))}")
        wrong.append(f"w{int(torch.randint(10, 200, (1,), generator=g))}")
    return Task("toy", clean, corrupt, ans, wrong)


def workloads(model, ids, prompts):
    from circuits.attribution import attribute
    from interventions.patching import activation_patching

    task = _task()

    def trace():
        with Tracer(model, ["attn_gate.*", "mlp_gate.*", "resid_post.*"]):
            model.forward(ids, None)

    def stats():
        gate_stats(model, prompts, batch_size=16, progress=False)

    def clamp():
        with hook_sites(model, [(Site("attn_gate", 2), lambda v, i: torch.zeros_like(v))], True):
            model.forward(ids, None)

    def patch():
        activation_patching(model, task, "head_out.*", resume=False, progress=False)

    def relp():
        with torch.enable_grad():
            attribute(model, task, "head_out.*,mlp_out.*", "relp")

    return {
        "trace": trace,
        "gate_stats": stats,
        "clamp_gate": clamp,
        "patching": patch,
        "relp": relp,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    hooks = load_model(build_hf(), tokenizer=tiny_tokenizer())
    nns = use_nnsight(hooks)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 256, (8, 128), generator=g)
    prompts = [
        " ".join(f"w{int(i)}" for i in torch.randint(0, 250, (64,), generator=g)) for _ in range(64)
    ]
    runs = {"hooks": workloads(hooks, ids, prompts), "nnsight": workloads(nns, ids, prompts)}
    times = {(b, w): [] for b in runs for w in runs[b]}
    with torch.no_grad():
        for backend in runs.values():
            for fn in backend.values():
                fn()
        for _ in range(args.repeats):
            for b, backend in runs.items():
                for w, fn in backend.items():
                    start = time.perf_counter()
                    fn()
                    times[(b, w)].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratios = {w: med[("nnsight", w)] / med[("hooks", w)] for w in runs["hooks"]}
    for w, r in ratios.items():
        print(f"{w:>12}: nnsight {r:.2f}x the hook backend ({1e3 * med[('hooks', w)]:.0f} ms)")
    print(json.dumps({"nnsight_over_hooks": ratios}))


if __name__ == "__main__":
    main()
