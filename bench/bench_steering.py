"""Steered generation vs plain ``generate`` (issue: interventions).

In one run, the same model, prompts and greedy decoding of 32 new tokens: HF ``generate``
with no hooks vs with a CAA steering vector added at every position (KV cache on). The two
are interleaved prompt by prompt (so background load hits both alike), after a warm-up; the
figure is the ratio of the median total times (target <= 1.05x) and the added time per token.

    .venv/bin/python bench/bench_steering.py [--model reference] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from interventions.steering import build_vector, generate
from probe import load_model
from probe.tasks import TASKS_DIR, load_texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="reference")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    model = load_model(args.model)
    pairs = [json.loads(x) for x in (TASKS_DIR / "sentiment_pairs.jsonl").read_text().splitlines()]
    vec = build_vector(
        model, "caa", [p["positive"] for p in pairs], [p["negative"] for p in pairs], "resid_post.1"
    )
    prompts = load_texts("sentiment_prompts")[:8]
    runs = {
        "plain": lambda p: generate(model, p, None, max_new_tokens=32),
        "steered": lambda p: generate(model, p, vec, 4.0, max_new_tokens=32),
    }
    times = {k: [] for k in runs}
    with torch.no_grad():
        for fn in runs.values():
            fn(prompts[0])  # warm-up
        for rep in range(args.repeats):
            total = dict.fromkeys(runs, 0.0)
            for p in prompts:
                order = list(runs) if rep % 2 == 0 else list(reversed(runs))
                for name in order:
                    start = time.perf_counter()
                    runs[name](p)
                    total[name] += time.perf_counter() - start
            for name, t in total.items():
                times[name].append(t)
    med = {k: statistics.median(v) for k, v in times.items()}
    per_token_ms = (med["steered"] - med["plain"]) / (len(prompts) * 32) * 1e3
    print(
        f"plain generate {med['plain']:.2f} s, steered {med['steered']:.2f} s for "
        f"{len(prompts)} prompts x 32 tokens: steered/plain = {med['steered'] / med['plain']:.3f}x "
        f"({per_token_ms:+.3f} ms per generated token)"
    )


if __name__ == "__main__":
    main()
