"""TopK SAE vs variational SAE on the gated reference model (issue: SAEs).

On ``reference`` (reference-gated), at ``resid_post.1`` (the residual stream after the middle
layer of four) and ``mlp_gate.1`` (the GLU gate of the same layer): harvest each site once,
train a TopK SAE and a vSAE with the same width, k, tokens, batch and learning rate from the
same store, and evaluate both on held-out text (L0, explained variance, live fraction,
CE-loss score with the SAE spliced in). The vSAE paper (arXiv 2509.22994, Pythia-70M) found
far fewer live features for vSAE (0.05-0.37 vs 0.81-0.98) and slightly worse reconstruction.

The vSAE is trained in both readings (``--vsae-reading``): ``code`` (the authors' released
code: z = mu, KL over all latents, no AuxK) and ``paper`` (the text: reparameterised
sampling with a learned variance, AuxK). The table gives SAEBench's names
(``sparsity.l0``, ``reconstruction_quality.explained_variance``, ``misc_metrics.frac_alive``,
``model_performance_preservation.ce_loss_score``) and the vSAE collapse diagnostics
(mean |mu| of the selected latents, mean sigma, fraction of selections decided by noise).

A TopK transcoder of the same layer's MLP (``resid_mid.1 -> mlp_out.1``, from two stores
harvested over the same texts) gets a row too: its explained variance is of ``mlp_out.1``,
its CE-loss score with the transcoder in place of the MLP (ablation: the MLP's output
zeroed).

    .venv/bin/python bench/sae_topk_vs_vsae.py [--width 1024] [--k 32] [--tokens 1000000]

A smoke run on a tiny budget (any model directory; minutes on a CPU):

    .venv/bin/python bench/sae_topk_vs_vsae.py --model DIR --tokens 4096 \
        --store-tokens 4096 --width 64 --k 8 --eval-texts 8
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from probe import load_model
from probe.sae import SAETrainSpec, evaluate_sae, load_trained, train_from_store
from probe.sae.data import fit_texts, reference_texts
from probe.sae.transcoder import default_out_site
from probe.sites import Site
from probe.store import harvest

FIELDS = {
    "sparsity.l0": "l0",
    "reconstruction_quality.explained_variance": "explained_variance",
    "misc_metrics.frac_alive": "live_fraction",
    "model_performance_preservation.ce_loss_score": "ce_loss_score",
    "model_behavior_preservation.kl_div_score": "kl_div_score",
}
DIAG = ("mean_abs_mu", "mean_sigma", "noise_fraction")
VARIANTS = {
    "topk": ("topk", "code"),
    "vsae-code": ("vsae", "code"),
    "vsae-paper": ("vsae", "paper"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="reference")
    parser.add_argument("--sites", default="resid_post.1,mlp_gate.1")
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=1_000_000, help="training tokens")
    parser.add_argument("--store-tokens", type=int, default=300_000, help="harvested tokens")
    parser.add_argument("--beta", type=float, default=1.0, help="vSAE KL weight")
    parser.add_argument("--eval-texts", type=int, default=400)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", default=None, help="folder for stores and SAEs (default: temp)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument(
        "--transcoder",
        default="resid_mid.1",
        help="input site of the transcoder row (output: mlp_out of its layer); '' for none",
    )
    parser.add_argument("--batch-size", type=int, default=1024, help="tokens per step")
    parser.add_argument("--json", dest="json_out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work or tempfile.mkdtemp(prefix="sae-compare-"))
    model = load_model(args.model)
    train_texts = fit_texts(reference_texts("train"), model)
    held_out = fit_texts(reference_texts("eval"), model)[: args.eval_texts]
    rows = []

    def spec_of(arch: str, reading: str = "code") -> SAETrainSpec:
        return SAETrainSpec(
            arch=arch,
            width=args.width,
            k=args.k,
            tokens=args.tokens,
            batch_size=args.batch_size,
            beta=args.beta,
            vsae_reading=reading,
            checkpoint_every=0,
            checkpoint_minutes=0,
        )

    def store_of(site: str) -> Path:
        return harvest(model, site, train_texts, args.store_tokens, work / f"store-{site}")

    def row(site: str, name: str, out: Path) -> None:
        result = evaluate_sae(model, load_trained(out), held_out)
        meta = json.loads((out / "gatescope.json").read_text())
        training = meta.get("training", {})
        rows.append(
            {
                "site": site,
                "variant": name,
                **{f: getattr(result, attr) for f, attr in FIELDS.items()},
                **{d: training.get(d, float("nan")) for d in DIAG},
            }
        )
        print(json.dumps(rows[-1]), flush=True)

    for site in args.sites.split(","):
        store = store_of(site)
        for name in args.variants.split(","):
            arch, reading = VARIANTS[name]
            out = work / f"{name}-{site}"
            if not (out / "cfg.json").exists():
                train_from_store(store, spec_of(arch, reading), out)
            row(site, name, out)
    if args.transcoder:
        source = Site.parse(args.transcoder)
        target = default_out_site(source)
        out = work / f"transcoder-{source}"
        if not (out / "cfg.json").exists():
            stores = store_of(str(source)), store_of(str(target))
            train_from_store(stores[0], spec_of("transcoder"), out, out_store=stores[1])
        row(f"{source}->{target.kind}", "transcoder", out)
    print(
        f"\n{args.model}: width {args.width}, k {args.k}, {args.tokens:,} training tokens "
        f"from {args.store_tokens:,} harvested, vSAE beta {args.beta}"
    )
    short = [f.split(".")[-1] for f in FIELDS] + list(DIAG)
    print(f"{'site':22s}{'variant':12s}" + "".join(n[:18].rjust(19) for n in short))
    for r in rows:
        vals = [r[f] for f in FIELDS] + [r[d] for d in DIAG]
        print(f"{r['site']:22s}{r['variant']:12s}" + "".join(f"{v:19.3f}" for v in vals))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
