"""Evaluation figures of a reference model on held-out prompts.

1. IOI: accuracy (answer logit above the wrong name's) and mean logit difference.
2. Induction: top-1 accuracy on the predictable tokens of the repeated half.
3. Facts: top-1 accuracy over the whole vocabulary in the held-out phrasing.
4. Prose: perplexity on held-out ``pydoc_data`` paragraphs (128-token windows).
5. Gates: mean gate and first-token attention ("sink") per layer (``probe.gates``).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import torch

from probe.gates import gate_stats
from probe.load import load_model
from probe.model import Model
from probe.reference.corpus import prose_paragraphs
from probe.tasks import last_token_logits, load_task, logit_diff


@dataclass
class ReferenceEval:
    """Held-out figures of one model (see the module docstring)."""

    model: str
    ioi_accuracy: float
    ioi_logit_diff: float
    induction_accuracy: float
    facts_accuracy: float
    prose_perplexity: float
    mean_gate_per_layer: list[float] | None
    sink_per_layer: list[float]
    max_activation_per_layer: list[float]
    n_ioi: int
    n_induction: int
    n_facts: int

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def _batched_logits(model: Model, ids: torch.Tensor, mask: torch.Tensor, size: int = 64):
    return torch.cat(
        [model.forward(ids[i : i + size], mask[i : i + size]) for i in range(0, len(ids), size)]
    )


@torch.no_grad()
def ioi_figures(model: Model, limit: int | None = None) -> tuple[float, float, int]:
    task = load_task("ioi")
    task = task.subset(limit) if limit else task
    batch = task.tokenize(model.tokenizer)
    ld = logit_diff(_batched_logits(model, batch.clean_ids, batch.attention_mask), batch)
    return float((ld > 0).float().mean()), float(ld.mean()), len(task)


@torch.no_grad()
def induction_accuracy(model: Model, limit: int | None = None) -> tuple[float, int]:
    task = load_task("induction")
    task = task.subset(limit) if limit else task
    texts = [c + a for c, a in zip(task.clean, task.answers, strict=True)]
    batch = model.tokenize(texts)
    logits = _batched_logits(model, batch.input_ids, batch.attention_mask)
    hits, total = 0, 0
    for row, n in enumerate(batch.lengths.tolist()):
        half = n // 2
        pred = logits[row, half : n - 1].argmax(-1)  # predicts tokens half+1 .. n-1
        target = batch.input_ids[row, half + 1 : n]
        hits += int((pred == target).sum())
        total += target.numel()
    return hits / total, len(task)


@torch.no_grad()
def facts_accuracy(model: Model) -> tuple[float, int]:
    task = load_task("facts")
    batch = task.tokenize(model.tokenizer)
    logits = _batched_logits(model, batch.clean_ids, batch.attention_mask)
    top = last_token_logits(logits, batch.lengths).argmax(-1)
    return float((top == batch.answer_ids).float().mean()), len(task)


@torch.no_grad()
def prose_perplexity(model: Model, window: int = 128) -> float:
    _, held = prose_paragraphs()
    eos = model.tokenizer.eos_token_id
    ids = [t for p in held for t in (*model.tokenizer(p)["input_ids"], eos)]
    rows = torch.tensor(ids[: len(ids) // window * window]).view(-1, window)  # (N, window)
    nll, count = 0.0, 0
    for i in range(0, len(rows), 32):
        chunk = rows[i : i + 32]
        logits = model.forward(chunk, torch.ones_like(chunk))
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1), chunk[:, 1:].flatten().to(logits.device), reduction="sum"
        )
        nll += float(loss)
        count += chunk[:, 1:].numel()
    return math.exp(nll / count)


def evaluate_reference(model, tokenizer=None, limit: int | None = None) -> ReferenceEval:
    """Every figure above; ``limit`` caps the IOI and induction prompts (a fast subset).

    ``model`` is a gatescope ``Model`` or a Hugging Face causal LM (then pass its
    ``tokenizer``; it is wrapped with ``probe.load_model``).
    """
    if not isinstance(model, Model):
        model = load_model(model, tokenizer=tokenizer)
    ioi_acc, ioi_ld, n_ioi = ioi_figures(model, limit)
    ind_acc, n_ind = induction_accuracy(model, limit)
    facts_acc, n_facts = facts_accuracy(model)
    ppl = prose_perplexity(model)
    task = load_task("ioi")
    prompts = task.clean[: limit or 200]
    gates = gate_stats(model, prompts, batch_size=32, progress=False)
    return ReferenceEval(
        model=model.name,
        ioi_accuracy=ioi_acc,
        ioi_logit_diff=ioi_ld,
        induction_accuracy=ind_acc,
        facts_accuracy=facts_acc,
        prose_perplexity=ppl,
        mean_gate_per_layer=gates.layer_mean("mean_gate"),
        sink_per_layer=gates.layer_mean("sink"),
        max_activation_per_layer=gates.max_activation,
        n_ioi=n_ioi,
        n_induction=n_ind,
        n_facts=n_facts,
    )
