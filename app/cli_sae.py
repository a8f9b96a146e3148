"""``gatescope sae harvest|train|eval|features|load``: SAEs on any site, gates included,
transcoders of an MLP, and pretrained SAEs from SAELens's registry."""

from __future__ import annotations

from pathlib import Path

import typer

from app.cli_common import (
    DEVICE_HELP,
    DTYPE_HELP,
    MODEL_HELP,
    check_out_path,
    echo_json,
    json_out,
    load,
    model_options,
    show_progress,
    user_errors,
    write_json,
)
from probe.errors import GatescopeError
from probe.io import check_out_dir, read_text

sae_app = typer.Typer(
    help="Sparse autoencoders and transcoders: harvest activations, train, evaluate, browse, "
    "load pretrained ones."
)
TEXT_HELP = (
    "text file, one document per line; how lines become forward passes: --text-mode; "
    "default: the reference corpus"
)
TEXT_MODE_HELP = (
    "lines: each line of --text is its own forward pass (one document per window); "
    "packed: consecutive short lines are joined into windows of up to the model's context"
)
ARCH_HELP = (
    "topk, vsae, batchtopk, jumprelu, ... (any SAELens training architecture), or transcoder "
    "(TopK, from --site to --out-site)"
)
OUT_SITE_HELP = (
    "transcoder output: a later site of the same layer (default: mlp_out of --site's layer; "
    "e.g. --site resid_mid.1 --out-site mlp_out.1, or mlp_gate.1 for the gate branch)"
)


def _texts(path: Path | None, model, split: str, mode: str = "packed") -> list[str]:
    from probe.sae.data import TEXT_MODES, fit_texts, read_texts, reference_texts

    if mode not in TEXT_MODES:
        raise GatescopeError(f"--text-mode {mode}: expected one of {', '.join(TEXT_MODES)}")
    if path is not None:
        from probe.io import read_text

        read_text(path, "--text")  # missing, a directory or not UTF-8: named here
        return read_texts(path, model, pack=mode == "packed")
    return fit_texts(reference_texts(split), model, pack=mode == "packed")


@sae_app.command("harvest")
@user_errors
@model_options
def harvest_cmd(
    model: str = typer.Argument(..., help=MODEL_HELP),
    site: str = typer.Option(..., "--site", help="one site, e.g. mlp_gate.2 or resid_post.1"),
    tokens: int = typer.Option(..., "--tokens", help="tokens to harvest"),
    out: Path = typer.Option(..., "--out", help="store directory (resumed if it exists)"),
    text: Path = typer.Option(None, "--text", help=TEXT_HELP),
    text_mode: str = typer.Option("packed", "--text-mode", help=TEXT_MODE_HELP),
    shard_tokens: int = typer.Option(65536, "--shard-tokens"),
    batch_size: int = typer.Option(16, "--batch-size", help="texts per forward pass"),
    device: str = typer.Option(None, "--device", help=DEVICE_HELP),
    dtype: str = typer.Option(None, "--dtype", help=DTYPE_HELP),
    force: bool = typer.Option(False, "--force", help="continue a store of other texts/model"),
) -> None:
    """Harvest a site's activations into a sharded safetensors store (resumable)."""
    from probe.store import ActivationStore, check_harvest_options, harvest

    check_harvest_options(tokens, shard_tokens, batch_size)
    check_out_dir(out, resume=True, force=force)
    if text is not None:
        read_text(text, "--text")  # missing, a directory or not UTF-8: before the model loads
    m = load(model, device=device, dtype=dtype)
    where = _one_site(m, site)
    texts = _texts(text, m, "train", text_mode)
    path = harvest(
        m,
        where,
        texts,
        tokens,
        out,
        shard_tokens,
        batch_size,
        progress=show_progress(),
        force=force,
    )
    store = ActivationStore(path)
    run = store.manifest.get("last_run") or {}
    done = (
        "already complete"
        if run.get("already_complete")
        else f"{run.get('tokens')} tokens this run, {run.get('tokens_per_second')} tok/s"
    )
    typer.echo(f"{store.tokens} tokens x {store.width} of {where} in {path} ({done})")


