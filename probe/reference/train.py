"""Train a reference model: the gated one (Qwen3-Next, every layer full attention, dense
SwiGLU MLPs, elementwise output gate), its ungated twin (Qwen3), same data, seed, steps, or
the hybrid (Qwen3-Next: three Gated-DeltaNet layers then one gated full-attention layer,
MoE MLPs of 8 experts, top-2, plus a shared expert behind its sigmoid gate, trained with the
family's load-balancing auxiliary loss).

1. Build the corpus (``probe.reference.corpus``) and train the BPE tokenizer on it (or
   take the tokenizer of ``tokenizer``); or, with ``init``, continue from a trained model
   with its tokenizer (a later stage).
2. Tokenize every document, join them with end-of-text tokens, cut 128-token windows.
3. AdamW with linear warm-up and cosine decay; each step draws its windows from a generator
   seeded by (seed, step), so a resumed run sees exactly the batches it would have seen.
4. Every ``checkpoint_every`` steps, and after ``checkpoint_seconds`` of wall time since the
   last checkpoint, save model + optimiser state (safetensors) and the step (JSON),
   atomically; ``resume=True`` continues from there (:func:`checkpoint_step` says where).
5. Save the final model and tokenizer with ``save_pretrained`` (safetensors).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from probe.errors import GatescopeError
from probe.reference.corpus import build_corpus, iter_task_words
from probe.reference.tokenizer import check_single_tokens, mark_document_start, train_tokenizer

log = logging.getLogger(__name__)


BASE_WEIGHT_DECAY = 0.1


@dataclass
class TrainConfig:
    """Sizes and optimisation of a reference model (the twins differ only in ``arch``)."""

    arch: str = "gated"  # "gated", "hybrid" (Qwen3NextForCausalLM) or "plain" (Qwen3)
    seed: int = 0
    steps: int = 3000
    batch: int = 32  # windows per step
    seq: int = 128  # tokens per window (also the context length)
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 2
    d_head: int = 32
    d_mlp: int = 384
    vocab: int = 4096
    lr: float = 3e-3
    warmup: int = 100
    weight_decay: float = BASE_WEIGHT_DECAY
    #: weight matrices named so (a module name such as ``q_proj``) keep the weight decay of
    #: the first stages (0.1) when ``weight_decay`` is set otherwise
    decay_except: tuple[str, ...] = ()
    checkpoint_every: int = 250
    checkpoint_seconds: float = 300.0  # also a checkpoint after this much wall time (0: off)
    induction_tail: bool = True  # False: the first corpus (``build_corpus``'s docstring)
    init: str | None = None  # continue from this trained model directory (same arch)
    corpus_scale: float = 1.0  # shrink the corpus (tests only)
    corpus_version: int = 4  # 3: short word lists; 2: none; 1: the earliest twins' first stages
    induction_docs: bool = True  # False: leave the induction documents out (a first stage)
    freeze_embeddings: bool = False  # keep the (tied) token embeddings as they are
    tokenizer: str | None = None  # a model directory whose tokenizer a fresh run uses
    init_embeddings: str | None = None  # a fresh run starts from this model's embeddings
    stop_after: int | None = None  # checkpoint after this many steps and stop (resume later)
    # hybrid only: Gated-DeltaNet heads and MoE sizes
    linear_heads: int = 4
    linear_d_head: int = 32
    n_experts: int = 8
    top_k: int = 2
    d_expert: int = 128
    d_shared: int = 128
    router_aux_coef: float = 0.01
    #: hybrid: the full-attention layers (the rest are Gated-DeltaNet); None: the last one
    attention_layers: tuple[int, ...] | None = None
    #: "family": the model's own load-balancing loss, whose expert loads are pooled over all
    #: layers (an expert unused in one layer and busy in another costs nothing); "layer": the
    #: same loss of each MoE layer alone, averaged over the layers
    router_balance: str = "family"


ARCHES = ("gated", "plain", "hybrid")


def model_config(cfg: TrainConfig, vocab_size: int):
    """The transformers config of ``cfg.arch`` with the shared sizes."""
    import transformers as tf

    common = dict(
        vocab_size=vocab_size,
        hidden_size=cfg.d_model,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads,
        head_dim=cfg.d_head,
        intermediate_size=cfg.d_mlp,
        max_position_embeddings=cfg.seq,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        hidden_act="silu",
    )
    if cfg.arch == "gated":
        return tf.Qwen3NextConfig(
            **common,
            layer_types=["full_attention"] * cfg.n_layers,
            num_experts=0,
            mlp_only_layers=list(range(cfg.n_layers)),
            partial_rotary_factor=1.0,  # pyright: ignore[reportCallIssue]
        )
    if cfg.arch == "plain":
        return tf.Qwen3Config(**common)  # pyright: ignore[reportArgumentType]
    if cfg.arch == "hybrid":
        return tf.Qwen3NextConfig(
            **common,
            layer_types=hybrid_layer_types(cfg),
            linear_num_key_heads=cfg.linear_heads,
            linear_num_value_heads=cfg.linear_heads,
            linear_key_head_dim=cfg.linear_d_head,
            linear_value_head_dim=cfg.linear_d_head,
            linear_conv_kernel_dim=4,
            num_experts=cfg.n_experts,
            num_experts_per_tok=cfg.top_k,
            moe_intermediate_size=cfg.d_expert,
            shared_expert_intermediate_size=cfg.d_shared,
            decoder_sparse_step=1,
            mlp_only_layers=[],
            norm_topk_prob=True,
            output_router_logits=True,
            router_aux_loss_coef=cfg.router_aux_coef,
            partial_rotary_factor=1.0,  # pyright: ignore[reportCallIssue]
        )
    raise GatescopeError(f"--arch {cfg.arch}: expected one of {', '.join(ARCHES)}")


def hybrid_layer_types(cfg: TrainConfig) -> list[str]:
    """The hybrid's layer types: full attention at ``cfg.attention_layers`` (default: the
    last layer, as Qwen3-Next has one in four), Gated-DeltaNet elsewhere."""
    full = cfg.attention_layers if cfg.attention_layers is not None else (cfg.n_layers - 1,)
    bad = [i for i in full if not 0 <= i < cfg.n_layers]
    if bad or not full:
        raise GatescopeError(
            f"--attention-layers {','.join(map(str, full))}: expected layer numbers "
            f"0..{cfg.n_layers - 1}, at least one"
        )
    return ["full_attention" if i in full else "linear_attention" for i in range(cfg.n_layers)]


def model_class(arch: str):
    import transformers as tf

    if arch not in ARCHES:
        raise GatescopeError(f"--arch {arch}: expected one of {', '.join(ARCHES)}")
    return tf.Qwen3ForCausalLM if arch == "plain" else tf.Qwen3NextForCausalLM


def token_windows(documents: list[str], tokenizer, seq: int) -> torch.Tensor:
    """All documents joined by end-of-text and cut into (N, seq) windows."""
    ids = tokenizer(documents, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    flat = [t for row in ids for t in (*row, eos)]
    n = len(flat) // seq
    return torch.tensor(flat[: n * seq], dtype=torch.long).view(n, seq)  # (N, seq)


def _lr(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _save_checkpoint(
    model, opt, step: int, losses: list[float], folder: Path, seconds: float = 0.0, schedule=None
) -> None:
    from probe.io import save_safetensors, write_json

    tensors, seen = {}, set()
    for k, v in model.state_dict().items():  # tied embeddings: store the shared tensor once
        if v.data_ptr() not in seen:
            seen.add(v.data_ptr())
            tensors[f"model.{k}"] = v.contiguous()
    names = {id(p): n for n, p in model.named_parameters()}
    for group in opt.param_groups:
        for p in group["params"]:
            state = opt.state.get(p)
            if state:
                tensors[f"opt.{names[id(p)]}.exp_avg"] = state["exp_avg"]
                tensors[f"opt.{names[id(p)]}.exp_avg_sq"] = state["exp_avg_sq"]
    folder.mkdir(parents=True, exist_ok=True)
    save_safetensors(tensors, folder / "checkpoint.safetensors")
    meta = {"step": step, "losses": losses, "seconds": seconds, "schedule": schedule}
    write_json(folder / "checkpoint.json", meta, indent=None)


def _load_checkpoint(model, opt, folder: Path) -> tuple[int, list[float], float, list | None]:
    """(step, losses, seconds trained before, schedule) of the checkpoint in ``folder``, its
    model and optimiser state loaded into ``model`` and ``opt``."""
    from safetensors.torch import load_file

    meta = json.loads((folder / "checkpoint.json").read_text())
    tensors = load_file(str(folder / "checkpoint.safetensors"))
    state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise GatescopeError(f"checkpoint in {folder} does not match the model: {missing}")
    for name, p in model.named_parameters():
        if f"opt.{name}.exp_avg" in tensors:
            opt.state[p] = {
                "step": torch.tensor(float(meta["step"])),
                "exp_avg": tensors[f"opt.{name}.exp_avg"],
                "exp_avg_sq": tensors[f"opt.{name}.exp_avg_sq"],
            }
    return meta["step"], meta["losses"], meta.get("seconds", 0.0), meta.get("schedule")


def _check_dir(path: str, option: str) -> Path:
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise GatescopeError(
            f"{option} {folder}: not a trained model directory (no config.json); pass the "
            "'model' folder of an earlier `gatescope reference train --out DIR` run"
        )
    return folder


def _copy_embeddings(model, source: Path) -> None:
    """Copy the (tied) token embeddings of the model in ``source`` into ``model``."""
    from safetensors.torch import load_file

    tensors = load_file(str(source / "model.safetensors"))
    weight = tensors.get("model.embed_tokens.weight")
    target = model.get_input_embeddings().weight
    if weight is None or weight.shape != target.shape:
        raise GatescopeError(
            f"--init-embeddings {source}: no token embeddings of shape {tuple(target.shape)} "
            "there; give a model with the same tokenizer and width"
        )
    with torch.no_grad():
        target.copy_(weight)


def _check_init(cfg: TrainConfig) -> Path:
    init = _check_dir(cfg.init, "--init")  # pyright: ignore[reportArgumentType]
    found = json.loads((init / "config.json").read_text()).get("layer_types") or []
    if cfg.arch in ("gated", "hybrid") and ("linear_attention" in found) != (cfg.arch == "hybrid"):
        raise GatescopeError(f"--init {init} has the layers {found}; --arch {cfg.arch} does not")
    return init


def _start(cfg: TrainConfig, documents: list[str]):
    """(model, tokenizer, init_info): fresh with a tokenizer trained on ``documents``, or the
    model and tokenizer of ``cfg.init``."""
    import transformers as tf

    cls = model_class(cfg.arch)
    if cfg.init is None:
        if cfg.tokenizer is None:
            tokenizer = train_tokenizer(documents, cfg.vocab)  # the non-induction text
        else:
            tokenizer = tf.AutoTokenizer.from_pretrained(_check_dir(cfg.tokenizer, "--tokenizer"))
        model = cls(model_config(cfg, len(tokenizer)))  # pyright: ignore[reportArgumentType]
        if cfg.init_embeddings is not None:
            _copy_embeddings(model, _check_dir(cfg.init_embeddings, "--init-embeddings"))
        return model, tokenizer, None
    init = _check_init(cfg)
    expected = cls.__name__
    found = json.loads((init / "config.json").read_text()).get("architectures", ["?"])[0]
    if found != expected:
        raise GatescopeError(f"--init {init} holds a {found}; --arch {cfg.arch} needs {expected}")
    info_file = init / "training.json"
    info = json.loads(info_file.read_text()) if info_file.is_file() else None
    tokenizer = tf.AutoTokenizer.from_pretrained(init)
    model = cls.from_pretrained(init)
    if cfg.arch == "hybrid":  # this run's auxiliary loss coefficient, not the one of --init
        model.config.router_aux_loss_coef = cfg.router_aux_coef
        model.router_aux_loss_coef = cfg.router_aux_coef  # pyright: ignore[reportArgumentType]
    return model, tokenizer, info


def _optimizer(model, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on the matrices only; with ``freeze_embeddings`` the token
    embeddings (and the unembedding tied to them) take no step and no decay."""
    if cfg.freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
        model.get_output_embeddings().weight.requires_grad_(False)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    matrices = [(n.split(".")[:-1], p) for n, p in params if p.dim() >= 2]
    groups = [
        {
            "params": [p for mods, p in matrices if not set(mods) & set(cfg.decay_except)],
            "weight_decay": cfg.weight_decay,
        },
        {"params": [p for n, p in params if p.dim() < 2], "weight_decay": 0},
    ]
    light = [p for mods, p in matrices if set(mods) & set(cfg.decay_except)]
    names = {part for mods, _ in matrices for part in mods}
    unknown = [x for x in cfg.decay_except if x not in names]
    if unknown:
        modules = ", ".join(sorted(n for n in names if not n.isdigit()))
        raise GatescopeError(
            f"--weight-decay-except {','.join(unknown)}: no weight matrix of that module; "
            f"modules with weight matrices: {modules}"
        )
    if light:
        groups.append({"params": light, "weight_decay": BASE_WEIGHT_DECAY})
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))


