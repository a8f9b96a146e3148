"""Bundle a trained reference model into ``data/models/NAME`` with a README of its figures."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from probe.errors import GatescopeError
from probe.reference import DATA
from probe.reference.corpus import IOI_TEST, IOI_TRAIN, joined_by_and
from probe.reference.evaluate import TOKEN_CLASSES, ReferenceEval
from probe.reference.train import BASE_WEIGHT_DECAY

ARCH_CLASS = {
    "gated": "Qwen3NextForCausalLM",
    "plain": "Qwen3ForCausalLM",
    "hybrid": "Qwen3NextForCausalLM",
}
DESCRIPTION = {
    "gated": "elementwise sigmoid output gate (q_proj emits [query | gate] per head); every "
    "layer full attention, dense SwiGLU MLPs, RMSNorm, rotary embeddings on the whole head, "
    "tied embeddings. Its twin `reference-plain` differs only in the gate: same data, seed, "
    "steps and sizes.",
    "plain": "no output gate; every layer full attention, dense SwiGLU MLPs, RMSNorm, rotary "
    "embeddings on the whole head, tied embeddings. Its twin `reference-gated` differs only "
    "in the gate: same data, seed, steps and sizes.",
    "hybrid": "the layer pattern of Qwen3-Next / Qwen3.5: Gated-DeltaNet (`linear_attn`) in "
    "layers 0-2, full attention with the elementwise sigmoid output gate in layer 3; every "
    "MLP a mixture of experts (router `mlp.gate`, top-k of the experts, plus a shared "
    "expert behind its sigmoid gate `mlp.shared_expert_gate`), trained with the family's "
    "load-balancing auxiliary loss (`output_router_logits`, `router_aux_loss_coef`); "
    "RMSNorm, rotary embeddings on the whole head, tied embeddings.",
}


def _fmt(values, digits: int = 3) -> str:
    if values is None:
        return "absent (no gate)"
    return ", ".join("-" if v is None else f"{v:.{digits}f}" for v in values)


def _figures(ev: ReferenceEval) -> list[tuple[str, str]]:
    rows = [
        ("IOI accuracy (held-out templates)", f"{ev.ioi_accuracy:.3f} ({ev.n_ioi} prompts)"),
        ("IOI mean logit difference", f"{ev.ioi_logit_diff:.2f}"),
        (
            'IOI accuracy, templates without "and" between the names',
            f"{ev.ioi_accuracy_no_and:.3f} ({ev.n_ioi_no_and} prompts)",
        ),
        ('IOI mean logit difference, without "and"', f"{ev.ioi_logit_diff_no_and:.2f}"),
        (
            "induction accuracy (repeated half, words never in an induction document)",
            f"{ev.induction_accuracy:.3f} ({ev.n_induction} sequences)",
        ),
        *(
            [
                (
                    "diagnostic: induction accuracy on words induction documents use",
                    f"{ev.induction_accuracy_seen_words:.3f}",
                ),
                (
                    "diagnostic: logit gain of a copied token, used / held-out words",
                    f"{ev.induction_logit_gain['seen']:.2f} / "
                    f"{ev.induction_logit_gain['held_out']:.2f}",
                ),
            ]
            if ev.induction_logit_gain
            else []
        ),
        *(
            [
                (
                    "diagnostic: induction accuracy (held-out words) without the document start",
                    f"{ev.induction_accuracy_no_document_start:.3f}",
                )
            ]
            if ev.induction_accuracy_no_document_start is not None
            else []
        ),
        (
            "facts accuracy (held-out phrasing, top-1)",
            f"{ev.facts_accuracy:.3f} ({ev.n_facts} facts)",
        ),
        ("held-out prose perplexity", f"{ev.prose_perplexity:.1f}"),
        ("layer types", ", ".join(t.replace("_attention", "") for t in ev.layer_types)),
        ("mean attention gate per layer", _fmt(ev.mean_gate_per_layer)),
        ("fraction of attention-gate values below 0.1", _fmt(ev.gate_below_0_1_per_layer)),
        ("attention on the first token per layer", _fmt(ev.sink_per_layer)),
        ("largest absolute residual activation per layer", _fmt(ev.max_activation_per_layer)),
    ]
    if ev.paper_effects:
        rows.append((f"verdict (against {ev.paper_effects['twin']})", ev.paper_effects["verdict"]))
    hy = ev.hybrid
    if hy:
        for layer, e in hy["experts"].items():
            rows.append((f"layer {layer}: expert load", _fmt(e["load"])))
            rows.append((f"layer {layer}: router entropy (nats)", f"{e['router_entropy']:.3f}"))
            rows.append((f"layer {layer}: mean shared-expert gate", f"{e['mean_shared_gate']:.3f}"))
        rows.append(("dead experts (under 1% of assignments)", str(hy["dead_experts"])))
        for layer, d in hy["deltanet"].items():
            rows.append(
                (
                    f"layer {layer}: DeltaNet half-life per head (tokens)",
                    _fmt(d["half_life_tokens"], 1),
                )
            )
            rows.append(
                (f"layer {layer}: DeltaNet write strength per head", _fmt(d["mean_write_strength"]))
            )
    return rows


def _class_table(ev: ReferenceEval) -> str:
    hy = ev.hybrid
    if not hy or not hy["experts"]:
        return ""
    head = "| layer | expert | load | " + " | ".join(TOKEN_CLASSES) + " | prefers |"
    lines = [head, "|" + "---|" * (len(TOKEN_CLASSES) + 4)]
    for layer, e in hy["experts"].items():
        for expert, share in e["class_share"].items():
            cells = " | ".join(f"{share[c]:.2f}" for c in TOKEN_CLASSES)
            prefers = e["preferred_class"][int(expert)]
            lines.append(
                f"| {layer} | {expert} | {e['load'][int(expert)]:.3f} | {cells} | {prefers} |"
            )
    base = " | ".join(f"{c} {v:.2f}" for c, v in hy["token_class_share"].items())
    return (
        "\n\n### Which tokens each expert takes\n\nShare of each expert's routed assignments "
        "by token class (rows sum to 1); `prefers` is the class with the largest share "
        f"relative to the tokens overall ({base}; {hy['tokens']:,} tokens of held-out "
        "IOI, induction, fact prompts and prose).\n\n" + "\n".join(lines)
    )


def _stages(info: dict) -> list[dict]:
    """The training records from the first stage to ``info``."""
    chain = [info]
    while chain[-1].get("init"):
        chain.append(chain[-1]["init"])
    return chain[::-1]


def _schedule(cfg: dict) -> str:
    return (
        f"{cfg['steps']} steps of {cfg['batch']} x {cfg['seq']} tokens, AdamW (lr {cfg['lr']}, "
        f"betas 0.9/0.95, weight decay {cfg['weight_decay']}, {cfg['warmup']} warm-up steps, "
        "cosine to 10%)"
    )


def _corpus(cfg: dict, sha: str) -> str:
    version = cfg.get("corpus_version", 1)
    if version == 1:
        tail = (
            "" if cfg.get("induction_tail", False) else ", induction documents ending at the repeat"
        )
        return f"corpus 1 (18 IOI templates, induction over ~200 words{tail}; sha256 `{sha[:16]}…`)"
    what = {
        2: "",
        3: ", short word lists",
        4: ", long word lists",
        5: ", long word lists, made-up induction words",
    }.get(version, "")
    if not cfg.get("induction_docs", True):
        what += ", no induction documents"
    return f"corpus {version} (sha256 `{sha[:16]}…`{what})"


def _command(stage: dict, k: int, arch: str) -> str:
    cfg = stage["config"]
    schedule = stage.get("schedule") or [[0, cfg["steps"]]]
    parts = [
        f"gatescope reference train --arch {arch} --steps {schedule[0][1]} --seed {cfg['seed']}"
    ]
    if cfg.get("corpus_version", 1) != 4:
        parts.append(f"--corpus {cfg.get('corpus_version', 1)}")
    if not cfg.get("induction_docs", True):
        parts.append("--no-induction-docs")
    if not cfg.get("induction_tail", False):
        parts.append("--no-induction-tail")
    if cfg.get("init"):
        parts.append(f"--init runs/{arch}-stage{k - 1}/model")
    if cfg.get("tokenizer"):  # the bundled tokenizer: every retraining keeps it unchanged
        parts.append("--tokenizer data/models/reference-gated")
    if cfg.get("init_embeddings"):
        parts.append("--init-embeddings runs/gated-stage2/model")
    if cfg.get("freeze_embeddings"):
        parts.append("--freeze-embeddings")
    if arch == "hybrid" and cfg.get("router_aux_coef", 0.01) != 0.01:
        parts.append(f"--router-aux-coef {cfg['router_aux_coef']}")
    if arch == "hybrid" and cfg.get("attention_layers") is not None:
        parts.append(f"--attention-layers {','.join(map(str, cfg['attention_layers']))}")
    if arch == "hybrid" and cfg.get("router_balance", "family") != "family":
        parts.append(f"--router-balance {cfg['router_balance']}")
    if cfg["lr"] != 3e-3 or cfg["warmup"] != 100:
        parts.append(f"--lr {cfg['lr']} --warmup {cfg['warmup']}")
    if cfg.get("weight_decay", BASE_WEIGHT_DECAY) != BASE_WEIGHT_DECAY:
        parts.append(f"--weight-decay {cfg['weight_decay']}")
    if cfg.get("decay_except"):
        parts.append(f"--weight-decay-except {','.join(cfg['decay_except'])}")
    if len(schedule) > 1:
        parts.append(f"--stop-after {schedule[1][0]}")
    parts.append(f"--threads 1 --out runs/{arch}-stage{k}")
    first = " \\\n    ".join(parts)
    if len(schedule) == 1:
        return first
    rest = parts[1:]
    rest = [p for p in rest if not p.startswith("--stop-after")]
    again = [
        f"gatescope reference train --arch {arch} --steps {total} --seed {cfg['seed']} --resume"
        for _, total in schedule[1:]
    ]
    return "\n".join([first] + [" \\\n    ".join([a, *rest]) for a in again])


def _schedule_note(stage: dict) -> str:
    schedule = stage.get("schedule") or []
    if len(schedule) < 2:
        return ""
    (_, first), (at, total) = schedule[0], schedule[1]
    return (
        f" (the cosine schedule of {first} steps up to step {at}, then, stopped there and "
        f"resumed with `--steps {total} --resume` to finish in time, that of {total} steps)"
    )


def _training(info: dict) -> str:
    arch = info["config"]["arch"]
    lines = []
    for k, stage in enumerate(_stages(info), 1):
        cfg = stage["config"]
        start = (
            "from the previous stage's weights and tokenizer" if cfg.get("init") else "from scratch"
        )
        extra = ""
        if cfg.get("tokenizer"):
            extra += ", the tokenizer of reference-gated"
        if cfg.get("init_embeddings"):
            extra += ", token embeddings initialised from reference-gated's second stage"
        if cfg.get("freeze_embeddings"):
            extra += ", token embeddings (and the tied unembedding) frozen"
        if arch == "hybrid":
            extra += f", load-balancing loss coefficient {cfg.get('router_aux_coef', 0.01)}"
            if cfg.get("router_balance", "family") == "layer":
                extra += " on each MoE layer's own loss"
        lines.append(
            f"{k}. {_schedule(cfg)}{_schedule_note(stage)}, {start}{extra}, on "
            f"{_corpus(cfg, stage['corpus_sha256'])}; "
            f"{stage['train_seconds'] / 60:.0f} minutes; final loss (mean of the last 50 steps) "
            f"{stage['final_loss_mean_last_50']:.3f}."
        )
    commands = "\n".join(_command(stage, k, arch) for k, stage in enumerate(_stages(info), 1))
    return "\n".join(lines), commands  # pyright: ignore[reportReturnType]


def _reproduce_note(info: dict) -> str:
    """What the paths in the commands are (only where a stage starts from another run)."""
    stages = _stages(info)
    arch = info["config"]["arch"]
    if not any(s["config"].get("init") or s["config"].get("init_embeddings") for s in stages):
        return "The tokenizer is the bundled one (trained on corpus 1 with the first models).\n\n"
    if any(s["config"].get("init_embeddings") for s in stages):
        return (
            "`runs/gated-stage2/model` is the output of the gated model's second stage (an "
            "earlier bundled `reference-gated`); `runs/plain-stage2/model` likewise for "
            "`reference-plain`.\n\n"
        )
    return (
        f"Each stage after the first continues from the previous one's output "
        f"(`runs/{arch}-stageN/model`). `data/models/reference-gated` supplies the tokenizer "
        "(byte-level BPE trained on corpus 1, unchanged since); the bundled tokenizer also "
        "marks a document start (`<|endoftext|>`, which precedes every training document) "
        "when a prompt is encoded with special tokens.\n\n"
    )


def _later_stages(info: dict) -> str:
    """Why a model has stages after the second (said from their configs), or ``""``."""
    stages = _stages(info)
    if len(stages) < 3:
        return ""
    said = []
    for k, stage in enumerate(stages[2:], 3):
        cfg, previous = stage["config"], stages[k - 2]["config"]
        what = [f"at learning rate {cfg['lr']}"]
        coef, before = cfg.get("router_aux_coef", 0.01), previous.get("router_aux_coef", 0.01)
        if cfg["arch"] == "hybrid" and coef != before:
            what.append(
                f"with the load-balancing loss coefficient "
                f"{'raised' if coef > before else 'lowered'} from {before} to {coef}, "
                "so that experts the earlier stages left (nearly) without tokens are routed to "
                "again"
            )
        if (
            cfg["arch"] == "hybrid"
            and previous.get("router_balance", "family")
            != cfg.get("router_balance", "family")
            == "layer"
        ):
            what.append(
                "balancing each MoE layer on its own (the family's loss pools the expert "
                "loads of all layers, so an expert unused in one layer and busy in another "
                "costs nothing)"
            )
        decay = cfg.get("weight_decay", BASE_WEIGHT_DECAY)
        decay_before = previous.get("weight_decay", BASE_WEIGHT_DECAY)
        if decay != decay_before:
            what.append(
                f"with the weight decay {'raised' if decay > decay_before else 'lowered'} from "
                f"{decay_before} to {decay}"
                + (
                    f" (except {', '.join(cfg['decay_except'])}, kept at 0.1: in the gated "
                    "model the query projection also computes the output gate, which a strong "
                    "decay drives towards 0.5 everywhere)"
                    if cfg.get("decay_except")
                    else ""
                )
                + (
                    ", so that copying does not stay fitted to the tokens induction documents "
                    "use and carries over to tokens it was never trained on"
                    if decay > decay_before
                    else ""
                )
            )
        said.append(f"Stage {k} continues stage {k - 1} on the same corpus {', '.join(what)}.")
    return " ".join(said) + "\n"


def readme(name: str, info: dict, ev: ReferenceEval, size_bytes: int) -> str:
    """The model card: architecture, sizes, data, training, held-out figures, reproduction."""
    cfg = info["config"]
    arch = cfg["arch"]
    table = "\n".join(f"| {k} | {v} |" for k, v in _figures(ev))
    stages, commands = _training(info)
    n_train, n_no_and = len(IOI_TRAIN), sum(not joined_by_and(t) for t in IOI_TEST)
    mlp = (
        f"{cfg['n_experts']} experts of {cfg['d_expert']}, top-{cfg['top_k']}, shared expert of "
        f"{cfg['d_shared']}; auxiliary loss coefficient {cfg['router_aux_coef']}"
        if arch == "hybrid"
        else str(cfg["d_mlp"])
    )
    deltanet = (
        f"| DeltaNet heads x d_head | {cfg['linear_heads']} x {cfg['linear_d_head']} "
        "(key and value), short convolution 4 |\n"
        if arch == "hybrid"
        else ""
    )
    return f"""# {name}

