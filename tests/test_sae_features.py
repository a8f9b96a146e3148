"""Feature pages: tokens as text, decoder logits through the final norm, de-duplicated
contexts, the encoded corpus the app browses."""

import json

import pytest
import torch
from tiny import prompts, tiny_hf, tiny_tokenizer

from probe import load_model
from probe.sae import (
    corpus_dashboard,
    decoder_logits,
    encode_corpus,
    latent_dashboard,
    latent_stats,
    load_trained,
    token_strings,
)
from probe.sae.features import LatentContext, _Distinct, token_label


def byte_tokenizer():
    """A byte-level BPE tokenizer without merges: every UTF-8 byte is one token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def test_multibyte_characters_show_whole():
    tok = byte_tokenizer()
    text = "café ☕ naïve"
    ids = tok(text)["input_ids"]
    assert len(ids) == len(text.encode("utf-8"))  # one token per byte
    assert "\ufffd" in "".join(tok.decode([i]) for i in ids)  # token by token: broken
    words = token_strings(tok, ids)
    assert len(words) == len(ids) and "\ufffd" not in "".join(words)
    assert "".join(words) == text
    assert "é" in words and "☕" in words and "ï" in words  # each whole, on one token
    e = text.encode("utf-8").index("é".encode())  # its first byte alone:
    assert token_label(tok, ids[e]) == "<0xC3>" and token_label(tok, ids[0]) == "c"


def _sae_dir(tmp_path, model, site="resid_post.1", bias=None, seed=0):
    """A TopK SAE (SAELens's class) with random weights at ``site`` of ``model``."""
    from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig

    torch.manual_seed(seed)
    sae = TopKSAE(TopKSAEConfig(d_in=64, d_sae=16, k=2))
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_(0, 0.3)
        if bias is not None:
            sae.W_enc.zero_()
            sae.b_enc.copy_(bias)
    path = tmp_path / f"sae{seed}"
    sae.save_model(path)
    (path / "gatescope.json").write_text(json.dumps({"site": site, "model": model.name}))
    return load_trained(path)


def test_decoder_logits_go_through_the_final_norm(tmp_path):
    model = load_model(tiny_hf("qwen3_next"), tokenizer=tiny_tokenizer())
    norm = model.hf.model.norm
    with torch.no_grad():
        norm.weight.copy_(torch.randn(64, generator=torch.Generator().manual_seed(4)))
    tr = _sae_dir(tmp_path, model)
    w_u = model.hf.lm_head.weight.detach()
    for latent in range(4):
        d = tr.sae.W_dec[latent].detach()
        top, bottom = decoder_logits(model, tr, latent, n=5)
        # Qwen3-Next's final RMSNorm: x / rms(x) * (1 + w); the per-dim gain applied to d
        want = w_u @ ((1 + norm.weight.detach()) * d)
        assert [v for _, v in top] == pytest.approx(want.topk(5).values.tolist(), rel=1e-4)
        assert [v for _, v in bottom] == pytest.approx(
            (-want).topk(5).values.neg().tolist(), rel=1e-4
        )
        # the model's own path: a residual state along d, through its norm and lm_head
        h = (d / d.pow(2).mean().sqrt())[None, None]  # unit RMS
        with torch.no_grad():
            own = model.hf.lm_head(norm(h))[0, 0] * d.pow(2).mean().sqrt()
        assert [v for _, v in top] == pytest.approx(own.topk(5).values.tolist(), rel=1e-3)
        assert [t for t, _ in top] == [model.tokenizer.decode([i]) for i in own.topk(5).indices]
    # ignoring the gain would rank other tokens first
    plain = [(w_u @ tr.sae.W_dec[i].detach()).topk(5).indices.tolist() for i in range(4)]
    ours = [
        [model.tokenizer.convert_tokens_to_ids(t) for t, _ in decoder_logits(model, tr, i, 5)[0]]
        for i in range(4)
    ]
    assert plain != ours


def test_distinct_contexts_drop_overlaps_and_repeated_text():
    keep = _Distinct(window=2)

    def ctx(text, pos, words, center=2):
        return LatentContext(text, pos, 1.0, words, [0.0] * len(words), center)

    assert keep.add(ctx(0, 10, ["a", " b", " c", " d", " e"]))
    assert not keep.add(ctx(0, 13, ["x", " y", " z", " u", " v"]))  # same text, overlapping
    assert keep.add(ctx(0, 15, ["x", " y", " z", " u", " v"]))  # same text, 5 apart
    assert not keep.add(ctx(7, 3, ["a", " b", " c", " d", " e"]))  # the same words elsewhere
    assert not keep.add(ctx(8, 3, ["a", "  b", " c", " d", " e "]))  # whitespace aside
    assert keep.add(ctx(9, 3, ["a", " b", " q", " d", " e"]))


def test_top_contexts_of_repeated_documents_show_each_sentence_once(tmp_path):
    """A latent firing at every token (activation 5) over documents that repeat the same
    sentences: the top contexts never repeat a sentence or overlap in one document."""
    model = load_model(tiny_hf("qwen3_next"), tokenizer=tiny_tokenizer())
    model.name = "tiny"
    bias = torch.full((16,), -100.0)
    bias[3] = 5.0
    tr = _sae_dir(tmp_path, model, bias=bias)
    sentences = prompts(4, length=12, seed=1)
    texts = [s for s in sentences for _ in range(3)]  # each sentence in three documents
    page = latent_dashboard(model, tr, texts, 3, top=10, window=2)
    assert page.firing_rate == 1.0 and page.max_activation > 0
    cores = ["".join(c.tokens) for c in page.top_contexts]
    assert len(page.top_contexts) >= 4 and len(set(cores)) == len(cores)
    for i, a in enumerate(page.top_contexts):
        for b in page.top_contexts[i + 1 :]:
            same_text = texts[a.text_index] == texts[b.text_index]
            assert not (same_text and abs(a.position - b.position) <= 4), (a, b)


def test_corpus_gives_the_same_pages_and_stats(tmp_path):
    model = load_model(tiny_hf("qwen3_next"), tokenizer=tiny_tokenizer())
    model.name = "tiny"
    tr = _sae_dir(tmp_path, model)
    texts = prompts(30, length=10, seed=2)
    calls = []
    corpus = encode_corpus(model, tr, texts, batch_size=8, callback=lambda d, t: calls.append(d))
    assert calls == [8, 16, 24, 30]
    stats = latent_stats(model, tr, texts)
    assert corpus.stats() == stats
    acts = tr.encode(torch.cat([_site(model, t) for t in texts]))  # (n_tok, 16)
    assert corpus.tokens == len(acts)
    for lat in (0, 5):
        assert torch.allclose(corpus.column(lat), acts[:, lat].float(), atol=1e-5)
    a = corpus_dashboard(model, tr, corpus, 5, top=4, window=2)
    b = latent_dashboard(model, tr, texts, 5, top=4, window=2)
    assert a.to_dict() == b.to_dict()


def _site(model, text):
    from probe.sites import Site
    from probe.store import capture_tokens

    return capture_tokens(model, Site("resid_post", 1), [text])
