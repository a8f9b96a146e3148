"""TopK transcoders: a sparse replacement of one layer's MLP (resid_mid -> mlp_out)."""

import json

import pytest
import torch
from tiny import prompts, tiny_hf, tiny_tokenizer

from probe import GatescopeError, load_model
from probe.sae import SAETrainSpec, evaluate_sae, load_trained, train_from_model, train_sae
from probe.sites import Site

D, N, K = 64, 32, 4  # model width, latents of the true sparse map, active latents


class SparseMap(torch.nn.Module):
    """An MLP whose function is a sparse map: y = relu(TopK_K(x @ E)) @ D_."""

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.E = torch.nn.functional.normalize(torch.randn(D, N, generator=g), dim=0)
        self.D_ = torch.randn(N, D, generator=g)

    def forward(self, x):
        pre = x @ self.E.to(x.dtype)
        v, i = pre.topk(K, dim=-1)
        return torch.zeros_like(pre).scatter(-1, i, v.relu()) @ self.D_.to(x.dtype)


def sparse_map_model():
    """A tiny model whose layer-1 MLP reads resid_mid itself (no norm) and is a sparse map."""
    hf = tiny_hf("qwen3_next")
    layer = hf.model.layers[1]
    layer.post_attention_layernorm = torch.nn.Identity()
    layer.mlp = SparseMap()
    m = load_model(hf, tokenizer=tiny_tokenizer())
    m.name = "tiny-sparse-map"
    return m


def _save_transcoder(path, E, D_, b_enc=None, model=None):
    """The transcoder with these weights, saved as a gatescope SAE directory."""
    from probe.sae.transcoder import TopKTranscoder, TopKTranscoderConfig

    cfg = TopKTranscoderConfig(
        d_in=D, d_sae=E.shape[1], d_out=D, k=K, apply_b_dec_to_input=False,
        rescale_acts_by_decoder_norm=False,
    )  # fmt: skip
    tc = TopKTranscoder(cfg)
    with torch.no_grad():
        tc.W_enc.copy_(E)
        tc.W_dec.copy_(D_)
        tc.b_enc.copy_(torch.zeros(E.shape[1]) if b_enc is None else b_enc)
        tc.b_dec.zero_()
    tc.save_model(path)
    meta = {"site": "resid_mid.1", "out_site": "mlp_out.1", "model": model or "tiny-sparse-map"}
    (path / "gatescope.json").write_text(json.dumps(meta))
    return path


def test_spliced_exact_transcoder_reproduces_the_mlp(tmp_path):
    """A transcoder holding the MLP's own sparse map, spliced in place of the MLP, leaves the
    model's output unchanged; one with a wrong encoder bias does not."""
    model = sparse_map_model()
    mlp = model.hf.model.layers[1].mlp
    texts = prompts(20, length=12, seed=5)
    exact = load_trained(_save_transcoder(tmp_path / "exact", mlp.E, mlp.D_))
    assert exact.is_transcoder and str(exact.out_site) == "mlp_out.1"
    ev = evaluate_sae(model, exact, texts)
    assert ev.explained_variance == pytest.approx(1.0, abs=1e-6)
    assert ev.ce_sae == pytest.approx(ev.ce_orig, abs=1e-5) and ev.kl_sae < 1e-8
    assert ev.ce_loss_score == pytest.approx(1.0, abs=1e-4) and ev.l0 <= K
    assert ev.ce_ablate != pytest.approx(ev.ce_orig)  # zeroing the MLP matters
    wrong = load_trained(_save_transcoder(tmp_path / "wrong", mlp.E, mlp.D_, -torch.ones(N)))
    bad = evaluate_sae(model, wrong, texts)
    assert bad.explained_variance < 0.99 and bad.kl_sae > 1e-4

    # the spliced logits equal logits with the MLP's output replaced by hand (plain hooks)
    from probe.hooks import hook_sites
    from probe.sae.evaluate import transcoder_entries

    batch = model.tokenize(texts[:4])
    seen = {}
    layer = model.hf.model.layers[1]
    pre = layer.post_attention_layernorm.register_forward_hook(
        lambda mod, args, out: seen.update(x=args[0])
    )
    post = layer.mlp.register_forward_hook(
        lambda mod, args, out: wrong.sae.decode(wrong.sae.encode(seen["x"]))
    )
    with torch.no_grad():
        by_hand = model.forward(batch.input_ids, batch.attention_mask)
    pre.remove(), post.remove()
    with torch.no_grad(), hook_sites(model, transcoder_entries(wrong), write=True):
        spliced = model.forward(batch.input_ids, batch.attention_mask)
    assert torch.allclose(spliced, by_hand, atol=1e-5)