`transformers.{ARCH_CLASS[arch]}`, {DESCRIPTION[arch]}

| size | |
|---|---|
| layers | {cfg["n_layers"]} ({", ".join(t.replace("_attention", "") for t in ev.layer_types)}) |
| d_model | {cfg["d_model"]} |
| heads x d_head | {cfg["n_heads"]} x {cfg["d_head"]} ({cfg["n_kv_heads"]} key/value heads) |
{deltanet}| MLP | {mlp} |
| vocabulary | {cfg["vocab"]} (byte-level BPE trained on corpus 1; every name is one token) |
| context | {cfg["seq"]} tokens |
| parameters | {info["parameters"]:,} |
| weights file | {size_bytes / 1e6:.1f} MB (safetensors, float32) |

**Data**: the reference corpus of `probe/reference/corpus.py`, seed {cfg["seed"]}
({info["documents"]:,} documents in the last stage): IOI from {n_train} templates of varied
syntax (the names joined by "and", in separate clauses, in relative clauses), induction over
random sequences of the words of all other training text, word lists (distinct random words,
held-out ones included, never repeated), facts in five phrasings, sentiment and topic
sentences, Python's `pydoc_data` prose. Held out: {len(IOI_TEST)} IOI templates ({n_no_and}
without "and" between the names), one phrasing per fact, a fixed set of words (by hash) that
never occur in an induction document but do occur in other training text, and a slice of the
prose.