def _one_site(model, site: str):
    sites = model.sites(site)
    if len(sites) != 1:
        raise GatescopeError(f"--site {site}: give one site (e.g. resid_post.2), not a pattern")
    return sites[0]


@sae_app.command("train")
@user_errors
@model_options
def train_cmd(
    model: str = typer.Argument(None, help=MODEL_HELP + " (or give --store)"),
    site: str = typer.Option(None, "--site", help="site to train on (with MODEL)"),
    store: Path = typer.Option(None, "--store", help="activation store directory"),
    arch: str = typer.Option("topk", "--arch", help=ARCH_HELP),
    out_site: str = typer.Option(None, "--out-site", help=OUT_SITE_HELP),
    out_store: Path = typer.Option(
        None,
        "--out-store",
        help="transcoder from stores: the store of the output site, harvested over the same "
        "texts as --store (same --text, --text-mode, --tokens, --shard-tokens)",
    ),
    width: int = typer.Option(
        None, "--width", help="number of latents (default: from the site width and tokens)"
    ),
    k: int = typer.Option(None, "--k", help="active latents per token (default: from the data)"),
    tokens: int = typer.Option(
        None, "--tokens", help="training tokens (default: the tokens available, >= 1000 steps)"
    ),
    out: Path = typer.Option(..., "--out", help="SAE directory"),
    resume: bool = typer.Option(False, "--resume", help="continue from OUT/checkpoint"),
    batch_size: int = typer.Option(1024, "--batch-size", help="tokens per step"),
    lr: float = typer.Option(4e-4, "--lr"),
    beta: float = typer.Option(1.0, "--beta", help="vSAE KL weight"),
    variance: bool = typer.Option(True, "--variance/--no-variance", help="vSAE variance head"),
    reading: str = typer.Option(
        "code",
        "--vsae-reading",
        help="vSAE: code (the authors' released code: z = mu, KL over all latents, no AuxK) "
        "or paper (the text: reparameterised sampling, AuxK); bench/sae_topk_vs_vsae.py "
        "measures which reproduces the paper's direction",
    ),
    checkpoint_every: int = typer.Option(500, "--checkpoint-every", help="steps (0: off)"),
    checkpoint_minutes: float = typer.Option(
        2.0, "--checkpoint-minutes", help="wall-time minutes between checkpoints (0: off)"
    ),
    seed: int = typer.Option(0, "--seed"),
    text: Path = typer.Option(None, "--text", help=TEXT_HELP + " (with MODEL)"),
    text_mode: str = typer.Option("packed", "--text-mode", help=TEXT_MODE_HELP),
    force: bool = typer.Option(False, "--force", help="accept a store from another model"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
    device: str = typer.Option(None, "--device", help=DEVICE_HELP),
) -> None:
    """Train an SAE (or a transcoder) with SAELens's trainer, from the model or from a store."""
    from probe.sae.train import SAETrainSpec, train_from_model, train_from_store

    if (store is None) == (model is None or site is None):
        raise GatescopeError("give MODEL --site SITE, or --store DIR (not both)")
    if out_store is not None and store is None:
        raise GatescopeError("--out-store goes with --store (from MODEL, give --out-site)")
    if out_site is not None and store is not None:
        raise GatescopeError("from stores, the output site is --out-store's; drop --out-site")
    check_out_dir(out, resume=resume, force=force)
    spec = SAETrainSpec(
        arch=arch,
        width=width,
        k=k,
        tokens=tokens,
        batch_size=batch_size,
        lr=lr,
        beta=beta,
        learn_variance=variance,
        vsae_reading=reading,
        checkpoint_every=checkpoint_every,
        checkpoint_minutes=checkpoint_minutes,
        seed=seed,
        device=device or "cpu",
    )
    spec.validate()
    if store is not None:
        if model is not None:
            from probe.store import ActivationStore

            st = ActivationStore(store)
            st.check(load(model, device=device), st.manifest["site"], force=force)
        path = train_from_store(
            store, spec, out, resume=resume, progress=not quiet, out_store=out_store
        )
    else:
        m = load(model, device=device)
        texts = _texts(text, m, "train", text_mode)
        where = _one_site(m, site)
        target = None if out_site is None else _one_site(m, out_site)
        path = train_from_model(
            m, where, spec, out, texts, resume=resume, progress=not quiet,
            text_mode=text_mode, out_site=target,
        )  # fmt: skip
    import json

    meta = json.loads((Path(path) / "gatescope.json").read_text())
    used = meta["spec"]
    ev = meta.get("training", {}).get("train_explained_variance")
    ev_text = f", training explained variance {ev:.3f}" if ev is not None else ""
    what = f"{used['arch']} SAE"
    if meta.get("out_site"):
        what = f"transcoder {meta['site']} -> {meta['out_site']}"
    typer.echo(
        f"saved {what} ({used['width']} latents, k={used['k']}, {used['tokens']} tokens"
        f"{ev_text}) to {path}"
    )


def _open(path: Path, model: str | None, device: str | None):
    from probe.sae.io import load_trained

    trained = load_trained(path, device=device or "cpu")
    name = model or trained.model
    if not name:
        raise GatescopeError(f"{path} records no model; pass --model")
    return trained, load(name, device=device)


@sae_app.command("eval")
@user_errors
@model_options
@json_out
def eval_cmd(
    path: Path = typer.Argument(..., help="SAE directory"),
    model: str = typer.Option(None, "--model", help="default: the model it was trained on"),
    text: Path = typer.Option(None, "--text", help=TEXT_HELP + " (default: held-out part)"),
    text_mode: str = typer.Option("packed", "--text-mode", help=TEXT_MODE_HELP),
    batch_size: int = typer.Option(16, "--batch-size"),
    force: bool = typer.Option(False, "--force", help="evaluate on another model anyway"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
    json_: bool = typer.Option(False, "--json", help="print the metrics as JSON"),
    out: Path = typer.Option(None, "--out", help="write the metrics as JSON"),
    device: str = typer.Option(None, "--device", help=DEVICE_HELP),
) -> None:
    """SAEBench core metrics: L0, explained variance, CE / KL loss recovered, fraction alive,
    feature density histogram (under SAEBench's names in "saebench")."""
    from probe.sae.evaluate import evaluate_sae

    if batch_size < 1:
        raise GatescopeError(f"--batch-size {batch_size}: expected at least 1 text")
    check_out_path(out)
    trained, m = _open(path, model, device)
    texts = _texts(text, m, "eval", text_mode)
    result = evaluate_sae(
        m, trained, texts, batch_size, text_mode=text_mode, force=force, progress=not quiet
    )
    if out is not None:
        write_json(result.to_dict(), out)
    if json_:
        echo_json(result.to_dict())
        return
    if result.out_site:
        typer.echo(
            f"transcoder {result.site} -> {result.out_site} in place of {result.out_site}: "
            f"reconstruction figures are of {result.out_site}, ablation zeroes it"
        )
    for group, values in result.saebench().items():
        if group == "feature_density_histogram":
            continue
        for key, value in values.items():
            name = f"{group}.{key}"
            shown = f"{value:.4f}" if isinstance(value, float) else str(value)
            typer.echo(f"{name:52s} {shown}")
    if result.explained_variance < 0.5:
        typer.echo(f"warning: explained variance {result.explained_variance:.3f} < 0.5", err=True)


@sae_app.command("features")
@user_errors
@model_options
@json_out
def features_cmd(
    path: Path = typer.Argument(..., help="SAE directory"),
    top: int = typer.Option(
        None, "--top", help="contexts per latent (default: 5; 10 on a --latent page)"
    ),
    window: int = typer.Option(8, "--window", help="tokens either side of the peak"),
    latents: str = typer.Option(None, "--latents", help="e.g. '0,5,17' (default: all)"),
    latent: int = typer.Option(
        None,
        "--latent",
        help="one latent's feature page as JSON: firing rate, activation histogram, top and "
        "bottom logits, de-duplicated top contexts, contexts across activation quantiles",
    ),
    text_mode: str = typer.Option("packed", "--text-mode", help=TEXT_MODE_HELP),
    model: str = typer.Option(None, "--model", help="default: the model it was trained on"),
    text: Path = typer.Option(None, "--text", help=TEXT_HELP + " (held-out part)"),
    json_: bool = typer.Option(False, "--json", help="print the report as JSON"),
    out: Path = typer.Option(None, "--out", help="write the report as JSON"),
    device: str = typer.Option(None, "--device", help=DEVICE_HELP),
) -> None:
    """Top-activating contexts and firing rate of each latent, or one latent's page."""
    from probe.sae.features import latent_dashboard, top_contexts

    check_out_path(out)
    trained, m = _open(path, model, device)
    given = {} if top is None else {"top": top}  # no --top: each function's default
    if latent is not None:
        texts = _texts(text, m, "eval", text_mode)
        page = latent_dashboard(m, trained, texts, latent, window=window, **given)
        if out is not None:
            write_json(page.to_dict(), out)
        echo_json(page.to_dict())
        return
    try:
        chosen = [int(x) for x in latents.split(",")] if latents else None
    except ValueError:
        raise GatescopeError(f"--latents {latents}: expected integers like 0,5,17") from None
    texts = _texts(text, m, "eval", text_mode)
    report = top_contexts(m, trained, texts, window=window, latents=chosen, **given)
    if out is not None:
        write_json(report.to_dict(), out)
    if json_:
        echo_json(report.to_dict())
        return
    _print_features(report)


def _print_features(report, limit: int = 30) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"{report.path}: {report.site}, {report.tokens} tokens")
    for col in ("latent", "firing rate", "max act", "top context"):
        table.add_column(col, justify="left" if col == "top context" else "right")
    ranked = sorted(report.features, key=lambda f: -f.firing_rate)[:limit]
    for f in ranked:
        ctx = ""
        if f.contexts:
            c = f.contexts[0]
            words = [escape(w) for w in c.tokens]
            words[c.center] = f"[bold]{words[c.center]}[/bold]"
            ctx = "".join(words)
        table.add_row(str(f.latent), f"{f.firing_rate:.4f}", f"{f.max_activation:.3f}", ctx)
    Console().print(table)


@sae_app.command("load")
@user_errors
@model_options
def load_cmd(
    release: str = typer.Argument(
        ..., help="SAELens release, e.g. qwen-scope-3.5-2b-base-w32k-l50"
    ),
    sae_id: str = typer.Argument(..., help="SAE id within the release, e.g. layer12"),
    out: Path = typer.Option(..., "--out", help="gatescope SAE directory to write (new)"),
    model: str = typer.Option(
        None, "--model", help="check the sites and widths on this model and record it"
    ),
    device: str = typer.Option(None, "--device", help=DEVICE_HELP),
) -> None:
    """A pretrained SAE from SAELens's registry, saved where `sae eval` / `sae features` read
    it (its hook name mapped to a gatescope site)."""
    from probe.sae.pretrained import load_pretrained

    m = load(model, device=device) if model else None
    p = load_pretrained(release, sae_id, out=out, model=m, device=device or "cpu")
    where = str(p.site) if p.out_site is None else f"{p.site} -> {p.out_site}"
    typer.echo(
        f"{release} / {sae_id}: {p.architecture}, {p.d_sae} latents on {where} "
        f"(hook {p.hook_name}) of {m.name if m else p.model}; saved to {p.path}"
    )


def register(app: typer.Typer) -> None:
    """Mount ``sae`` on the main command line."""
    app.add_typer(sae_app, name="sae")
