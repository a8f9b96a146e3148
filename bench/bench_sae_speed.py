"""SAE training and harvesting speed (issue: SAEs).

In one run, on ``reference`` (reference-gated) at ``resid_post.1`` (``--model`` and
``--site`` take another model directory and site, e.g. a d_model 1024 model for SAEs at
d_in 1024):

1. Harvest throughput: ``probe.store.harvest`` (forward pass, capture, sharded safetensors
   writes) vs a plain forward pass over the same texts in the same batches, tokens/s.
2. Peak memory of harvesting, each size in its own process (the RSS high-water mark, reset
   after the model and texts are loaded, above the RSS then; Linux ``/proc``): it stays flat
   as the token count grows (shards stream to disk).
3. TopK SAE training throughput on the same harvested activations, same width, k, batch,
   steps and Adam learning rate:
   - gatescope ``train_from_store``: SAELens's trainer fed by the shuffled store, training
     ``probe.sae.sparse_topk.SparseTopKTrainingSAE`` (SAELens's TopK loss computed sparsely:
     sparse decoder, sparse encoder and decoder gradients); the rate gatescope records
     around the training loop;
   - SAELens's own path: ``SAETrainer`` with a ``TopKTrainingSAE`` fed an iterator of
     activation batches, as its ``LanguageModelSAETrainingRunner`` drives it (without a
     TransformerLens model, which cannot load Qwen3-Next);
   - EleutherAI sparsify: its ``SparseCoder`` trained with its Trainer's step (FVU + AuxK
     loss, gradient parallel to the decoder rows removed, Adam, decoder rows renormalised),
     from the same in-memory activations (its Trainer only reads hub data sets).
   Each timed after one warm-up run, median of ``--repeats``, interleaved.

    .venv/bin/python bench/bench_sae_speed.py [--tokens 200000] [--steps 200] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from probe import load_model
from probe.sae import SAETrainSpec, train_from_store
from probe.sae.data import fit_texts, reference_texts
from probe.store import ActivationStore, harvest

SITE = "resid_post.1"


def _texts(model, n_tokens: int) -> list[str]:
    return fit_texts(reference_texts("train", scale=max(0.02, n_tokens / 1.2e6)), model)


def plain_forward_rate(model, texts, n_tokens: int, batch_size: int) -> float:
    done, start = 0, time.perf_counter()
    with torch.no_grad():
        for batch in model.batches(texts, batch_size):
            model.forward(batch.input_ids, batch.attention_mask)
            done += int(batch.attention_mask.sum())
            if done >= n_tokens:
                break
    return done / (time.perf_counter() - start)


def harvest_rate(model, texts, n_tokens: int, batch_size: int, out: Path) -> float:
    start = time.perf_counter()
    harvest(model, SITE, texts, n_tokens, out, batch_size=batch_size, progress=False)
    return ActivationStore(out).tokens / (time.perf_counter() - start)


def memory_child(n_tokens: int, name: str) -> None:
    model = load_model(name)
    texts = _texts(model, n_tokens)
    with torch.no_grad():
        model.run(texts[:16])
    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark (Linux)
    base = _status_kib("VmRSS")
    with tempfile.TemporaryDirectory() as tmp:
        harvest(model, SITE, texts, n_tokens, Path(tmp) / "s", progress=False)
    peak = _status_kib("VmHWM")
    print(json.dumps({"extra_peak_mib": (peak - base) / 1024}))


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory(n_tokens: int, name: str, site: str) -> float:
    cmd = [sys.executable, __file__, "--memory-child", str(n_tokens), "--model", name]
    cmd += ["--site", site]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])["extra_peak_mib"]


def saelens_runner(acts: torch.Tensor, width: int, k: int, batch: int, steps: int, lr: float):
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    def run() -> float:
        torch.manual_seed(0)
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=acts.shape[1], d_sae=width, k=k))
        cfg = SAETrainerConfig(
            total_training_samples=steps * batch,
            train_batch_size_samples=batch,
            lr=lr,
            lr_end=lr,
            dead_feature_window=max(1, steps // 10),
            feature_sampling_window=steps,
        )
        perm = torch.randperm(len(acts))

        def batches():
            i = 0
            while True:
                idx = perm[(torch.arange(batch) + i) % len(acts)]
                yield acts[idx]
                i += batch

        trainer = SAETrainer(cfg, sae, batches())
        start = time.perf_counter()
        trainer.fit()
        return steps * batch / (time.perf_counter() - start)

    return run


def sparsify_runner(acts: torch.Tensor, width: int, k: int, batch: int, steps: int, lr: float):
    from sparsify import SparseCoder, SparseCoderConfig

    def run() -> float:
        torch.manual_seed(0)
        coder = SparseCoder(acts.shape[1], SparseCoderConfig(num_latents=width, k=k))
        coder.b_dec.data = acts[:4096].mean(0)
        opt = torch.optim.Adam(coder.parameters(), lr=lr)
        fired = torch.zeros(width, dtype=torch.long)
        perm = torch.randperm(len(acts))
        start = time.perf_counter()
        for step in range(steps):
            idx = perm[(torch.arange(batch) + step * batch) % len(acts)]
            x = acts[idx]
            dead = fired > max(1, steps // 10) if step > 0 else None
            out = coder(x, dead_mask=dead)
            loss = out.fvu + out.auxk_loss / 32
            loss.backward()
            fired += 1
            fired[out.latent_indices.flatten()] = 0
            coder.remove_gradient_parallel_to_decoder_directions()
            opt.step()
            opt.zero_grad()
            coder.set_decoder_norm_to_unit_norm()
        return steps * batch / (time.perf_counter() - start)

    return run


def gatescope_runner(store: Path, width: int, k: int, batch: int, steps: int, lr: float):
    def run() -> float:
        spec = SAETrainSpec(
            width=width, k=k, tokens=steps * batch, batch_size=batch, lr=lr, checkpoint_every=0
        )
        with tempfile.TemporaryDirectory() as tmp:
            out = train_from_store(store, spec, Path(tmp) / "sae", progress=False)
            meta = json.loads((out / "gatescope.json").read_text())
        return meta["train_tokens_per_second"]

    return run


def main() -> None:
    global SITE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=200_000, help="harvested tokens")
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=4e-4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--memory-child", type=int, default=None)
    parser.add_argument("--model", default="reference", help="bundled name or model directory")
    parser.add_argument("--site", default=SITE)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    SITE = args.site
    if args.memory_child:
        memory_child(args.memory_child, args.model)
        return
    model = load_model(args.model)
    texts = _texts(model, args.tokens)
    work = Path(tempfile.mkdtemp(prefix="bench-sae-"))
    plain_forward_rate(model, texts, 20_000, 16)  # warm-up
    plain, harvested = [], []
    for i in range(args.repeats):
        plain.append(plain_forward_rate(model, texts, args.tokens, 16))
        harvested.append(harvest_rate(model, texts, args.tokens, 16, work / f"store{i}"))
    p, h = statistics.median(plain), statistics.median(harvested)
    print(f"harvest {SITE}: {h:,.0f} tok/s, plain forward {p:,.0f} tok/s: ratio {h / p:.2f}x")
    sizes = (args.tokens // 2, args.tokens * 2)
    mem = {n: memory(n, args.model, SITE) for n in sizes}
    print(
        "harvest peak RSS above the loaded model: "
        + ", ".join(f"{n:,} tokens {m:.0f} MiB" for n, m in mem.items())
    )
    store = work / "store0"
    acts = torch.cat([b for b in ActivationStore(store).batches(4096, shuffle=False)])
    shape = (args.width, args.k, args.batch, args.steps, args.lr)
    runners = {
        "gatescope": gatescope_runner(store, *shape),
        "sae_lens": saelens_runner(acts, *shape),
        "sparsify": sparsify_runner(acts, *shape),
    }
    rates: dict[str, list[float]] = {k: [] for k in runners}
    for fn in runners.values():
        fn()  # warm-up
    for _ in range(args.repeats):
        for name, fn in runners.items():
            rates[name].append(fn())
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(
        f"TopK SAE training at d_in {acts.shape[1]}, width {args.width}, k {args.k}, "
        f"batch {args.batch}, "
        f"{args.steps} steps, {args.threads} threads (tokens/s):"
    )
    for name, rate in med.items():
        print(f"  {name:10s} {rate:12,.0f}")
    best = max(med["sae_lens"], med["sparsify"])
    print(f"gatescope / faster anchor = {med['gatescope'] / best:.2f}x")


if __name__ == "__main__":
    main()
