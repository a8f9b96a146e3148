"""How the cost of tracing and of a head-patching sweep grows on a hybrid model at real width.

A random Qwen3.5-shaped hybrid (Qwen3-Next architecture: three Gated-DeltaNet layers then one
gated-attention layer, repeating; d_model 1024, 8 query / 2 KV heads of 256, 16 + 16
linear-attention heads of 128, MLP 3584, vocabulary 32k to keep it small), random weights,
CPU, float32 (``--dtype bfloat16`` for reduced precision). For each point of a grid over
layers, sequence length and batch it times:

- a plain forward pass, and the same pass traced at every ``attn_gate`` (attention layers)
  and ``resid_post``
  (ratio traced / plain);
- a head-patching sweep (every head of every attention layer, all positions, denoising;
  prompts that differ at 3 tokens before the end), resumed and in full passes, and checks
  that both agree within 1e-3; its estimated peak memory (``PatchingResult.peak_memory``);
- AtP and RelP (constant gate rule) over the same heads, as ratios to the full sweep.

- gate statistics (``gate_stats``) over the same prompts, as a ratio to the plain forward;
- the anchors on the same weights and inputs: nnsight tracing the same modules (the
  attention layers' ``q_proj`` output, which holds the gate, and every layer's output) and
  nnsight's head-patching sweep (one traced pass per head, that head's slice of the
  ``o_proj`` input set to the clean run's), whose patched logit differences are compared with
  gatescope's. TransformerLens's bridge is tried on the same weights (it has no Qwen3-Next
  adapter in the installed version; the reason is printed when it cannot run).

``--dense`` adds the dense shape of the same width (24 full-attention layers, each with its
output gate, as in the gated-attention paper's dense models) at the base length and batch.
The table is printed and a Plotly figure (sweep seconds vs layers / length / batch) saved as
``bench/bench_scaling.html`` next to ``bench/bench_scaling.txt``.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_scaling.py [--layers 4 8] [--lengths 16 32]
        [--batches 2 4] [--repeats 1] [--dense] [--no-nnsight] [--no-sweeps]

The forward costs (plain, traced, gate statistics, nnsight's trace) are the best of at least
seven interleaved rounds; ``--no-sweeps`` measures only those (a quick run), writing the
table to ``bench_scaling_forward.txt`` instead.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import torch
import transformers as tf

from circuits.attribution import attribute
from interventions.patching import activation_patching
from probe import Tracer, load_model
from probe.gates import gate_stats
from probe.tasks import Task

HERE = Path(__file__).parent


def attention_layers(cfg) -> list[int]:
    return [i for i, t in enumerate(cfg.layer_types) if t == "full_attention"]


def config(layers: int, dense: bool = False) -> tf.Qwen3NextConfig:
    """The hybrid shape (three DeltaNet layers per attention layer) or, ``dense``, every layer
    full attention."""
    return tf.Qwen3NextConfig(
        vocab_size=32000,
        hidden_size=1024,
        num_hidden_layers=layers,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=256,
        intermediate_size=3584,
        linear_num_key_heads=16,
        linear_num_value_heads=16,
        linear_key_head_dim=128,
        linear_value_head_dim=128,
        layer_types=[
            "full_attention" if dense or (i + 1) % 4 == 0 else "linear_attention"
            for i in range(layers)
        ],
        num_experts=0,
        mlp_only_layers=list(range(layers)),
        max_position_embeddings=512,
        tie_word_embeddings=False,
    )


def word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["<pad>", "<eos>", "<unk>"] + [f"w{i}" for i in range(997)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tf.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )


def task(n: int, length: int, seed: int = 0) -> Task:
    g = torch.Generator().manual_seed(seed)
    clean, corrupt, ans, wrong = [], [], [], []
    for _ in range(n):
        w = [f"w{int(i)}" for i in torch.randint(10, 990, (length,), generator=g)]
        clean.append(" ".join(w))
        swap = f"w{int(torch.randint(10, 990, (1,), generator=g))}"
        corrupt.append(" ".join([*w[:-3], swap, *w[-2:]]))
        ans.append(f"w{int(torch.randint(10, 990, (1,), generator=g))}")
        wrong.append(f"w{int(torch.randint(10, 990, (1,), generator=g))}")
    return Task("late", clean, corrupt, ans, wrong)


def timed(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def tl_bridge(hf) -> str:
    """Why TransformerLens's bridge cannot run this model, or ``""`` if it boots and runs a
    forward pass."""
    import tempfile

    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError as exc:
        return f"transformer_lens has no TransformerBridge ({exc})"
    folder = tempfile.mkdtemp()
    hf.save_pretrained(folder)
    try:
        bridge = TransformerBridge.boot_transformers(folder, device="cpu")
        with torch.no_grad():  # booting is not enough: the head sweep needs its forward
            bridge(torch.tensor([[5, 6, 7, 8]]))
    except Exception as exc:  # noqa: BLE001 -- the anchor's own refusal, reported as is
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    return ""


def nnsight_trace(wrapped, ids, attn: list[int]):
    """nnsight saving what gatescope's trace reads: each attention layer's ``q_proj`` output
    (queries and gate) and every layer's output."""
    saved = []
    with wrapped.trace(ids):
        for i, layer in enumerate(wrapped.model.layers):
            if i in attn:
                saved.append(layer.self_attn.q_proj.output.save())
            saved.append(layer.output.save())
    return saved


