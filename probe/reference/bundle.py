"""Bundle a trained reference model into ``data/models/NAME`` with a README of its figures."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from probe.errors import GatescopeError
from probe.reference import DATA
from probe.reference.evaluate import ReferenceEval

ARCH_CLASS = {"gated": "Qwen3NextForCausalLM", "plain": "Qwen3ForCausalLM"}


def _fmt(values: list[float] | None) -> str:
    return "absent (no gate)" if values is None else ", ".join(f"{v:.3f}" for v in values)


def _figures(ev: ReferenceEval) -> list[tuple[str, str]]:
    return [
        ("IOI accuracy (held-out templates)", f"{ev.ioi_accuracy:.3f} ({ev.n_ioi} prompts)"),
        ("IOI mean logit difference", f"{ev.ioi_logit_diff:.2f}"),
        (
            "induction accuracy (repeated half)",
            f"{ev.induction_accuracy:.3f} ({ev.n_induction} sequences)",
        ),
        (
            "facts accuracy (held-out phrasing, top-1)",
            f"{ev.facts_accuracy:.3f} ({ev.n_facts} facts)",
        ),
        ("held-out prose perplexity", f"{ev.prose_perplexity:.1f}"),
        ("mean gate per layer", _fmt(ev.mean_gate_per_layer)),
        ("attention on the first token per layer", _fmt(ev.sink_per_layer)),
        ("largest absolute residual activation per layer", _fmt(ev.max_activation_per_layer)),
    ]


def _schedule(cfg: dict) -> str:
    return (
        f"{cfg['steps']} steps of {cfg['batch']} x {cfg['seq']} tokens, AdamW (lr {cfg['lr']}, "
        f"betas 0.9/0.95, weight decay {cfg['weight_decay']}, {cfg['warmup']} warm-up steps, "
        "cosine to 10%)"
    )


def _training(info: dict, before: ReferenceEval | None) -> str:
    """The training paragraph: one stage, or a first stage and its continuation."""
    cfg, first = info["config"], info.get("init")
    minutes = info["train_seconds"] / 60
    loss = (
        f"Final training loss (mean of the last 50 steps): {info['final_loss_mean_last_50']:.3f}."
    )
    if first is None:
        return (
            f"**Training**: {_schedule(cfg)}, seed {cfg['seed']}; {minutes:.0f} minutes on 2 CPU "
            f"cores (one thread, the twin trained alongside). {loss}"
        )
    fixed = (
        ""
        if before is None
        else f" (held-out induction accuracy {before.induction_accuracy:.3f} after it)"
    )
    return f"""**Training**, in two stages, seed {cfg["seed"]}:

1. {_schedule(first["config"])} on the first corpus (`--no-induction-tail`, sha256
   `{first["corpus_sha256"][:16]}…`), whose induction documents end right after the repeat:
   the models learnt to expect the end of the text late in every repeat and predicted
   end-of-text there instead of the copied word{fixed}; {first["train_seconds"] / 60:.0f} minutes.
2. {_schedule(cfg)} from the stage-1 weights and tokenizer on the current corpus, whose
   induction documents go on into a third copy; {minutes:.0f} minutes.

Both on 2 CPU cores, one thread each, the twin trained alongside (other work shared the
machine during stage 2). {loss}"""


def _reproduce(info: dict, name: str) -> str:
    cfg, first = info["config"], info.get("init")
    arch, seed = cfg["arch"], cfg["seed"]
    if first is None:
        lines = [f"gatescope reference train --arch {arch} --steps {cfg['steps']} --seed {seed} \\"]
        lines += [f"    --out runs/{arch}", f"gatescope reference bundle runs/{arch} --name {name}"]
        return "\n".join(lines)
    f = first["config"]
    return "\n".join(
        [
            f"gatescope reference train --arch {arch} --steps {f['steps']} --seed {seed} \\",
            f"    --no-induction-tail --out runs/{arch}",
            f"gatescope reference train --arch {arch} --init {cfg['init']} \\",
            f"    --steps {cfg['steps']} --lr {cfg['lr']} --warmup {cfg['warmup']} \\",
            f"    --seed {seed} --out runs/{arch}-stage2",
            f"gatescope reference bundle runs/{arch}-stage2 --name {name}",
        ]
    )


def readme(
    name: str, info: dict, ev: ReferenceEval, size_bytes: int, before: ReferenceEval | None = None
) -> str:
    """The model card: architecture, sizes, data, training, held-out figures, reproduction."""
    cfg = info["config"]
    arch = cfg["arch"]
    table = "\n".join(f"| {k} | {v} |" for k, v in _figures(ev))
    gate = (
        "elementwise sigmoid output gate (q_proj emits [query | gate] per head)"
        if arch == "gated"
        else "no output gate"
    )
    return f"""# {name}

`transformers.{ARCH_CLASS[arch]}`, {gate}; every layer full attention, dense SwiGLU MLPs,
RMSNorm, rotary embeddings on the whole head, tied embeddings. Its twin differs only in the
gate: same data, seed, steps and sizes.

| size | |
|---|---|
| layers | {cfg["n_layers"]} |
| d_model | {cfg["d_model"]} |
| heads x d_head | {cfg["n_heads"]} x {cfg["d_head"]} ({cfg["n_kv_heads"]} key/value heads) |
| d_mlp | {cfg["d_mlp"]} |
| vocabulary | {cfg["vocab"]} (byte-level BPE trained on the corpus) |
| context | {cfg["seq"]} tokens |
| parameters | {info["parameters"]:,} |
| weights file | {size_bytes / 1e6:.1f} MB (safetensors, float32) |

**Data**: the reference corpus of `probe/reference/corpus.py`, seed {cfg["seed"]}
({info["documents"]:,} documents: IOI from 18 templates, induction, facts in five phrasings,
sentiment and topic sentences, Python's `pydoc_data` prose; sha256 `{info["corpus_sha256"][:16]}…`).

{_training(info, before)}

## Held-out figures (`gatescope reference eval {name.replace("-gated", "")}`)

| figure | value |
|---|---|
{table}

## Reproduce

```bash
{_reproduce(info, name)}
```
"""


def bundle(
    run_dir: str | Path, name: str, evaluation: ReferenceEval, before: ReferenceEval | None = None
) -> Path:
    """Copy ``run_dir/model`` to ``data/models/NAME`` and write its README (``before``: the
    figures of the model a continued run started from)."""
    src = Path(run_dir) / "model"
    if not (src / "model.safetensors").is_file():
        raise GatescopeError(f"{src} has no trained model; run `gatescope reference train` first")
    info = json.loads((src / "training.json").read_text())
    dest = DATA / "models" / name
    tmp = dest.with_name(f".{name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    size = (tmp / "model.safetensors").stat().st_size
    (tmp / "README.md").write_text(readme(name, info, evaluation, size, before))
    (tmp / "evaluation.json").write_text(evaluation.to_json())
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest
