"""Every gate of a hybrid MoE model: tracing and streamed statistics vs the plain forward.

A random Qwen3-Next model of realistic width (default: 8 layers in the 3:1 Gated-DeltaNet /
full-attention pattern, d_model 1024, MoE MLPs with 16 experts, top-2 and a shared expert
behind its sigmoid gate; batch 4 x 256 tokens, eager attention). In one run, as ratios to the
plain HF forward pass:

1. gatescope's Tracer capturing every gate site of every layer (attention gate, DeltaNet beta,
   decay, output gate and recurrence output, router logits / probabilities / weights, shared
   gate) and ``resid_post``;
2. gate statistics of every gate type streamed through ``GateStatsReducer`` (nothing kept);
3. TransformerLens's ``TransformerBridge.run_with_cache`` over every hook whose name says gate,
   router, beta or resid_post (its equivalent; skipped, with the reason, if it cannot boot the
   model).

Each runner is timed in blocks of ``--block`` passes (the first discarded), blocks of all
runners alternating ``--repeats`` times; the median per pass is used, in wall-clock time
(``ratios_to_plain``) and in this process's CPU time (``cpu_ratios_to_plain``, the steadier
figure on a machine other jobs load).

    .venv/bin/python bench/bench_gates_hybrid.py [--d-model 1024] [--layers 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
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
from probe.gates import GateStatsReducer, gate_sites  # noqa: E402

GATE_KINDS = [
    "attn_gate",
    "delta_beta",
    "delta_decay",
    "delta_gate",
    "delta_out",
    "router_logit",
    "router_prob",
    "router_weight",
    "shared_gate",
    "resid_post",
]


def build_hf(d: int, layers: int) -> tf.PreTrainedModel:
    torch.manual_seed(0)
    head = 128
    cfg = tf.Qwen3NextConfig(
        vocab_size=256,
        hidden_size=d,
        num_hidden_layers=layers,
        num_attention_heads=d // head,
        num_key_value_heads=2,
        head_dim=head,
        intermediate_size=3 * d,
        layer_types=(["linear_attention"] * 3 + ["full_attention"]) * (layers // 4),
        linear_num_key_heads=max(d // 256, 1),
        linear_num_value_heads=max(d // 128, 2),
        linear_key_head_dim=head,
        linear_value_head_dim=head,
        num_experts=16,
        num_experts_per_tok=2,
        moe_intermediate_size=d // 2,
        shared_expert_intermediate_size=d,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        max_position_embeddings=1024,
    )
    cfg._attn_implementation = "eager"
    return tf.Qwen3NextForCausalLM(cfg).eval()


def bridge_runner(hf, ids):
    from transformer_lens.model_bridge import TransformerBridge

    folder = tempfile.mkdtemp()
    hf.save_pretrained(folder)
    bridge = TransformerBridge.boot_transformers(folder, hf_model=hf, tokenizer=tiny_tokenizer())
    words = ("gate", "router", "beta", "hook_resid_post")
    names = {n for n in bridge.hook_dict if any(w in n for w in words)}

    def run():
        return bridge.run_with_cache(ids, names_filter=lambda n: n in names)

    return run, len(names)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--d-model", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--block", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-bridge", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    hf = build_hf(args.d_model, args.layers)
    model = load_model(hf, tokenizer=tiny_tokenizer())
    ids = torch.randint(0, 256, (args.batch, args.seq), generator=torch.Generator().manual_seed(1))
    sites = model.sites([f"{k}.*" for k in GATE_KINDS if k in model.kinds])

    def plain():
        return hf(ids).logits

    def tracer():
        with Tracer(model, sites) as tr:
            hf(ids)
        return tr

    stat_sites = gate_sites(model)

    def streamed():
        reducer = GateStatsReducer(model)
        with Tracer(model, stat_sites, reducers=[reducer], keep=False):
            hf(ids)
        return reducer.report(args.batch)

    runners = {"plain": plain, "gatescope_trace": tracer, "gatescope_gate_stats": streamed}
    notes = {}
    if not args.no_bridge:
        try:
            import copy

            run, n_hooks = bridge_runner(copy.deepcopy(hf), ids)
            with torch.no_grad():
                run()  # the bridge re-implements the DeltaNet forward: check it runs here
            runners["transformer_lens_bridge"] = run
            notes["bridge_hooks"] = n_hooks
        except Exception as exc:  # report why the anchor could not run, keep the rest
            notes["bridge_skipped"] = f"{type(exc).__name__}: {str(exc)[:200]}"
    times: dict[str, list[float]] = {k: [] for k in runners}
    cpu: dict[str, list[float]] = {k: [] for k in runners}
    with torch.no_grad():
        for fn in runners.values():
            fn()
        for _ in range(args.repeats):
            for name, fn in runners.items():
                for i in range(args.block):
                    start, start_cpu = time.perf_counter(), time.process_time()
                    result = fn()
                    seconds = time.perf_counter() - start
                    cpu_seconds = time.process_time() - start_cpu
                    del result
                    if i >= 1:
                        times[name].append(seconds)
                        cpu[name].append(cpu_seconds)
    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    print(
        json.dumps(
            {
                "model": f"Qwen3-Next hybrid, {args.layers} layers (3:1 DeltaNet/attention), "
                f"d_model {args.d_model}, 16 experts top-2 + shared expert",
                "batch": [args.batch, args.seq],
                "sites_traced": len(sites),
                "gate_stat_sites": len(stat_sites),
                "plain_s": round(med["plain"], 4),
                "ratios_to_plain": {k: round(v / med["plain"], 3) for k, v in med.items()},
                # CPU time of this process (all its threads): less sensitive to other load
                "cpu_ratios_to_plain": {
                    k: round(v / med_cpu["plain"], 3) for k, v in med_cpu.items()
                },
                **notes,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