**Why more than one stage.** Trained in one stage, a model copies the words of its induction
documents and not the held-out ones: their token embeddings and the copying circuit adapt to
each other, and the held-out words, never seen repeated, end up read as "not copied". The
first stage therefore learns the language and every token's embedding without any induction
document (word lists keep random word sequences in the data); the second freezes the token
embeddings and adds the induction documents, so the copying circuit has to work on
embeddings shaped without it. Long word lists (36-60 words, corpus 4) in the second stage
stop the models from reading a repeated sequence of held-out words as the end of a document.
{_later_stages(info)}
**Training**, seed {cfg["seed"]}, on 2 CPU cores shared with other work (one thread per run,
the three models trained alongside):

{stages}

## Held-out figures (`gatescope reference eval {name.replace("-gated", "")} --json`)

| figure | value |
|---|---|
{table}{_class_table(ev)}

## Reproduce

{_reproduce_note(info)}```bash
{commands}
gatescope reference bundle runs/{arch}-stage{len(_stages(info))} --name {name}
```
"""


def bundle(run_dir: str | Path, name: str, evaluation: ReferenceEval) -> Path:
    """Copy ``run_dir/model`` to ``data/models/NAME`` and write its README."""
    src = Path(run_dir) / "model"
    if not (src / "model.safetensors").is_file():
        raise GatescopeError(f"{src} has no trained model; run `gatescope reference train` first")
    info = json.loads((src / "training.json").read_text())
    dest = DATA / "models" / name
    tmp = dest.with_name(f".{name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    size = (tmp / "model.safetensors").stat().st_size
    (tmp / "README.md").write_text(readme(name, info, evaluation, size))
    (tmp / "evaluation.json").write_text(evaluation.to_json())
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest
