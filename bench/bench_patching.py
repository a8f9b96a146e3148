"""Head-patching sweep speed vs TransformerLens (issue: interventions).

In one run, on the same model (``reference`` by default, eager attention in both) and the
same IOI prompts (one token length): gatescope's batched ``activation_patching`` over every
head's output at all positions vs TransformerLens's
``patching.get_act_patch_attn_head_out_all_pos`` through its ``TransformerBridge`` on the same
weights. Both report the patched mean logit difference per (layer, head); the figures are the
speed ratio and the largest difference between the two results.

TransformerLens runs one full pass per head. gatescope rides every head of a layer in one
pass and resumes it (``probe.resume``): the prefix the clean and corrupt prompts share (IOI's
corrupt prompt changes the second subject, near the end) runs once with a KV cache, and each
patched pass starts at its layer from the base run's recorded layer inputs, over the
positions after the prefix only, stopping at the answer and wrong logits. Resuming is
checked against the full forward of two prompts once per model (the first sweep, printed
apart) and by two unpatched rows in every sweep's first pass. The script prints the pass and
row counts and the shared prefix next to the times; ``--no-resume`` times full passes.

    .venv/bin/python bench/bench_patching.py [--model reference] [--prompts 24] [--repeats 3]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time

import torch

from interventions.patching import activation_patching, equal_length_rows
from probe import load_model
from probe.tasks import Task, load_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="reference")
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-resume", action="store_true", help="run every pass in full")
    args = parser.parse_args()
    from transformer_lens import patching
    from transformer_lens.model_bridge import TransformerBridge

    model = load_model(args.model, attn_implementation="eager")
    task = load_task("ioi")
    batch = task.tokenize(model.tokenizer)
    rows = equal_length_rows(batch)[: args.prompts].tolist()
    task = Task(
        "ioi",
        *[[getattr(task, f)[i] for i in rows] for f in ("clean", "corrupt", "answers", "wrongs")],
    )
    batch = task.tokenize(model.tokenizer).select(torch.arange(len(task)))

    folder = tempfile.mkdtemp()
    model.hf.save_pretrained(folder)
    bridge = TransformerBridge.boot_transformers(
        folder, hf_model=copy.deepcopy(model.hf), tokenizer=model.tokenizer
    )
    rows_idx = torch.arange(len(task))

    def metric(logits):
        last = logits[:, -1]
        return (last[rows_idx, batch.answer_ids] - last[rows_idx, batch.wrong_ids]).mean()

    def ours():
        return activation_patching(
            model, task, "head_out.*", resume=not args.no_resume, progress=False
        )

    def theirs():
        with torch.no_grad():
            _, cache = bridge.run_with_cache(batch.clean_ids)
            return patching.get_act_patch_attn_head_out_all_pos(
                bridge, batch.corrupt_ids, cache, metric
            )

    times = {"gatescope": [], "transformer_lens": []}
    for _ in range(args.repeats):
        for name, fn in (("gatescope", ours), ("transformer_lens", theirs)):
            start = time.perf_counter()
            out = fn()
            times[name].append(time.perf_counter() - start)
            if name == "gatescope":
                result = out
            else:
                tl = out
    span = result.clean_logit_diff - result.corrupt_logit_diff
    mine = torch.tensor(result.grid("head_out")[2]) * span + result.corrupt_logit_diff
    diff = float((mine - tl.float()).abs().max())
    med = {k: statistics.median(v) for k, v in times.items()}
    heads = model.dims.n_layers * model.dims.n_heads
    print(
        f"{args.model}: {len(task)} IOI prompts of {batch.clean_ids.shape[1]} tokens, {heads} heads"
    )
    print(
        f"gatescope {med['gatescope']:.2f} s, TransformerLens bridge "
        f"{med['transformer_lens']:.2f} s: gatescope is "
        f"{med['transformer_lens'] / med['gatescope']:.1f}x faster"
    )
    print(f"largest difference in patched logit difference: {diff:.2e}")
    first = times["gatescope"][0]
    print(
        f"gatescope's first sweep on the model, with the once-per-model check of resumed passes "
        f"against the full forward: {first:.2f} s ({med['transformer_lens'] / first:.1f}x)"
    )
    n, layers, heads_per = len(task), model.dims.n_layers, model.dims.n_heads
    tokens = batch.clean_ids.shape[1]
    if result.resumed:
        suffix = tokens - result.shared_prefix
        how = (
            f"gatescope {2 + layers} passes: the shared prefix ({result.shared_prefix} tokens), "
            f"the source and base suffixes in one pass, then one pass per layer of "
            f"{heads_per * n} rows x {suffix} tokens from that layer on"
        )
    else:
        how = f"gatescope {2 + -(-heads // max(1, 256 // n))} full passes"
    print(
        f"forward passes: {how}; TransformerLens {1 + heads} full passes of {n} rows x "
        f"{tokens} tokens; torch threads {torch.get_num_threads()}, device {model.device}"
    )


if __name__ == "__main__":
    main()
