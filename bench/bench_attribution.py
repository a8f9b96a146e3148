"""Every attribution method over all sites vs the full activation-patching sweep and
TransformerLens's AtP.

In one run on the same model and IOI prompts (the largest group of one token length):

1. Every node method of the registry (:data:`circuits.agreement.methods_for`: AtP, AtP*
   with and without GradDrop, RelP with and without the AH rule, RelP*, IG with 5 and 2
   steps) scores every component of ``resid_pre``, ``attn_out``, ``mlp_out`` and
   ``head_out`` per layer x position (x head) in one call; its time is printed as a ratio to
   the patching sweep.
2. The edge methods EAP and EAP-IG (5 steps): the whole circuit graph
   (:func:`circuits.graph.build_graph`: node scores and every writer -> reader edge, with
   each head's q / k / v / gate reader gradients), timed the same way. (AtP, RelP and EAP:
   two forward passes and one backward pass.)
3. Activation patching: the batched sweep over the same components (the exact anchor).
4. TransformerLens's attribution patching (its documented recipe: ``run_with_cache`` on the
   clean prompts, forward and backward hooks on the corrupt run over the equivalent hook
   points) on a ``HookedTransformer`` built from the same weights without processing; only
   for families TransformerLens converts (reference-plain is Qwen3; Qwen3-Next, the gated
   reference, has no TransformerLens conversion, so that row is skipped with the reason).

Each timing is the best of ``--repeats`` runs; figures are printed as ratios.

    .venv/bin/python bench/bench_attribution.py [--model reference-plain] [--prompts 200]
"""

from __future__ import annotations

import argparse
import time

import torch

from circuits.agreement import methods_for
from circuits.attribution import attribute
from circuits.graph import build_graph
from circuits.methods import EAP, EAPIG
from interventions.components import equal_length_rows, prepare
from interventions.patching import activation_patching
from probe import load_model
from probe.tasks import Task, load_task

SITES = "resid_pre.*,attn_out.*,mlp_out.*,head_out.*"
TL_HOOKS = ("hook_resid_pre", "hook_attn_out", "hook_mlp_out", "attn.hook_z")


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def hooked_transformer(model):
    """A HookedTransformer with the same weights, or None with the reason."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens import loading_from_pretrained as tl_load

    arch = model.hf.config.architectures[0] if model.hf.config.architectures else "?"
    converters = {"Qwen3ForCausalLM": tl_load.convert_qwen3_weights}
    if arch not in converters:
        return None, f"TransformerLens has no weight conversion for {arch}"
    cfg = tl_load.convert_hf_model_config(model.hf.config._name_or_path)
    fields = HookedTransformerConfig.__dataclass_fields__
    cfg = HookedTransformerConfig(**{k: v for k, v in cfg.items() if k in fields})
    tl = HookedTransformer(cfg, tokenizer=model.tokenizer, move_to_device=False)
    tl.load_and_process_state_dict(
        converters[arch](model.hf, cfg),
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
        refactor_factored_attn_matrices=False,
    )
    return tl.eval(), ""


def tl_atp(tl, batch) -> dict[str, torch.Tensor]:
    """TransformerLens's attribution-patching recipe: (clean - corrupt) . grad per hook."""
    names = [f"blocks.{i}.{h}" for i in range(tl.cfg.n_layers) for h in TL_HOOKS]
    rows = torch.arange(len(batch))
    last = batch.lengths - 1

    def metric(logits):
        final = logits[rows, last]  # (N, vocab)
        return (final[rows, batch.answer_ids] - final[rows, batch.wrong_ids]).mean()

    with torch.no_grad():
        _, clean = tl.run_with_cache(batch.clean_ids, names_filter=lambda n: n in names)
    acts, grads = {}, {}

    def fwd(x, hook):
        acts[hook.name] = x.detach()

    def bwd(g, hook):
        grads[hook.name] = g.detach()

    tl.reset_hooks()
    for name in names:
        tl.add_hook(name, fwd, "fwd")
        tl.add_hook(name, bwd, "bwd")
    try:
        metric(tl(batch.corrupt_ids)).backward()
    finally:
        tl.reset_hooks()
    return {n: ((clean[n] - acts[n]) * grads[n]).sum(0) for n in names}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="reference-plain")
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = load_model(args.model)
    task = load_task("ioi").subset(args.prompts)
    rel = attribute(model, task, SITES, "relp", positions="each")
    n, comps = rel.n_prompts, len(rel.components)
    times = {}
    for name, method in methods_for(model).items():
        times[name] = best(
            lambda m=method: attribute(model, task, SITES, m, positions="each"), args.repeats
        )
    rows = equal_length_rows(task.tokenize(model.tokenizer)).tolist()
    same = Task(  # the prompts the sweep and the node methods use
        task.name,
        *[[getattr(task, f)[i] for i in rows] for f in ("clean", "corrupt", "answers", "wrongs")],
    )
    for method in (EAP(), EAPIG(steps=5)):
        times[f"{method.label} (graph)"] = best(
            lambda m=method: build_graph(model, same, m), args.repeats
        )
    with torch.no_grad():
        times["patching"] = best(
            lambda: activation_patching(model, task, SITES, positions="each", progress=False),
            args.repeats,
        )
    print(f"{args.model}: {comps} components (layer x position, x head), {n} prompts")
    for name, t in times.items():
        print(f"  {name:<30} {t:8.3f} s   {t / times['patching']:6.3f} x the patching sweep")
    times["RelP"], times["AtP"] = (
        times["relp"],
        times["atp"],
    )
    tl, why = hooked_transformer(model)
    if tl is None:
        print(f"  TransformerLens AtP: skipped ({why})")
        return
    batch = prepare(model, task, "each")
    t_tl = best(lambda: tl_atp(tl, batch), args.repeats)
    ours = attribute(model, task, "mlp_out.*", "atp", positions="each")
    theirs = tl_atp(tl, batch)
    span = ours.clean_logit_diff - ours.corrupt_logit_diff
    gap = max(
        abs(c.effect - float(theirs[f"blocks.{c.layer}.hook_mlp_out"][c.position].sum()) / span)
        for c in ours.components
    )
    print(f"  TL AtP vs gatescope AtP on mlp_out: max |difference| {gap:.1e}")
    print(f"  {'TransformerLens AtP':<22} {t_tl:8.3f} s")
    print(f"  TL AtP / RelP    = {t_tl / times['RelP']:.2f}x")
    print(f"  TL AtP / AtP     = {t_tl / times['AtP']:.2f}x")


if __name__ == "__main__":
    main()