def nnsight_sweep(wrapped, b, attn: list[int], head_dim: int, n_heads: int) -> list[float]:
    """nnsight's head-patching sweep: the clean run's ``o_proj`` inputs, then one pass of the
    corrupt prompts per head with that head's slice set to the clean one; the mean logit
    difference (answer - wrong at the last token) of each pass, in (layer, head) order."""
    rows = torch.arange(b.clean_ids.shape[0])
    clean = []
    with wrapped.trace(b.clean_ids, attention_mask=b.attention_mask):
        for i in attn:
            clean.append(wrapped.model.layers[i].self_attn.o_proj.input.save())
    out = []
    for layer, src in zip(attn, clean, strict=True):
        for h in range(n_heads):
            cols = slice(h * head_dim, (h + 1) * head_dim)
            with wrapped.trace(b.corrupt_ids, attention_mask=b.attention_mask):
                wrapped.model.layers[layer].self_attn.o_proj.input[:, :, cols] = src[:, :, cols]
                last = wrapped.lm_head.output[:, -1].save()
            out.append(float((last[rows, b.answer_ids] - last[rows, b.wrong_ids]).mean()))
    return out


def interleaved(fns: dict, rounds: int) -> dict:
    """The best time of each function over ``rounds`` rounds, the functions taking turns in
    every round (load on a shared machine then falls on all of them alike)."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            best[name] = min(best[name], timed(fn, 1))
    return best


def forward_costs(model, wrapped, t, b, attn: list[int], repeats: int) -> dict:
    """A plain forward pass, the same traced (attention gates and every residual), gate
    statistics over the same prompts and nnsight reading the same modules: the best of
    ``max(7, repeats)`` interleaved rounds, as ratios to the plain pass (nnsight left out when
    ``wrapped`` is None)."""
    sites = [*(f"attn_gate.{i}" for i in attn), "resid_post.*"]

    def traced():
        with Tracer(model, sites):
            model.forward(b.clean_ids, b.attention_mask)

    fns = {
        "plain": lambda: model.forward(b.clean_ids, b.attention_mask),
        "traced": traced,
        "stats": lambda: gate_stats(model, t.clean, batch_size=len(t), progress=False),
    }
    if wrapped is not None:
        fns["nnsight"] = lambda: nnsight_trace(wrapped, b.clean_ids, attn)
    with torch.no_grad():
        best = interleaved(fns, max(7, repeats))
    out = {
        "forward_s": best["plain"],
        "traced_ratio": best["traced"] / best["plain"],
        "stats_ratio": best["stats"] / best["plain"],
    }
    if wrapped is not None:
        out["nn_trace_ratio"] = best["nnsight"] / best["plain"]
    return out


def sweep_costs(model, wrapped, t, b, attn: list[int], repeats: int) -> dict:
    """The head-patching sweep resumed and in full passes, AtP and RelP over the same heads,
    and nnsight's sweep (results compared with gatescope's)."""
    heads = ",".join(f"head_out.{i}" for i in attn)
    out = {}

    def sweep(resume):
        out[resume] = activation_patching(model, t, heads, resume=resume, progress=False)

    fast = timed(lambda: sweep(True), repeats)
    full = timed(lambda: sweep(False), repeats)
    a, f = out[True], out[False]
    diff = max(abs(x.effect - y.effect) for x, y in zip(a.components, f.components, strict=True))
    # the same heads scored by the gradient methods (one forward + backward each)
    atp = timed(lambda: attribute(model, t, heads, "atp"), repeats)
    relp = timed(lambda: attribute(model, t, heads, "relp", gate_rule="constant"), repeats)
    row = {
        "heads": len(a.components),
        "sweep_resumed_s": fast,
        "sweep_full_s": full,
        "speedup": full / fast,
        "atp_ratio": atp / full,
        "relp_ratio": relp / full,
        "resumed": a.resumed,
        "max_diff": diff,
        "peak_mb": a.peak_memory / 2**20,
    }
    if wrapped is not None:
        head_dim, n_heads = model.hf.config.head_dim, model.hf.config.num_attention_heads
        swept = {}
        with torch.no_grad():
            nn_sweep = timed(
                lambda: swept.update(v=nnsight_sweep(wrapped, b, attn, head_dim, n_heads)),
                repeats,
            )
        span = a.clean_logit_diff - a.corrupt_logit_diff
        mine = [c.effect * span + a.corrupt_logit_diff for c in a.components]
        row["nn_sweep_s"] = nn_sweep
        row["vs_nnsight"] = nn_sweep / fast
        row["nn_max_diff"] = max(abs(x - y) for x, y in zip(mine, swept["v"], strict=True))
    return row


def point(
    layers: int,
    length: int,
    batch: int,
    dtype,
    repeats: int,
    dense=False,
    anchors=True,
    sweeps=True,
) -> dict:
    torch.manual_seed(0)
    hf = tf.Qwen3NextForCausalLM(config(layers, dense)).eval().to(dtype)
    model = load_model(hf, tokenizer=word_tokenizer())
    t = task(batch, length)
    b = t.tokenize(model.tokenizer)
    attn = attention_layers(hf.config)
    row = {"shape": "dense" if dense else "hybrid", "layers": layers, "length": length}
    row["batch"] = batch
    wrapped = None
    if anchors:
        from nnsight import NNsight

        wrapped = NNsight(hf)
    row.update(forward_costs(model, wrapped, t, b, attn, repeats))
    if sweeps:
        row.update(sweep_costs(model, wrapped, t, b, attn, repeats))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--lengths", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--batches", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--dense", action="store_true", help="add the 24-layer dense shape")
    parser.add_argument("--no-nnsight", action="store_true", help="leave the nnsight anchor out")
    parser.add_argument(
        "--no-sweeps", action="store_true", help="forward costs only (tracing, statistics)"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    dtype = getattr(torch, args.dtype)
    base = (args.layers[0], args.lengths[0], args.batches[0])
    grid = {base}
    grid |= {(n, base[1], base[2]) for n in args.layers}
    grid |= {(base[0], t, base[2]) for t in args.lengths}
    grid |= {(base[0], base[1], b) for b in args.batches}
    anchors, sweeps = not args.no_nnsight, not args.no_sweeps
    rows = [point(*p, dtype, args.repeats, anchors=anchors, sweeps=sweeps) for p in sorted(grid)]
    if args.dense:
        rows.append(point(24, base[1], base[2], dtype, args.repeats, True, anchors, sweeps))
    torch.manual_seed(0)
    why = tl_bridge(tf.Qwen3NextForCausalLM(config(base[0])).eval())
    cols = list(rows[0])
    lines = [" ".join(f"{c:>15}" for c in cols)]
    for r in rows:
        lines.append(" ".join(f"{r[c]:>15.4g}" if isinstance(r.get(c), float)
                              else f"{r.get(c, '-')!s:>15}" for c in cols))  # fmt: skip
    lines.append(f"TransformerLens bridge: {'runs' if not why else 'cannot run: ' + why}")
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lines.append(f"process peak RSS: {peak_rss:.0f} MB; dtype {args.dtype}; CPU threads 1")
    text = "\n".join(lines)
    print(text)
    if not sweeps:
        (HERE / "bench_scaling_forward.txt").write_text(text + "\n")
        return
    (HERE / "bench_scaling.txt").write_text(text + "\n")
    figure(rows, base).write_html(HERE / "bench_scaling.html", include_plotlyjs="cdn")


def figure(rows: list[dict], base: tuple[int, int, int]):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    rows = [r for r in rows if r["shape"] == "hybrid"]
    fig = make_subplots(rows=1, cols=3, subplot_titles=("layers", "sequence length", "batch"))
    for i, key in enumerate(("layers", "length", "batch")):
        others = [k for k in ("layers", "length", "batch") if k != key]
        fixed = dict(zip(("layers", "length", "batch"), base, strict=True))
        pts = sorted((r for r in rows if all(r[o] == fixed[o] for o in others)),
                     key=lambda r: r[key])  # fmt: skip
        for name, col in (("resumed sweep", "sweep_resumed_s"), ("full sweep", "sweep_full_s"),
                          ("nnsight sweep", "nn_sweep_s"), ("forward", "forward_s")):  # fmt: skip
            if not all(col in r for r in pts):
                continue
            fig.add_trace(
                go.Scatter(
                    x=[r[key] for r in pts],
                    y=[r[col] for r in pts],
                    name=name,
                    legendgroup=name,
                    showlegend=i == 0,
                ),  # fmt: skip
                row=1,
                col=i + 1,
            )
    fig.update_yaxes(title_text="seconds", type="log")
    fig.update_layout(title="head-patching sweep cost on a Qwen3.5-shaped hybrid (d_model 1024)")
    return fig


if __name__ == "__main__":
    main()
