import json

import pytest
import torch
from tiny import prompts, tiny_hf, tiny_tokenizer

from probe import GatescopeError, load_model
from probe.sae import (
    SAETrainSpec,
    evaluate_sae,
    latent_direction,
    load_trained,
    top_contexts,
    train_from_model,
    train_from_store,
    train_sae,
)
from probe.store import harvest

TEXTS = prompts(150, length=16, seed=3)


@pytest.fixture(scope="module")
def model():
    m = load_model(tiny_hf("qwen3_next"), tokenizer=tiny_tokenizer())
    m.name = "tiny"
    return m


@pytest.fixture(scope="module")
def store(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("store") / "gate"
    return harvest(model, "attn_gate.1", TEXTS, 1000, out, shard_tokens=300, progress=False)


def small(arch="topk", **kw):
    base = dict(arch=arch, width=32, k=4, tokens=256 * 12, batch_size=256, checkpoint_every=0)
    base.update(kw)
    return SAETrainSpec(**base)


@pytest.fixture(scope="module")
def trained_dirs(store, tmp_path_factory):
    root = tmp_path_factory.mktemp("saes")
    return {
        a: train_from_store(store, small(a), root / a, progress=False) for a in ("topk", "vsae")
    }


def test_saved_sae_loads_with_saelens(trained_dirs):
    from sae_lens import SAE, TopKSAE

    sae = SAE.load_from_disk(trained_dirs["topk"])  # SAELens's own loader
    assert isinstance(sae, TopKSAE) and sae.cfg.d_sae == 32 and sae.cfg.d_in == 4 * 16
    assert sae.cfg.metadata.hook_name == "attn_gate.1" and sae.cfg.metadata.model_name == "tiny"
    v = SAE.load_from_disk(trained_dirs["vsae"])
    assert v.cfg.architecture() == "vsae" and hasattr(v, "W_logvar")
    meta = json.loads((trained_dirs["vsae"] / "gatescope.json").read_text())
    assert meta["site_shape"] == [4, 16] and meta["architecture"] == "vsae"


def test_vsae_eval_is_deterministic_and_training_samples(trained_dirs):
    from probe.sae.vsae import VSAETrainingSAE, VSAETrainingSAEConfig

    sae = load_trained(trained_dirs["vsae"]).sae
    x = torch.rand(50, 64)
    a, b = sae.encode(x), sae.encode(x)
    assert torch.equal(a, b) and ((a != 0).sum(-1) <= 4).all()
    for reading, samples in (("paper", True), ("code", False)):
        cfg = VSAETrainingSAEConfig(d_in=64, d_sae=32, k=4, reading=reading)
        tsae = VSAETrainingSAE(cfg)
        with torch.no_grad():
            tsae.b_logvar.fill_(1.0)
        tsae.eval()
        assert torch.equal(tsae.encode(x), tsae.encode(x))
        tsae.train()
        assert torch.equal(tsae.encode(x), tsae.encode(x)) != samples, reading
    with pytest.raises(GatescopeError, match="reading 'text'"):
        VSAETrainingSAEConfig(d_in=4, d_sae=8, k=2, reading="text")


def test_vsae_code_reading_has_no_auxk_and_paper_reading_has():
    from probe.sae.train import sae_config

    code = sae_config(small("vsae"), 64, "m", "resid_post.0")
    paper = sae_config(small("vsae", vsae_reading="paper"), 64, "m", "resid_post.0")
    assert code.reading == "code" and code.aux_loss_coefficient == 0.0
    assert paper.reading == "paper" and paper.aux_loss_coefficient == 1 / 32


def test_vsae_kl_warms_up_over_a_tenth_of_the_steps():
    from probe.sae.train import sae_config

    cfg = sae_config(small("vsae", tokens=256 * 100), 64, "m", "resid_post.0")
    assert cfg.kl_warm_up_steps == 10 and cfg.beta == 1.0 and cfg.aux_loss_coefficient == 0.0


def _dictionary_batches(dictionary: torch.Tensor, batch: int, active: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    n = len(dictionary)
    while True:
        idx = torch.rand(batch, n, generator=g).topk(active, dim=-1).indices  # (B, active)
        coef = torch.zeros(batch, n).scatter(-1, idx, 1 + torch.rand(batch, active, generator=g))
        yield coef @ dictionary  # (B, d)


def test_topk_recovers_a_sparse_dictionary(tmp_path):
    torch.manual_seed(0)
    d, n = 32, 48
    dictionary = torch.nn.functional.normalize(torch.randn(n, d), dim=-1)
    spec = small(width=96, k=3, tokens=512 * 500, batch_size=512, lr=3e-3)
    source = {"model": "synthetic", "site": "resid_post.0", "site_shape": [d]}

    def provider(skip):
        return _dictionary_batches(dictionary, 512, 3, seed=1)

    out = train_sae(spec, provider, d, tmp_path / "syn", source, progress=False)
    sae = load_trained(out).sae
    dec = torch.nn.functional.normalize(sae.W_dec.detach(), dim=-1)
    best = (dictionary @ dec.T).max(dim=1).values  # (n,)
    assert (best >= 0.9).float().mean() >= 0.8, best


def _synthetic(tmp_path, name, n=48, d=32, steps=400, **kw):
    torch.manual_seed(0)
    dictionary = torch.nn.functional.normalize(torch.randn(n, d), dim=-1)
    spec = small(width=96, k=3, tokens=512 * steps, batch_size=512, lr=3e-3, **kw)
    source = {"model": "synthetic", "site": "resid_post.0", "site_shape": [d]}
    out = train_sae(
        spec,
        lambda skip: _dictionary_batches(dictionary, 512, 3, seed=1),
        d,
        tmp_path / name,
        source,
        progress=False,
    )
    sae = load_trained(out).sae
    dec = torch.nn.functional.normalize(sae.W_dec.detach(), dim=-1)
    best = (dictionary @ dec.T).max(dim=1).values  # (n,) best cosine per true direction
    return best, json.loads((out / "gatescope.json").read_text())


@pytest.mark.slow
def test_vsae_readings_on_a_known_sparse_dictionary(tmp_path):
    best, meta = _synthetic(tmp_path, "code", steps=1000, arch="vsae", vsae_reading="code")
    assert (best >= 0.9).float().mean() >= 0.7, best  # 0.75 measured (no AuxK in this reading)
    assert meta["training"]["noise_fraction"] == 0.0 and not any(
        "collapse" in w for w in meta["warnings"]
    )
    assert meta["training"]["train_explained_variance"] > 0.7
    _, meta = _synthetic(tmp_path, "paper", arch="vsae", vsae_reading="paper", learn_variance=False)
    t = meta["training"]
    assert t["mean_sigma"] == pytest.approx(1.0)
    assert t["noise_fraction"] > 0.25 and t["mean_abs_mu"] < t["mean_sigma"], t
    assert any("posterior collapse" in w for w in meta["warnings"]), meta["warnings"]
    assert t["collapse_detected_at_step"] < 400  # warned during training, not only at the end


def test_collapse_is_reported_while_training(tmp_path, capsys):
    """The paper reading with sigma fixed at 1: the running diagnostics reach the callback
    (and the progress bar) every few steps, and collapse is warned about during training,
    at the first check after the KL warm-up, not only at the end."""
    torch.manual_seed(0)
    d, n, steps = 32, 48, 110
    dictionary = torch.nn.functional.normalize(torch.randn(n, d), dim=-1)
    spec = small(
        "vsae", width=48, k=3, tokens=128 * steps, batch_size=128, lr=3e-3,
        vsae_reading="paper", learn_variance=False,
    )  # fmt: skip
    source = {"model": "synthetic", "site": "resid_post.0", "site_shape": [d]}
    seen = []
    out = train_sae(
        spec, lambda skip: _dictionary_batches(dictionary, 128, 3, seed=1), d,
        tmp_path / "v", source, progress=False, callback=seen.append,
    )  # fmt: skip
    meta = json.loads((out / "gatescope.json").read_text())
    assert meta["training"]["collapse_detected_at_step"] == 50  # first check: WINDOW steps
    err = capsys.readouterr().err
    assert "warning at step 50 of 110: vSAE posterior collapse" in err
    assert [i["step"] for i in seen] == list(range(1, steps + 1))
    last = seen[-1]
    assert last["mean_sigma"] == pytest.approx(1.0) and last["noise_fraction"] > 0.25
    from probe.sae.train import _describe

    assert "noise" in _describe(last) and "|mu|" in _describe(last)


def test_default_spec_follows_the_data():
    from probe.sae.train import default_spec

    s = default_spec(128, 300_000)
    assert (s.width, s.k, s.tokens) == (1024, 32, 1_024_000)  # 1000 steps of 1024 tokens
    assert default_spec(384, 10_000_000).tokens == 4_000_000
    small_data = default_spec(16, 1000, batch_size=64)
    assert small_data.width == 128 and small_data.k == 8 and small_data.tokens == 64_000
    assert default_spec(128, 1, width=64).k == 16  # k stays below width / 4
    explicit = default_spec(128, 1, width=256, k=5, tokens=9000)
    assert (explicit.width, explicit.k, explicit.tokens) == (256, 5, 9000)


def test_low_explained_variance_is_warned(store, tmp_path, capsys):
    from probe.store import ActivationStore

    spec = small(width=8, k=1, tokens=256 * 4, lr=1e-6)
    out = train_sae(spec, _plain(ActivationStore(store)), 64, tmp_path / "w", _SRC, progress=False)
    meta = json.loads((out / "gatescope.json").read_text())
    assert meta["training"]["train_explained_variance"] < 0.5
    assert "explained variance" in meta["warnings"][0]
    assert "warning: training explained variance" in capsys.readouterr().err


_SRC = {"model": "tiny", "site": "attn_gate.1", "site_shape": [4, 16]}


def test_killed_run_resumes_exactly(store, tmp_path, capsys):
    """A crash (no checkpoint written at the crash) after the step-6 checkpoint: the rerun
    resumes from step 6, redoes the lost steps and ends equal to an uninterrupted run; the
    vSAE paper reading draws noise, so the RNG state must be restored too."""
    from probe.sae.data import store_provider
    from probe.store import ActivationStore

    st = ActivationStore(store)
    spec = small("vsae", vsae_reading="paper", tokens=256 * 12, checkpoint_every=3)

    def killed(skip):
        for i, b in enumerate(store_provider(st, 256, seed=0, skip=skip)):
            if skip == 0 and i == 8:
                raise SystemExit("killed")  # not KeyboardInterrupt: nothing saved now
            yield b

    with pytest.raises(SystemExit):
        train_sae(spec, killed, 64, tmp_path / "a", _SRC, progress=False)
    state = json.loads((tmp_path / "a/checkpoint/trainer_state.json").read_text())
    assert state["counters"]["n_training_steps"] == 6
    train_sae(spec, killed, 64, tmp_path / "a", _SRC, resume=True, progress=False)
    assert "resuming" in (err := capsys.readouterr().err) and "at step 6 of 12" in err, err
    whole = train_sae(spec, _plain(st), 64, tmp_path / "b", _SRC, progress=False)
    a = load_trained(tmp_path / "a").sae.state_dict()
    b = load_trained(whole).sae.state_dict()
    worst = max(float((a[n] - b[n]).abs().max()) for n in a)
    print(f"resumed vs uninterrupted: max |weight difference| {worst:.3g}")
    assert worst <= 1e-6, worst
    assert not (tmp_path / "a/checkpoint").exists()  # removed once the run is complete


def test_resume_refuses_other_settings(store, tmp_path):
    from probe.store import ActivationStore

    st = ActivationStore(store)
    spec = small(tokens=256 * 10, checkpoint_every=2)

    def crash(skip):
        for i, b in enumerate(_plain(st)(skip)):
            if i == 3:
                raise KeyboardInterrupt
            yield b

    with pytest.raises(KeyboardInterrupt):
        train_sae(spec, crash, 64, tmp_path / "a", _SRC, progress=False)
    with pytest.raises(GatescopeError, match="other settings.*width"):
        train_sae(small(width=16, tokens=256 * 10), crash, 64, tmp_path / "a", _SRC, resume=True)


def test_resume_after_an_interruption(store, tmp_path):
    from probe.sae.data import store_provider
    from probe.store import ActivationStore

    st = ActivationStore(store)
    source = {"model": "tiny", "site": "attn_gate.1", "site_shape": [4, 16]}
    spec = small(tokens=256 * 10, checkpoint_every=3)

    def crashing(skip):
        for i, b in enumerate(store_provider(st, 256, seed=0, skip=skip)):
            if skip == 0 and i == 7:
                raise KeyboardInterrupt
            yield b

    with pytest.raises(KeyboardInterrupt):
        train_sae(spec, crashing, 64, tmp_path / "a", source, progress=False)
    state = json.loads((tmp_path / "a/checkpoint/trainer_state.json").read_text())
    assert state["counters"]["n_training_steps"] == 7  # batches 0-6 trained, then the crash
    with pytest.raises(GatescopeError, match="--resume"):
        train_sae(spec, crashing, 64, tmp_path / "a", source, progress=False)
    train_sae(spec, crashing, 64, tmp_path / "a", source, resume=True, progress=False)
    whole = train_sae(spec, _plain(st), 64, tmp_path / "b", source, progress=False)
    a = load_trained(tmp_path / "a").sae.W_dec
    b = load_trained(whole).sae.W_dec
    assert torch.allclose(a, b, atol=1e-5)


def _plain(st):
    from probe.sae.data import store_provider

    return lambda skip: store_provider(st, 256, seed=0, skip=skip)


def test_bad_specs(store, tmp_path):
    for kw, msg in [
        (dict(k=32), "smaller than --width"),
        (dict(width=0), "--width 0"),
        (dict(k=0), "--k 0"),
        (dict(arch="nope"), "valid: .*topk.*vsae"),
        (dict(tokens=10), "less than one batch"),
    ]:
        with pytest.raises(GatescopeError, match=msg):
            train_from_store(store, small(**kw), tmp_path / "x", progress=False)


def test_evaluate_invariants(model, trained_dirs):
    tr = load_trained(trained_dirs["topk"])
    ev = evaluate_sae(model, tr, TEXTS[:20])
    assert ev.tokens == int(model.tokenize(TEXTS[:20]).lengths.sum())
    assert ev.l0 <= 4 + 1e-9 and abs(sum(ev.feature_frequency) - ev.l0) < 1e-6
    assert abs(ev.dead_fraction + ev.live_fraction - 1) < 1e-9
    assert ev.ce_ablate != ev.ce_orig and ev.ce_loss_score == pytest.approx(
        (ev.ce_ablate - ev.ce_sae) / (ev.ce_ablate - ev.ce_orig)
    )
    assert ev.explained_variance <= 1.0 and json.loads(ev.to_json())["site"] == "attn_gate.1"


def test_features_and_direction(model, trained_dirs):
    tr = load_trained(trained_dirs["topk"])
    ev = evaluate_sae(model, tr, TEXTS[:20])
    rep = top_contexts(model, tr, TEXTS[:20], top=3, window=2)
    assert len(rep.features) == 32 and rep.tokens == ev.tokens
    for f in rep.features:
        assert f.firing_rate == pytest.approx(ev.feature_frequency[f.latent])
        acts = [c.activation for c in f.contexts]
        assert acts == sorted(acts, reverse=True) and len(acts) <= 3
        assert f.max_activation == pytest.approx(acts[0] if acts else 0.0)
        for c in f.contexts:
            assert c.acts[c.center] == pytest.approx(c.activation, abs=1e-4)
    d = latent_direction(tr, 5)
    assert d.direction.shape == (4, 16) and d.direction.norm() == pytest.approx(1.0)
    assert d.provenance["latent"] == 5 and d.site == "attn_gate.1"
    steering = pytest.importorskip("interventions.steering")
    vec = steering.SteeringVector(**d.steering_kwargs())
    assert str(vec.site) == "attn_gate.1"
    with pytest.raises(GatescopeError, match="latents 0..31"):
        latent_direction(tr, 32)


def test_d_in_mismatch_and_nan(model, trained_dirs, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(trained_dirs["topk"], bad)
    meta = json.loads((bad / "gatescope.json").read_text())
    meta["site"] = "mlp_gate.1"  # 128 wide, the SAE reads 64
    (bad / "gatescope.json").write_text(json.dumps(meta))
    with pytest.raises(GatescopeError, match="d_in 64.*128 wide"):
        evaluate_sae(model, load_trained(bad), TEXTS[:4])
    broken = load_model(tiny_hf("qwen3_next"), tokenizer=tiny_tokenizer())
    with torch.no_grad():
        broken.hf.model.layers[1].input_layernorm.weight.fill_(float("nan"))
    with pytest.raises(GatescopeError, match="NaN activations at attn_gate.1 in texts 0-3"):
        harvest(broken, "attn_gate.1", TEXTS, 100, tmp_path / "nan", batch_size=4, progress=False)


def test_train_straight_from_the_model(model, tmp_path):
    out = train_from_model(model, "resid_post.0", small(), tmp_path / "m", TEXTS, progress=False)
    tr = load_trained(out)
    assert tr.site_shape == [64] and tr.meta["model"] == "tiny" and "store" not in tr.meta


def _one_step(sae, x, dead):
    from sae_lens.saes.sae import TrainStepInput

    sae.train()
    sae.zero_grad()
    out = sae.training_forward_pass(
        TrainStepInput(
            sae_in=x,
            dead_neuron_mask=dead,
            coefficients={},
            n_training_steps=0,
            is_logging_step=False,
        )  # fmt: skip
    )
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in sae.named_parameters()}
    return out, grads


@pytest.mark.parametrize("rescale", [True, False])
@pytest.mark.parametrize("b_dec_in", [True, False])
@pytest.mark.parametrize("n_dead", [0, 5, 300])
def test_sparse_topk_step_equals_saelens_dense_step(rescale, b_dec_in, n_dead):
    """The sparse training pass gives SAELens's loss, gradients and activations."""
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    from probe.sae.sparse_topk import SparseTopKTrainingSAE

    torch.manual_seed(0)
    cfg = TopKTrainingSAEConfig(
        d_in=32, d_sae=512, k=8, aux_loss_coefficient=1 / 32,
        rescale_acts_by_decoder_norm=rescale, apply_b_dec_to_input=b_dec_in,
    )  # fmt: skip
    dense, sparse = TopKTrainingSAE(cfg), SparseTopKTrainingSAE(cfg)
    with torch.no_grad():
        dense.b_dec.normal_()
        dense.W_dec.mul_(torch.rand(512, 1) + 0.5)  # decoder rows of unequal norms
    sparse.load_state_dict(dense.state_dict())
    x = torch.randn(64, 32) * 2
    dead = torch.zeros(512, dtype=torch.bool)
    dead[torch.randperm(512)[:n_dead]] = True
    for _ in range(2):  # the second step reuses the kept buffers
        a, ga = _one_step(dense, x, dead if n_dead else None)
        b, gb = _one_step(sparse, x, dead if n_dead else None)
        for name in a.losses:
            assert float(b.losses[name]) == pytest.approx(float(a.losses[name]), rel=1e-5)
        for name, g in ga.items():
            assert torch.allclose(gb[name], g, rtol=1e-4, atol=1e-5), name
        assert torch.allclose(b.feature_acts.to_dense(), a.feature_acts, atol=1e-6)
        assert torch.equal(b.feature_acts.to_dense().bool().sum(0).float(), sparse.last_fired)
        assert torch.allclose(b.sae_out, a.sae_out, atol=1e-5)


def test_two_stage_topk_is_exact():
    from probe.sae.sparse_topk import topk_indices

    g = torch.Generator().manual_seed(1)
    for rows, width, k in [(7, 512, 8), (5, 1024, 32), (3, 100, 7), (4, 64, 40)]:
        pre = torch.randn(rows, width, generator=g)
        want = pre.topk(k, dim=-1).indices.sort(-1).values
        assert torch.equal(topk_indices(pre, k).sort(-1).values, want), (rows, width, k)


def test_sparse_topk_training_matches_saelens_training(tmp_path):
    """A few steps through gatescope's trainer (sparse pass, counts from ``last_fired``) end
    with the weights and firing statistics of SAELens's dense pass in SAELens's trainer."""
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    from probe.sae.sparse_topk import SparseTopKTrainingSAE
    from probe.sae.train import _Trainer

    torch.manual_seed(0)
    cfg = TopKTrainingSAEConfig(d_in=16, d_sae=128, k=4, aux_loss_coefficient=1 / 32)
    dense, sparse, plain = TopKTrainingSAE(cfg), SparseTopKTrainingSAE(cfg), None
    sparse.load_state_dict(dense.state_dict())
    plain = SparseTopKTrainingSAE(cfg)  # the sparse SAE in SAELens's own trainer
    plain.load_state_dict(dense.state_dict())
    data = torch.randn(12, 64, 16, generator=torch.Generator().manual_seed(1))
    tcfg = SAETrainerConfig(
        total_training_samples=12 * 64, train_batch_size_samples=64, lr=1e-3, lr_end=1e-3,
        dead_feature_window=2, feature_sampling_window=100,
    )  # fmt: skip
    a = SAETrainer(tcfg, dense, iter(data))
    b = _Trainer(tcfg, sparse, iter(data), out=tmp_path, every=0)
    c = SAETrainer(tcfg, plain, iter(data))
    a.fit(), b.fit(), c.fit()
    assert a.dead_neurons.any()  # AuxK took part
    assert torch.equal(a.act_freq_scores, b.act_freq_scores)
    assert torch.equal(a.act_freq_scores, c.act_freq_scores)
    assert torch.equal(a.n_forward_passes_since_fired, b.n_forward_passes_since_fired)
    for (name, p), q in zip(dense.named_parameters(), sparse.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-5), name


def test_sparse_topk_falls_back_to_saelens_pass_and_still_counts():
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    from probe.sae.sparse_topk import SparseTopKTrainingSAE

    torch.manual_seed(0)
    cfg = TopKTrainingSAEConfig(d_in=16, d_sae=64, k=4)
    dense, sparse = TopKTrainingSAE(cfg), SparseTopKTrainingSAE(cfg)
    sparse.load_state_dict(dense.state_dict())
    sparse.hook_sae_acts_pre.add_hook(lambda act, hook: act)  # a hook: SAELens's own pass
    assert not sparse._fast_ok()
    x = torch.randn(32, 16)
    a, _ = _one_step(dense, x, None)
    b, _ = _one_step(sparse, x, None)
    assert torch.equal(a.feature_acts, b.feature_acts) and not b.feature_acts.is_sparse
    assert torch.equal(sparse.last_fired, (a.feature_acts != 0).sum(0).float())


def test_saebench_names_and_kl(model, trained_dirs):
    tr = load_trained(trained_dirs["topk"])
    ev = evaluate_sae(model, tr, TEXTS[:20])
    sb = ev.to_dict()["saebench"]
    assert sb["model_performance_preservation"]["ce_loss_score"] == ev.ce_loss_score
    assert sb["model_performance_preservation"]["ce_loss_without_sae"] == ev.ce_orig
    assert sb["reconstruction_quality"]["explained_variance"] == ev.explained_variance
    assert sb["sparsity"]["l0"] == ev.l0 and sb["misc_metrics"]["frac_alive"] == ev.live_fraction
    kl = sb["model_behavior_preservation"]
    assert kl["kl_div_with_ablation"] > kl["kl_div_with_sae"] >= 0
    assert kl["kl_div_score"] == pytest.approx(
        (kl["kl_div_with_ablation"] - kl["kl_div_with_sae"]) / kl["kl_div_with_ablation"]
    )
    hist = sb["feature_density_histogram"]
    assert sum(hist["counts"]) + hist["dead"] == 32
    assert -1 <= ev.cossim <= 1 and sb["shrinkage"]["l2_ratio"] == pytest.approx(
        ev.l2_norm_out / ev.l2_norm_in
    )
    # the KL of the zeroed site, recomputed with the model's own forward and a hook
    from probe.hooks import hook_sites

    batch = model.tokenize(list(TEXTS[:20]))
    torch.set_grad_enabled(False)
    clean = model.forward(batch.input_ids, batch.attention_mask)
    zero = [(tr.site, lambda v, info: torch.zeros_like(v))]
    with hook_sites(model, zero, write=True):
        zeroed = model.forward(batch.input_ids, batch.attention_mask)
    keep = batch.attention_mask.bool()
    p, q = clean[keep].log_softmax(-1), zeroed[keep].log_softmax(-1)
    ref = float((p.exp() * (p - q)).sum(-1).mean())
    torch.set_grad_enabled(True)
    assert ev.kl_ablate == pytest.approx(ref, rel=1e-4)


def test_sae_from_a_model_with_other_weights_is_refused(model, trained_dirs):
    other = load_model(tiny_hf("qwen3_next", seed=7), tokenizer=tiny_tokenizer())
    other.name = "tiny"  # same name and width, other weights
    tr = load_trained(trained_dirs["topk"])
    assert tr.meta["model_fingerprint"]
    with pytest.raises(GatescopeError, match="other weights.*--force"):
        evaluate_sae(other, tr, TEXTS[:4])
    evaluate_sae(other, tr, TEXTS[:4], force=True)
    from probe.store import ActivationStore

    st = ActivationStore(tr.meta["store"])
    with pytest.raises(GatescopeError, match="other weights"):
        st.check(other, "attn_gate.1")
    st.check(other, "attn_gate.1", force=True)
    with pytest.raises(GatescopeError, match="not mlp_gate.1"):
        st.check(model, "mlp_gate.1", force=True)


def test_latent_dashboard(model, tmp_path):
    from probe.sae import latent_dashboard

    spec = small(tokens=256 * 6, checkpoint_every=0)
    out = train_from_model(model, "resid_post.1", spec, tmp_path / "r", TEXTS, progress=False)
    tr = load_trained(out)
    ev = evaluate_sae(model, tr, TEXTS[:30], text_mode="lines")
    lat = max(range(32), key=lambda i: ev.feature_frequency[i])
    page = latent_dashboard(model, tr, TEXTS[:30], lat, top=5, window=3, quantiles=4)
    assert page.tokens == ev.tokens and page.firing_rate == pytest.approx(ev.feature_frequency[lat])
    keys = [(c.text_index, c.position) for c in page.top_contexts]
    assert len(keys) == len(set(keys)) and 0 < len(keys) <= 5
    for i, a in enumerate(page.top_contexts):  # no two from overlapping windows of one text
        for b in page.top_contexts[i + 1 :]:
            assert a.text_index != b.text_index or abs(a.position - b.position) > 2 * 3
    acts = [c.activation for c in page.top_contexts]
    assert acts == sorted(acts, reverse=True) and acts[0] == pytest.approx(page.max_activation)
    for c in page.top_contexts:
        assert c.acts[c.center] == pytest.approx(c.activation, abs=1e-4)
    fired = round(page.firing_rate * page.tokens)
    assert sum(page.histogram["counts"]) == pytest.approx(fired)
    assert sum(q["tokens"] for q in page.quantile_contexts) == fired
    for q in page.quantile_contexts:
        for c in q["contexts"]:
            assert q["low"] < c.activation <= q["high"] + 1e-6
    # through the final norm (Qwen3-Next: x / rms(x) * (1 + w)) and the unembedding
    w_u = model.hf.get_output_embeddings().weight.detach()
    gain = 1 + model.hf.model.norm.weight.detach()
    logits = w_u @ (gain * tr.sae.W_dec[lat].detach())
    assert page.top_logits[0][1] == pytest.approx(float(logits.max()), rel=1e-4)
    assert page.bottom_logits[0][1] == pytest.approx(float(logits.min()), rel=1e-4)
    assert tr.meta["spec"]["width"] == 32
    with pytest.raises(GatescopeError, match="--latent 99"):
        latent_dashboard(model, tr, TEXTS[:4], 99)


def test_checkpoints_by_wall_time(store, tmp_path):
    from probe.store import ActivationStore

    st = ActivationStore(store)
    spec = small(tokens=256 * 10, checkpoint_every=0, checkpoint_minutes=1e-9)  # every step

    def crash(skip):
        for i, b in enumerate(_plain(st)(skip)):
            if i == 5:
                raise SystemExit("killed")
            yield b

    with pytest.raises(SystemExit):
        train_sae(spec, crash, 64, tmp_path / "t", _SRC, progress=False)
    state = json.loads((tmp_path / "t/checkpoint/trainer_state.json").read_text())
    assert state["counters"]["n_training_steps"] == 5 and state["spec"]["checkpoint_minutes"]