BALANCES = ("family", "layer")


def layer_balance_loss(router_logits, n_experts: int, top_k: int) -> torch.Tensor:
    """The family's load-balancing loss of each MoE layer alone, averaged over the layers."""
    from transformers.models.qwen3_next.modeling_qwen3_next import load_balancing_loss_func

    per_layer = [load_balancing_loss_func((r,), n_experts, top_k) for r in router_logits]
    return torch.stack([torch.as_tensor(v) for v in per_layer]).mean()


def _loss(model, batch: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """The language-model loss plus the load-balancing term ``cfg.router_balance`` names."""
    if cfg.arch != "hybrid" or cfg.router_balance == "family":
        return model(batch, labels=batch).loss  # the family's own (pooled) loss for MoE
    if cfg.router_balance not in BALANCES:
        raise GatescopeError(
            f"router balance {cfg.router_balance!r}: expected one of {', '.join(BALANCES)}"
        )
    coef, model.router_aux_loss_coef = model.router_aux_loss_coef, 0.0
    try:
        out = model(batch, labels=batch)  # the language-model loss alone
    finally:
        model.router_aux_loss_coef = coef
    balance = layer_balance_loss(out.router_logits, model.num_experts, model.num_experts_per_tok)
    return out.loss + cfg.router_aux_coef * balance


def _train_steps(
    model, opt, windows, cfg: TrainConfig, step: int, losses: list, ckpt, progress, clock, schedule
) -> bool:
    """Steps ``step .. cfg.steps``, each batch drawn from its own seed (so a resumed run sees
    the same batches), checkpointing every ``cfg.checkpoint_every``; appends to ``losses``.
    Returns False when it stopped at ``cfg.stop_after`` (a checkpoint, no final model)."""
    from tqdm.auto import tqdm

    model.train()
    bar = tqdm(range(step, cfg.steps), desc=f"train {cfg.arch}", disable=not progress)
    last = time.monotonic()  # wall time of the last checkpoint (or of the start)
    for step in bar:
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        batch = windows[torch.randint(0, len(windows), (cfg.batch,), generator=g)]
        for group in opt.param_groups:
            group["lr"] = _lr(cfg, step)
        loss = _loss(model, batch, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(round(loss.item(), 4))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if cfg.stop_after is not None and step + 1 == cfg.stop_after < cfg.steps:
            _save_checkpoint(model, opt, step + 1, losses, ckpt, clock(), schedule)
            return False
        due = (step + 1) % cfg.checkpoint_every == 0
        late = 0 < cfg.checkpoint_seconds <= time.monotonic() - last
        if (due or late) and step + 1 < cfg.steps:
            _save_checkpoint(model, opt, step + 1, losses, ckpt, clock(), schedule)
            last = time.monotonic()
    return True


def checkpoint_step(out: str | Path) -> int | None:
    """The step of the checkpoint a resumed run in ``out`` continues from (None: none)."""
    meta = Path(out) / "checkpoint" / "checkpoint.json"
    if not meta.is_file():
        return None
    try:
        return int(json.loads(meta.read_text())["step"])
    except (ValueError, KeyError, TypeError):
        raise GatescopeError(
            f"checkpoint {meta} is unreadable; delete {meta.parent} to train from scratch"
        ) from None


def train_reference(cfg: TrainConfig, out: Path, resume: bool = False, progress: bool = True):
    """Train one reference model into ``out``; returns the final model directory (``None``
    when ``cfg.stop_after`` stopped it at a checkpoint). ``progress``: the step bar (stderr).

    A run resumed with another ``steps`` continues on the cosine schedule of the new length
    from its checkpoint's step; ``schedule`` in ``training.json`` records each part."""
    out = Path(out)
    if cfg.init is not None:
        _check_init(cfg)  # before the corpus is built
    start_time = time.time()
    torch.manual_seed(cfg.seed)
    corpus = build_corpus(
        cfg.seed, cfg.corpus_scale, cfg.induction_tail, cfg.corpus_version, cfg.induction_docs
    )
    # induction documents (random words) would only dilute the tokenizer's merges
    model, tokenizer, init_info = _start(
        cfg, [d for d, k in zip(corpus.documents, corpus.kinds, strict=True) if k != "induction"]
    )
    check_single_tokens(tokenizer, iter_task_words())
    windows = token_windows(corpus.documents, tokenizer, cfg.seq)
    opt = _optimizer(model, cfg)
    ckpt = out / "checkpoint"
    step, losses, resumed_at, before = 0, [], None, 0.0
    schedule = [[0, cfg.steps]]  # [first step, total steps of the cosine schedule] per part
    if resume and (ckpt / "checkpoint.json").is_file():
        step, losses, before, schedule = _load_checkpoint(model, opt, ckpt)
        schedule = schedule or [[0, cfg.steps]]
        if schedule[-1][1] != cfg.steps:  # resumed with another length: a new schedule
            if step >= cfg.steps:
                raise GatescopeError(
                    f"--steps {cfg.steps}: the checkpoint in {ckpt} is at step {step} already"
                )
            schedule.append([step, cfg.steps])
        resumed_at = step
        log.info("resumed from step %d", step)

    def clock() -> float:  # seconds of this run plus those before its checkpoint
        return round(before + time.time() - start_time, 1)

    if not _train_steps(model, opt, windows, cfg, step, losses, ckpt, progress, clock, schedule):
        return None
    model.eval()
    final = out / "model"
    model.save_pretrained(final, safe_serialization=True)
    mark_document_start(tokenizer).save_pretrained(final)  # prompts start as documents do
    info = {
        "config": asdict(cfg),
        "corpus_sha256": corpus.sha256(),
        "documents": len(corpus.documents),
        "windows": len(windows),
        "final_loss_mean_last_50": sum(losses[-50:]) / max(1, len(losses[-50:])),
        "resumed_at_step": resumed_at,
        "schedule": schedule,
        "losses_every_50": losses[::50],
        "train_seconds": clock(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "init": init_info,  # the training record of the model this run continued
    }
    (final / "training.json").write_text(json.dumps(info, indent=2))
    return final
