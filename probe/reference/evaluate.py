"""Evaluation figures of a reference model on held-out prompts.

1. IOI: accuracy (answer logit above the wrong name's) and mean logit difference, over all
   held-out templates and over those with no "and" between the names.
2. Induction: top-1 accuracy on the predictable tokens of the repeated half, over held-out
   words that no induction training document contains.
3. Facts: top-1 accuracy over the whole vocabulary in the held-out phrasing.
4. Prose: perplexity on held-out ``pydoc_data`` paragraphs (128-token windows).
5. The "Gated Attention" paper's effects (Qiu et al. 2025) per layer: mean gate and the
   fraction of gate values below 0.1 (``probe.gates``), attention on the first token and the
   largest residual activation, with a verdict computed against the ungated twin.
6. On a hybrid model (Gated-DeltaNet and MoE layers), read with plain forward hooks on the
   model's own router, shared-expert gate and DeltaNet modules: expert load per layer (an
   expert with under 1% of the routed assignments is dead), router entropy, a layer x
   expert x token-class table, the retention half-life of each DeltaNet head (from the
   decay ``g = -exp(A_log) * softplus(a + dt_bias)`` the layer computes), its mean write
   strength ``sigmoid(b)`` and output gate ``silu(z)``, and the mean shared-expert gate.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from probe.gates import gate_stats
from probe.load import load_model
from probe.model import Model
from probe.reference import DATA
from probe.reference import vocab as V
from probe.reference.corpus import induction_vocabulary, prose_paragraphs
from probe.tasks import last_token_logits, load_task, logit_diff

#: an expert with a smaller share of the routed (token, slot) assignments is dead
DEAD_SHARE = 0.01
TOKEN_CLASSES = ("names", "function words", "punctuation", "digits", "rest")
FUNCTION_WORDS = frozenset(
    "the a an and or but nor to of in on at for with from by as is are was were be been "
    "being it its that this these those which who whom whose what when where while then "
    "than so if not no he she they we you i his her their our your my me him them us there "
    "here have has had do does did will would can could should may might must shall about "
    "into over after before up down out off all any each some such only also just very".split()
)


@dataclass
class ReferenceEval:
    """Held-out figures of one model (see the module docstring); per-layer lists hold
    ``None`` where a layer has no such site (a DeltaNet layer has no attention pattern)."""

    model: str
    ioi_accuracy: float
    ioi_logit_diff: float
    ioi_accuracy_no_and: float
    ioi_logit_diff_no_and: float
    induction_accuracy: float
    facts_accuracy: float
    prose_perplexity: float
    layer_types: list[str]
    mean_gate_per_layer: list[float | None] | None
    gate_below_0_1_per_layer: list[float | None] | None
    sink_per_layer: list[float | None]
    max_activation_per_layer: list[float]
    n_ioi: int
    n_ioi_no_and: int
    n_induction: int
    n_facts: int
    paper_effects: dict | None = None
    hybrid: dict | None = None
    # a diagnostic, not a held-out figure: the same measure on words that induction training
    # documents do use, and the mean logit gain of the copied token on its second occurrence
    induction_accuracy_seen_words: float | None = None
    induction_logit_gain: dict | None = None
    # the held-out figure with the prompts' document-start token left out
    induction_accuracy_no_document_start: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def _batched_logits(model: Model, ids: torch.Tensor, mask: torch.Tensor, size: int = 64):
    return torch.cat(
        [model.forward(ids[i : i + size], mask[i : i + size]) for i in range(0, len(ids), size)]
    )


def _ioi_no_and_flags() -> list[bool]:
    rows = (DATA / "tasks" / "ioi.jsonl").read_text(encoding="utf-8").splitlines()
    return [not json.loads(r).get("joined_by_and", True) for r in rows if r.strip()]


@torch.no_grad()
def ioi_figures(model: Model, limit: int | None = None) -> dict:
    """Accuracy and mean logit difference, all rows and rows without "and"."""
    task = load_task("ioi")
    task = task.subset(limit) if limit else task
    batch = task.tokenize(model.tokenizer)
    ld = logit_diff(_batched_logits(model, batch.clean_ids, batch.attention_mask), batch).cpu()
    no_and = torch.tensor(_ioi_no_and_flags()[: len(task)])
    sub = ld[no_and]
    return {
        "ioi_accuracy": float((ld > 0).float().mean()),
        "ioi_logit_diff": float(ld.mean()),
        "n_ioi": len(task),
        "ioi_accuracy_no_and": float((sub > 0).float().mean()) if len(sub) else float("nan"),
        "ioi_logit_diff_no_and": float(sub.mean()) if len(sub) else float("nan"),
        "n_ioi_no_and": int(no_and.sum()),
    }


def _copy_hits(model: Model, texts: list[str], document_start: bool = True) -> tuple[int, int]:
    """(tokens predicted, tokens) over the second half of each text (a word sequence said
    twice, one token per word), from its second token on: the first token of the repeat
    cannot be known before it is read. ``document_start=False`` leaves out the token the
    tokenizer puts before a prompt (the end-of-text token that starts every training
    document)."""
    batch = model.tokenize(texts, special_tokens=document_start)
    ids, mask, lengths = batch.input_ids, batch.attention_mask, batch.lengths
    logits = _batched_logits(model, ids, mask)
    hits = total = 0
    for row, (text, n) in enumerate(zip(texts, lengths.tolist(), strict=True)):
        start = n - len(text.split()) // 2  # the repeat: the last half of the tokens
        pred = logits[row, start : n - 1].argmax(-1).cpu()  # predicts tokens start+1 .. n-1
        target = ids[row, start + 1 : n]
        hits += int((pred == target).sum())
        total += target.numel()
    return hits, total


@torch.no_grad()
def induction_accuracy(
    model: Model, limit: int | None = None, document_start: bool = True
) -> tuple[float, int]:
    """Accuracy on the repeated half of the held-out induction sequences (words never in an
    induction document); see :func:`_copy_hits` for ``document_start``."""
    task = load_task("induction")
    task = task.subset(limit) if limit else task
    texts = [c + a for c, a in zip(task.clean, task.answers, strict=True)]
    hits, total = _copy_hits(model, texts, document_start)
    return hits / total, len(task)


def _seen_word_rows(model: Model, n: int) -> list[list[str]]:
    """``n`` sequences (8-14 words) of one-token words that induction documents use."""
    pool, _ = induction_vocabulary()
    tok = model.tokenizer
    single = [w for w in pool if len(tok(" " + w, add_special_tokens=False)["input_ids"]) == 1]
    rng = random.Random(7922)
    return [rng.sample(single, rng.randint(8, 14)) for _ in range(n)]


@torch.no_grad()
def induction_diagnostic(model: Model, n: int = 100) -> tuple[float, dict]:
    """(accuracy on repeated sequences of words induction documents use, the mean logit gain
    of each copied token at its second occurrence over its first, for those words and for the
    held-out ones): whether copying exists at all and whether it transfers to new tokens."""
    task = load_task("induction").subset(n)
    held = [c.split()[: len(c.split()) // 2 + 1] for c in task.clean]
    gains, acc = {}, 0.0
    for name, rows in (("seen", _seen_word_rows(model, n)), ("held_out", held)):
        batch = model.tokenize([" ".join(w + w) for w in rows])
        logits = _batched_logits(model, batch.input_ids, batch.attention_mask)
        hits = total = 0
        gain = []
        for row, words in enumerate(rows):
            n_tok = int(batch.lengths[row])
            half = n_tok - len(words)  # the second copy starts here (one token per word)
            ids = batch.input_ids[row]
            for p in range(half, n_tok - 1):
                target = ids[p + 1]
                gain.append(float(logits[row, p, target] - logits[row, p - len(words), target]))
                hits += int(logits[row, p].argmax() == target)
                total += 1
        gains[name] = sum(gain) / len(gain)
        if name == "seen":
            acc = hits / total
    return acc, gains


@torch.no_grad()
def facts_accuracy(model: Model) -> tuple[float, int]:
    task = load_task("facts")
    batch = task.tokenize(model.tokenizer)
    logits = _batched_logits(model, batch.clean_ids, batch.attention_mask)
    top = last_token_logits(logits, batch.lengths).argmax(-1).cpu()
    return float((top == batch.answer_ids).float().mean()), len(task)


def _prose_rows(model: Model, window: int = 128) -> torch.Tensor:
    _, held = prose_paragraphs()
    eos = model.tokenizer.eos_token_id
    # joined by end-of-text as in training (no document-start token of the tokenizer's own)
    enc = lambda p: model.tokenizer(p, add_special_tokens=False)["input_ids"]  # noqa: E731
    ids = [t for p in held for t in (*enc(p), eos)]
    return torch.tensor(ids[: len(ids) // window * window]).view(-1, window)  # (N, window)


@torch.no_grad()
def prose_perplexity(model: Model, window: int = 128) -> float:
    rows = _prose_rows(model, window)
    nll, count = 0.0, 0
    for i in range(0, len(rows), 32):
        chunk = rows[i : i + 32]
        logits = model.forward(chunk, torch.ones_like(chunk))
        loss = F.cross_entropy(
            logits[:, :-1].flatten(0, 1), chunk[:, 1:].flatten().to(logits.device), reduction="sum"
        )
        nll += float(loss)
        count += chunk[:, 1:].numel()
    return math.exp(nll / count)


def layer_types(model: Model) -> list[str]:
    types = getattr(model.hf.config, "layer_types", None)
    return list(types) if types else ["full_attention"] * model.dims.n_layers


def _only_attention(values: list[float] | None, types: list[str]) -> list[float | None] | None:
    if values is None:
        return None
    return [v if t == "full_attention" else None for v, t in zip(values, types, strict=True)]


def attention_effects(model: Model, prompts: list[str]) -> dict:
    """Per layer: mean gate, fraction of gate values below 0.1, first-token attention and
    largest residual activation (``probe.gates.gate_stats``)."""
    types = layer_types(model)
    gates = gate_stats(model, prompts, batch_size=32, progress=False)
    return {
        "layer_types": types,
        "mean_gate_per_layer": _only_attention(gates.layer_mean("mean_gate"), types),
        "gate_below_0_1_per_layer": _only_attention(gates.layer_mean("gate_below", "0.1"), types),
        "sink_per_layer": _only_attention(gates.layer_mean("sink"), types),
        "max_activation_per_layer": gates.max_activation,
    }


def paper_verdict(gated: dict, plain: dict) -> dict:
    """Compare a gated model's attention effects with an ungated model's, layer by layer
    (layers where both have full attention for the sink), and say which way each goes."""
    pairs = [
        (g, p)
        for g, p in zip(gated["sink_per_layer"], plain["sink_per_layer"], strict=False)
        if g is not None and p is not None
    ]
    acts = list(
        zip(gated["max_activation_per_layer"], plain["max_activation_per_layer"], strict=False)
    )
    lower_sink = sum(g < p for g, p in pairs)
    lower_act = sum(g < p for g, p in acts)
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    g_sink, p_sink = mean([g for g, _ in pairs]), mean([p for _, p in pairs])
    g_act, p_act = max(g for g, _ in acts), max(p for _, p in acts)
    gate = [v for v in gated["mean_gate_per_layer"] or [] if v is not None]
    sparse = [v for v in gated["gate_below_0_1_per_layer"] or [] if v is not None]
    sink_ok, act_ok = lower_sink > len(pairs) / 2, lower_act > len(acts) / 2
    if sink_ok and act_ok:
        word = "agrees with the paper: a lower sink and smaller activations with the gate"
    elif sink_ok:
        word = "agrees in part: a lower sink with the gate, but not smaller activations"
    elif act_ok:
        word = "agrees in part: smaller activations with the gate, but not a lower sink"
    else:
        word = "does not agree with the paper: neither a lower sink nor smaller activations"
    verdict = (
        f"gated vs plain: first-token attention lower at {lower_sink}/{len(pairs)} layers "
        f"(mean {g_sink:.3f} vs {p_sink:.3f}), largest residual activation lower at "
        f"{lower_act}/{len(acts)} layers (max {g_act:.1f} vs {p_act:.1f}); mean gate "
        f"{mean(gate):.3f}, {mean(sparse):.0%} of gate values below 0.1: {word}"
    )
    return {
        "sink_lower_layers": lower_sink,
        "sink_layers": len(pairs),
        "activation_lower_layers": lower_act,
        "activation_layers": len(acts),
        "gated_mean_sink": g_sink,
        "plain_mean_sink": p_sink,
        "gated_max_activation": g_act,
        "plain_max_activation": p_act,
        "gated_mean_gate": mean(gate),
        "gated_gate_below_0_1": mean(sparse),
        "verdict": verdict,
    }


def token_class(piece: str) -> str:
    """names, function words, punctuation, digits or rest, for one decoded token."""
    word = piece.strip()
    if word in _NAMES:
        return "names"
    if word.isdigit():
        return "digits"
    if word.lower() in FUNCTION_WORDS:
        return "function words"
    if word and not any(c.isalnum() for c in word):
        return "punctuation"
    return "rest"


_NAMES = frozenset(V.NAMES)


def _moe_blocks(model: Model) -> list[tuple[int, torch.nn.Module]]:
    return [
        (i, layer.mlp)
        for i, layer in enumerate(model.hf.model.layers)  # pyright: ignore[reportArgumentType, reportAttributeAccessIssue]
        if hasattr(layer.mlp, "gate") and hasattr(layer.mlp, "shared_expert_gate")
    ]


def _deltanets(model: Model) -> list[tuple[int, torch.nn.Module]]:
    return [
        (i, layer.linear_attn)
        for i, layer in enumerate(model.hf.model.layers)  # pyright: ignore[reportArgumentType, reportAttributeAccessIssue]
        if hasattr(layer, "linear_attn")
    ]


class _HybridReader:
    """Forward hooks on the routers, shared-expert gates and DeltaNet projections; sums
    over the real tokens of each pass (``mask`` set before it)."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self.moe = _moe_blocks(model)
        self.nets = _deltanets(model)
        n_exp = self.moe[0][1].gate.num_experts if self.moe else 0  # pyright: ignore[reportAttributeAccessIssue]
        self.n_experts = n_exp
        vocab = len(model.tokenizer)
        classes = [token_class(model.tokenizer.decode([i])) for i in range(vocab)]
        self.class_of = torch.tensor([TOKEN_CLASSES.index(c) for c in classes])
        self.load = {i: torch.zeros(n_exp, len(TOKEN_CLASSES)) for i, _ in self.moe}  # pyright: ignore[reportArgumentType]
        self.class_tokens = torch.zeros(len(TOKEN_CLASSES))
        self.entropy = {i: 0.0 for i, _ in self.moe}
        self.shared = {i: 0.0 for i, _ in self.moe}
        self.decay = {i: 0.0 for i, _ in self.nets}
        self.beta = {i: 0.0 for i, _ in self.nets}
        self.zgate = {i: 0.0 for i, _ in self.nets}
        self.proj: dict[int, dict] = {i: {} for i, _ in self.nets}
        self.tokens = 0
        self.mask = self.ids = None

    def _real(self, flat: torch.Tensor) -> torch.Tensor:
        return flat[self.mask.reshape(-1).bool().to(flat.device)]  # pyright: ignore[reportOptionalMemberAccess]

    def router_hook(self, layer):
        def hook(module, args, output):
            logits, _, index = output  # (B*T, E), _, (B*T, k)
            logits, index = self._real(logits.float()), self._real(index)
            probs = logits.softmax(-1)
            self.entropy[layer] += float(-(probs * probs.clamp_min(1e-12).log()).sum())
            cls = self._real(self.class_of[self.ids.reshape(-1)])  # pyright: ignore[reportOptionalMemberAccess]
            for slot in range(index.shape[1]):
                flat = index[:, slot].cpu() * len(TOKEN_CLASSES) + cls
                counts = torch.bincount(flat, minlength=self.n_experts * len(TOKEN_CLASSES))  # pyright: ignore[reportArgumentType, reportOperatorIssue]
                self.load[layer] += counts.view(self.n_experts, -1).float()  # pyright: ignore[reportArgumentType]

        return hook

    def shared_hook(self, layer):
        def hook(module, args, output):
            self.shared[layer] += float(self._real(output.float().reshape(-1)).sigmoid().sum())

        return hook

    def proj_hook(self, layer, key):
        def hook(module, args, output):
            self.proj[layer][key] = output

        return hook

    def net_hook(self, layer):
        def hook(module, args, output):
            qkvz, ba = self.proj[layer]["qkvz"], self.proj[layer]["ba"]
            *_, z, b, a = module.fix_query_key_value_ordering(qkvz, ba)  # (B, T, H), z (B,T,H,d)
            g = -module.A_log.float().exp() * F.softplus(a.float() + module.dt_bias)
            keep = self.mask.bool().to(g.device)  # pyright: ignore[reportOptionalMemberAccess]
            self.decay[layer] = self.decay[layer] + g[keep].sum(0).double().cpu()
            self.beta[layer] = self.beta[layer] + b.float().sigmoid()[keep].sum(0).double().cpu()
            zg = F.silu(z.float()).mean(-1)
            self.zgate[layer] = self.zgate[layer] + zg[keep].sum(0).double().cpu()  # pyright: ignore[reportArgumentType]

        return hook

    def hooks(self) -> list:
        handles = []
        for i, block in self.moe:
            handles.append(block.gate.register_forward_hook(self.router_hook(i)))  # pyright: ignore[reportAttributeAccessIssue]
            handles.append(block.shared_expert_gate.register_forward_hook(self.shared_hook(i)))  # pyright: ignore[reportAttributeAccessIssue]
        for i, net in self.nets:
            handles.append(net.in_proj_qkvz.register_forward_hook(self.proj_hook(i, "qkvz")))  # pyright: ignore[reportAttributeAccessIssue]
            handles.append(net.in_proj_ba.register_forward_hook(self.proj_hook(i, "ba")))  # pyright: ignore[reportAttributeAccessIssue]
            handles.append(net.register_forward_hook(self.net_hook(i)))
        return handles

    @torch.no_grad()
    def run(self, ids: torch.Tensor, mask: torch.Tensor) -> None:
        self.ids, self.mask = ids.cpu(), mask.cpu()
        self.tokens += int(mask.sum())
        self.class_tokens += torch.bincount(
            self.class_of[ids.cpu()][mask.cpu().bool()], minlength=len(TOKEN_CLASSES)
        ).float()
        self.model.forward(ids, mask)

    def report(self) -> dict:
        n = max(1, self.tokens)
        experts = {}
        class_share = self.class_tokens / self.class_tokens.sum().clamp_min(1)
        for i, _ in self.moe:
            table = self.load[i]  # (E, classes) assignments
            share = table.sum(1) / table.sum().clamp_min(1)
            by_class = table / table.sum(1, keepdim=True).clamp_min(1)
            lift = by_class / class_share.clamp_min(1e-12)
            experts[str(i)] = {
                "load": share.tolist(),
                "dead": [e for e, s in enumerate(share.tolist()) if s < DEAD_SHARE],
                "router_entropy": self.entropy[i] / n,
                "class_share": {
                    str(e): dict(zip(TOKEN_CLASSES, by_class[e].tolist(), strict=True))
                    for e in range(self.n_experts)  # pyright: ignore[reportArgumentType]
                },
                "preferred_class": [TOKEN_CLASSES[int(lift[e].argmax())] for e in range(len(lift))],
                "mean_shared_gate": self.shared[i] / n,
            }
        deltanet = {}
        for i, _ in self.nets:
            mean_g = (self.decay[i] / n).tolist()  # pyright: ignore[reportAttributeAccessIssue]
            deltanet[str(i)] = {
                "mean_log_decay": mean_g,
                "half_life_tokens": [math.log(2) / -g if g < 0 else math.inf for g in mean_g],
                "mean_write_strength": (self.beta[i] / n).tolist(),  # pyright: ignore[reportAttributeAccessIssue]
                "mean_output_gate": (self.zgate[i] / n).tolist(),  # pyright: ignore[reportAttributeAccessIssue]
            }
        dead = sum(len(e["dead"]) for e in experts.values())
        return {
            "tokens": self.tokens,
            "token_class_share": dict(zip(TOKEN_CLASSES, class_share.tolist(), strict=True)),
            "router_entropy_max": math.log(self.n_experts) if self.n_experts else None,  # pyright: ignore[reportArgumentType]
            "experts": experts,
            "dead_experts": dead,
            "deltanet": deltanet,
            "mean_shared_gate": (
                sum(e["mean_shared_gate"] for e in experts.values()) / len(experts)
                if experts
                else None
            ),
        }