def _sparse_pairs(truth: SparseMap, batch: int, seed: int = 1):
    """Endless ``[x | truth(x)]`` batches, x a sparse sum of K of the map's encoder
    directions (plus a little noise): synthetic data from a sparse map."""
    g = torch.Generator().manual_seed(seed)

    def provider(skip):
        while True:
            idx = torch.rand(batch, N, generator=g).topk(K, dim=-1).indices
            coef = torch.zeros(batch, N).scatter(-1, idx, 1 + torch.rand(batch, K, generator=g))
            x = coef @ truth.E.T + 0.05 * torch.randn(batch, D, generator=g)
            yield torch.cat([x, truth(x)], dim=1)

    return provider


def _train_synthetic(tmp_path, steps: int, batch: int = 256, lr: float = 1e-2):
    truth = SparseMap(seed=3)
    spec = SAETrainSpec(
        arch="transcoder", width=64, k=K, tokens=batch * steps, batch_size=batch, lr=lr,
        checkpoint_every=0,
    )  # fmt: skip
    assert spec.arch == "topk_transcoder" and spec.is_transcoder
    source = {
        "model": "synthetic", "site": "resid_mid.0", "site_shape": [D],
        "out_site": "mlp_out.0", "out_site_shape": [D],
    }  # fmt: skip
    pairs = _sparse_pairs(truth, batch)
    out = train_sae(spec, pairs, D, tmp_path / "tc", source, progress=False, d_out=D)
    return truth, out, next(_sparse_pairs(truth, 500, seed=7)(0))


def test_transcoder_saves_and_loads_in_saelens_format(tmp_path):
    """Trained through SAELens's trainer, saved, it loads with SAELens's own loader as a
    subclass of SAELens's Transcoder, and its output is the TopK formula recomputed from the
    saved weights."""
    from sae_lens import SAE
    from sae_lens.saes.transcoder import Transcoder
    from safetensors.torch import load_file

    _, out, held = _train_synthetic(tmp_path, steps=4)
    sae = SAE.load_from_disk(out)
    assert isinstance(sae, Transcoder) and sae.cfg.architecture() == "topk_transcoder"
    assert sae.cfg.metadata.hook_name == "resid_mid.0"
    assert sae.cfg.metadata.hook_name_out == "mlp_out.0" and sae.cfg.d_out == D
    w = load_file(str(out / "sae_weights.safetensors"))
    x = held[:, :D]
    pre = x @ w["W_enc"] + w["b_enc"]
    v, i = pre.topk(K, dim=-1)
    f = torch.zeros_like(pre).scatter(-1, i, v.relu())
    assert torch.allclose(sae.decode(sae.encode(x)), f @ w["W_dec"] + w["b_dec"], atol=1e-5)
    tr = load_trained(out)
    assert tr.is_transcoder and tr.decoder_site == Site("mlp_out", 0)
    y_hat, latents = tr.forward_with_latents(x)
    assert torch.equal(y_hat, sae.decode(sae.encode(x))) and (latents != 0).sum(-1).max() <= K


def test_transcoder_learns_a_sparse_map(tmp_path):
    _, out, held = _train_synthetic(tmp_path, steps=300)
    meta = json.loads((out / "gatescope.json").read_text())
    tr = load_trained(out)
    x, y = held[:, :D], held[:, D:]
    y_hat, _ = tr.forward_with_latents(x)
    ev = float(1 - (y - y_hat).pow(2).sum() / (y - y.mean(0)).pow(2).sum())
    print(f"synthetic sparse map: training {meta['training']}, held-out EV {ev:.3f}")
    assert ev > 0.9, ev


