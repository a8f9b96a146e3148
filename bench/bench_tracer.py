"""Tracer overhead and gate-statistics memory (issue: foundation).

In one run, on a random 6-layer Qwen3-Next model (every layer full attention, dense SwiGLU
MLPs, d_model 256, 8 heads, batch 8 x 128 tokens), as ratios to the plain HF forward pass:

1. gatescope's Tracer capturing every layer's ``attn_gate``, ``mlp_gate`` and ``resid_post``;
2. TransformerLens's ``TransformerBridge.run_with_cache`` capturing the equivalent hooks
   (``attn.hook_q_gate``, ``mlp.hook_pre`` -- the MLP gate -- and ``hook_resid_post``);
3. nnsight saving the same modules' outputs.

All run with eager attention (the bridge forces it). Also the Tracer streaming gate
statistics through a reducer with nothing kept. Each runner is timed in blocks of
``--block`` passes (the first two of each block discarded), the blocks of all runners
alternating ``--repeats`` times, median per pass: each runner is measured in its own steady
state. Single passes taken round-robin would charge one runner's page faults to the next:
freeing another tool's captured tensors makes glibc hand memory back to the kernel, and the
plain pass run after it then faults it in again.

The timings run twice, each in its own process: with glibc's default allocator settings and
with freed memory kept for reuse (``MALLOC_TRIM_THRESHOLD_``/``MALLOC_MMAP_THRESHOLD_``/
``MALLOC_TOP_PAD_``, the same for every runner). With the default settings glibc's dynamic
thresholds depend on everything the process freed before, so every ratio (plain included:
its page faults per pass vary from 0 to about 20,000 between runs) moves by up to ~20% from
run to run; the script prints minor page faults per pass next to the ratios. With freed
memory kept there are no faults and the ratios are stable.

Then the peak memory (RSS high-water mark above the warmed-up baseline, each mode in its own
process) of gate statistics over 500 prompts, streamed vs stored.

    .venv/bin/python bench/bench_tracer.py [--repeats 6] [--block 6] [--prompts 500]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers as tf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from tiny import tiny_tokenizer  # noqa: E402

from probe import Tracer, load_model  # noqa: E402

LAYERS, D, HEADS, BATCH, SEQ = 6, 256, 8, 8, 128


def build_hf() -> tf.PreTrainedModel:
    torch.manual_seed(0)
    cfg = tf.Qwen3NextConfig(
        vocab_size=256,
        hidden_size=D,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=2,
        head_dim=D // HEADS,
        intermediate_size=3 * D,
        layer_types=["full_attention"] * LAYERS,
        num_experts=0,
        mlp_only_layers=list(range(LAYERS)),
        max_position_embeddings=512,
    )
    cfg._attn_implementation = "eager"
    return tf.Qwen3NextForCausalLM(cfg).eval()


def nnsight_runner(hf, ids):
    from nnsight import NNsight

    wrapped = NNsight(hf)

    def run():
        saved = []
        with wrapped.trace(ids):
            for layer in wrapped.model.layers:
                saved.append(layer.self_attn.q_proj.output.save())
                saved.append(layer.mlp.act_fn.output.save())
                saved.append(layer.output.save())
        return saved

    return run


def bridge_runner(hf, ids):
    from transformer_lens.model_bridge import TransformerBridge

    folder = tempfile.mkdtemp()
    hf.save_pretrained(folder)
    bridge = TransformerBridge.boot_transformers(folder, hf_model=hf, tokenizer=tiny_tokenizer())
    names = set()
    for i in range(LAYERS):
        names |= {
            f"blocks.{i}.attn.hook_q_gate",
            f"blocks.{i}.mlp.hook_pre",
            f"blocks.{i}.hook_resid_post",
        }

    def run():
        return bridge.run_with_cache(ids, names_filter=lambda n: n in names)

    return run


def speed(repeats: int, block: int) -> dict:
    hf = build_hf()
    model = load_model(hf, tokenizer=tiny_tokenizer())
    ids = torch.randint(0, 256, (BATCH, SEQ), generator=torch.Generator().manual_seed(1))
    sites = ["attn_gate.*", "mlp_gate.*", "resid_post.*"]

    def plain():
        return hf(ids).logits

    def tracer():
        with Tracer(model, sites) as tr:
            hf(ids)
        return tr

    from probe.gates import GateStatsReducer

    def streamed():
        reducer = GateStatsReducer(model)
        with Tracer(model, ["attn_gate.*", "mlp_gate.*"], reducers=[reducer], keep=False):
            hf(ids)
        return reducer

    runners = {"plain": plain, "gatescope": tracer, "gatescope_streamed": streamed}
    runners["nnsight"] = nnsight_runner(hf, ids)
    runners["transformer_lens_bridge"] = bridge_runner(copy.deepcopy(hf), ids)
    times: dict[str, list[float]] = {k: [] for k in runners}
    faults: dict[str, list[int]] = {k: [] for k in runners}
    with torch.no_grad():
        for fn in runners.values():  # warm-up
            fn()
        for _ in range(repeats):
            for name, fn in runners.items():
                for i in range(block):
                    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                    start = time.perf_counter()
                    result = fn()
                    seconds = time.perf_counter() - start
                    del result  # freed before the next pass, as a caller would
                    if i >= 2:
                        times[name].append(seconds)
                        faults[name].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "ratios": {k: med[k] / med["plain"] for k in med},
        "plain_ms": 1e3 * med["plain"],
        "faults_per_pass": {k: statistics.median(v) for k, v in faults.items()},
    }


def memory_child(mode: str, n_prompts: int) -> None:
    """Run gate statistics in this process and print the extra peak RSS (MiB)."""
    from probe.gates import GateStatsReducer, gate_sites, gate_stats

    model = load_model(build_hf(), tokenizer=tiny_tokenizer())
    g = torch.Generator().manual_seed(2)
    prompts = [
        " ".join(f"w{int(i)}" for i in torch.randint(0, 250, (64,), generator=g))
        for _ in range(n_prompts)
    ]
    with torch.no_grad():
        model.run(prompts[:16])
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if mode == "streamed":
        gate_stats(model, prompts, batch_size=16, progress=False)
    else:
        sites = gate_sites(model)
        with Tracer(model, sites) as tr, torch.no_grad():
            for batch in model.batches(prompts, 16):
                model.forward(batch.input_ids, batch.attention_mask)
        reducer = GateStatsReducer(model)
        for site in sites:
            reducer.update(site, tr[site], None)
        reducer.report(len(prompts))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"extra_peak_mib": (peak - base) / 1024}))


def memory(n_prompts: int) -> dict:
    out = {}
    for mode in ("streamed", "stored"):
        res = subprocess.run(
            [sys.executable, __file__, "--memory-child", mode, "--prompts", str(n_prompts)],
            capture_output=True,
            text=True,
            check=True,
        )
        out[mode] = json.loads(res.stdout.strip().splitlines()[-1])["extra_peak_mib"]
    return out


KEEP_FREED = {
    "MALLOC_TRIM_THRESHOLD_": str(4 << 30),
    "MALLOC_MMAP_THRESHOLD_": str(1 << 30),
    "MALLOC_TOP_PAD_": str(256 << 20),
}


def speed_in_child(repeats: int, block: int, threads: int | None, keep_freed: bool) -> dict:
    env = dict(os.environ, **(KEEP_FREED if keep_freed else {}))
    if not keep_freed:
        for key in KEEP_FREED:
            env.pop(key, None)
    cmd = [sys.executable, __file__, "--speed-child", "--repeats", str(repeats)]
    cmd += ["--block", str(block)]
    if threads:
        cmd += ["--threads", str(threads)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=6, help="blocks per runner")
    parser.add_argument("--block", type=int, default=6, help="passes per block (>= 3)")
    parser.add_argument("--prompts", type=int, default=500)
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--memory-child", choices=["streamed", "stored"])
    parser.add_argument("--speed-child", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args.memory_child, args.prompts)
        return
    if args.speed_child:
        print(json.dumps(speed(args.repeats, max(3, args.block))))
        return
    all_ratios = {}
    for label, keep in (("default allocator", False), ("freed memory kept", True)):
        res = all_ratios[label] = speed_in_child(args.repeats, args.block, args.threads, keep)
        print(f"[{label}] plain HF forward: {res['plain_ms']:.1f} ms (batch {BATCH} x {SEQ})")
        for name in ("gatescope", "gatescope_streamed", "transformer_lens_bridge", "nnsight"):
            print(
                f"{name:>24}: {res['ratios'][name]:.3f}x plain "
                f"({res['faults_per_pass'][name]:.0f} page faults per pass; "
                f"plain {res['faults_per_pass']['plain']:.0f})"
            )
    ratios = all_ratios
    mem = memory(args.prompts)
    print(
        f"gate statistics over {args.prompts} prompts x 64 tokens, extra peak RSS: "
        f"streamed {mem['streamed']:.0f} MiB, stored {mem['stored']:.0f} MiB"
    )
    print(json.dumps({"ratios": ratios, "memory_mib": mem}))


if __name__ == "__main__":
    main()