def hybrid_figures(model: Model, prompts: list[str], prose_rows: int = 16) -> dict | None:
    """The router, shared-gate and DeltaNet figures (``None`` on a model without them)."""
    if not (_moe_blocks(model) or _deltanets(model)):
        return None
    reader = _HybridReader(model)
    handles = reader.hooks()
    try:
        for start in range(0, len(prompts), 32):
            batch = model.tokenize(prompts[start : start + 32])
            reader.run(batch.input_ids, batch.attention_mask)
        rows = _prose_rows(model)[:prose_rows]
        for start in range(0, len(rows), 8):
            chunk = rows[start : start + 8]
            reader.run(chunk, torch.ones_like(chunk))
    finally:
        for h in handles:
            h.remove()
    return reader.report()


def _twin_name(model: Model) -> str | None:
    if model.name in ("reference-plain",) or not model.is_gated:
        return "reference"
    return "reference-plain"


def evaluate_reference(
    model, tokenizer=None, limit: int | None = None, twin: Model | str | None = "auto"
) -> ReferenceEval:
    """Every figure above; ``limit`` caps the IOI and induction prompts (a fast subset).

    ``model`` is a gatescope ``Model`` or a Hugging Face causal LM (then pass its
    ``tokenizer``; it is wrapped with ``probe.load_model``). ``twin`` is the model the
    paper's effects are compared with (``"auto"``: the bundled ungated model for a gated
    one and the bundled gated model for an ungated one; ``None``: no comparison).
    """
    if not isinstance(model, Model):
        model = load_model(model, tokenizer=tokenizer)
    ioi = ioi_figures(model, limit)
    ind_acc, n_ind = induction_accuracy(model, limit)
    ind_bare, _ = induction_accuracy(model, limit, document_start=False)
    facts_acc, n_facts = facts_accuracy(model)
    ppl = prose_perplexity(model)
    prompts = load_task("ioi").clean[: limit or 200]
    effects = attention_effects(model, prompts)
    if isinstance(twin, str):
        twin = load_model(_twin_name(model) if twin == "auto" else twin)  # pyright: ignore[reportArgumentType]
    paper = None
    if twin is not None:
        other = attention_effects(twin, prompts)
        gated, plain = (effects, other) if model.is_gated else (other, effects)
        paper = {"twin": twin.name, **paper_verdict(gated, plain)}
    mixed = prompts + load_texts_or_induction(limit)
    seen_acc, gains = induction_diagnostic(model, min(limit or 100, 100))
    return ReferenceEval(
        induction_accuracy_seen_words=seen_acc,
        induction_logit_gain=gains,
        induction_accuracy_no_document_start=ind_bare,
        model=model.name,
        induction_accuracy=ind_acc,
        facts_accuracy=facts_acc,
        prose_perplexity=ppl,
        n_induction=n_ind,
        n_facts=n_facts,
        paper_effects=paper,
        hybrid=hybrid_figures(model, mixed),
        **ioi,
        **effects,
    )


def load_texts_or_induction(limit: int | None) -> list[str]:
    """Induction prompts and fact prompts for the hybrid figures (besides IOI and prose)."""
    return load_task("induction").clean[: limit or 100] + load_task("facts").clean