def test_transcoder_sites_are_checked(tmp_path):
    from probe.sae.transcoder import check_transcoder_sites

    ok = [
        ("resid_mid.1", "mlp_out.1"),
        ("resid_mid.1", "mlp_gate.1"),
        ("resid_pre.0", "resid_mid.0"),
    ]
    for a, b in ok:
        check_transcoder_sites(Site.parse(a), Site.parse(b))
    for a, b, msg in [
        ("resid_mid.1", "mlp_out.0", "on layer 0"),
        ("resid_mid.1", "resid_mid.1", "does not follow"),
        ("mlp_out.1", "resid_mid.1", "does not follow"),
        ("mlp_gate_pre.1", "mlp_up.1", "does not follow"),
    ]:
        with pytest.raises(GatescopeError, match=msg):
            check_transcoder_sites(Site.parse(a), Site.parse(b))
    model = load_model(tiny_hf("qwen3_next"), tokenizer=tiny_tokenizer())
    spec = SAETrainSpec(arch="transcoder", width=32, k=4, tokens=512, batch_size=256)
    with pytest.raises(GatescopeError, match="does not follow"):
        train_from_model(model, "resid_post.1", spec, tmp_path / "x", ["w1 w2"], progress=False)
    with pytest.raises(GatescopeError, match="--out-site .* is for --arch transcoder"):
        train_from_model(
            model, "resid_post.1", SAETrainSpec(width=32, k=4, tokens=512, batch_size=256),
            tmp_path / "y", ["w1 w2"], out_site="mlp_out.1", progress=False,
        )  # fmt: skip
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_paired_stores_must_hold_the_same_tokens(tmp_path):
    from probe.sae import train_from_store
    from probe.store import harvest

    model = load_model(tiny_hf("qwen3_next"), tokenizer=tiny_tokenizer())
    texts = prompts(60, length=12, seed=2)
    a = harvest(model, "resid_mid.1", texts, 300, tmp_path / "a", shard_tokens=100, progress=False)
    b = harvest(model, "mlp_out.1", texts, 300, tmp_path / "b", shard_tokens=150, progress=False)
    spec = SAETrainSpec(arch="transcoder", width=32, k=4, tokens=512, batch_size=50)
    with pytest.raises(GatescopeError, match="differ in shards"):
        train_from_store(a, spec, tmp_path / "tc", progress=False, out_store=b)
    with pytest.raises(GatescopeError, match="needs --out-store"):
        train_from_store(a, spec, tmp_path / "tc", progress=False)
    c = harvest(model, "mlp_out.1", texts, 300, tmp_path / "c", shard_tokens=100, progress=False)
    out = train_from_store(a, spec, tmp_path / "tc", progress=False, out_store=c)
    # the pairs are aligned: the store rows are the same tokens' input and output
    from probe.sae.data import paired_store_provider
    from probe.store import ActivationStore

    batch = next(paired_store_provider(ActivationStore(a), ActivationStore(c), 50, seed=0))
    x, y = batch[:, :D], batch[:, D:]
    layer = model.hf.model.layers[1]
    with torch.no_grad():
        mlp = layer.mlp(layer.post_attention_layernorm(x[:, None]))[:, 0]
    assert torch.allclose(mlp, y, atol=1e-5)
    assert load_trained(out).meta["out_store"] == str(c)


@pytest.mark.slow  # trains on 800 batches of the model's own activations: about a minute
def test_transcoder_trained_on_a_sparse_map_mlp_replaces_it(tmp_path):
    """Trained from paired stores of resid_mid.1 and mlp_out.1 of a model whose MLP is a
    sparse map, the transcoder spliced in place of the MLP recovers the model's loss."""
    from probe.sae import train_from_store
    from probe.store import harvest

    model = sparse_map_model()
    texts = prompts(400, length=16, seed=3)
    a = harvest(model, "resid_mid.1", texts, 3000, tmp_path / "in", progress=False)
    b = harvest(model, "mlp_out.1", texts, 3000, tmp_path / "out", progress=False)
    spec = SAETrainSpec(
        arch="transcoder", width=64, k=K, tokens=512 * 800, batch_size=512, lr=3e-3,
        checkpoint_every=0,
    )  # fmt: skip
    out = train_from_store(a, spec, tmp_path / "tc", progress=False, out_store=b)
    ev = evaluate_sae(model, load_trained(out), prompts(40, length=16, seed=9))
    print(f"held out: explained variance {ev.explained_variance:.3f}, CE-loss score "
          f"{ev.ce_loss_score:.3f}, L0 {ev.l0:.1f}")  # fmt: skip
    assert ev.explained_variance > 0.8 and ev.ce_loss_score > 0.95 and ev.l0 <= K
