"""A byte-level BPE tokenizer trained on the reference corpus, saved in Hugging Face format.

Every task word (names, fact answers, sentiment words) must be a single token with its
leading space; :func:`check_single_tokens` refuses a tokenizer where one is not.

Training joins documents with the end-of-text token, so every document a model learns from
starts right after one. :func:`mark_document_start` makes the tokenizer put that token
before every prompt it encodes with special tokens (as a BOS token), so prompts look like
the documents the models were trained on; ``add_special_tokens=False`` leaves it out.
"""

from __future__ import annotations

from collections.abc import Iterable

from probe.errors import GatescopeError

EOS, PAD = "<|endoftext|>", "<|pad|>"


def train_tokenizer(documents: Iterable[str], vocab_size: int = 4096):
    """Train BPE on ``documents``; returns a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tok.train_from_iterator(documents, trainer=trainer)
    return mark_document_start(
        PreTrainedTokenizerFast(
            tokenizer_object=tok, eos_token=EOS, pad_token=PAD, bos_token=None, unk_token=None
        )
    )


def mark_document_start(tokenizer):
    """``tokenizer`` (changed in place, and returned) with the end-of-text token as its BOS:
    an encoding with special tokens starts with it, as every training document does."""
    from tokenizers import processors

    eos, eos_id = tokenizer.eos_token, tokenizer.eos_token_id
    if eos is None or eos_id is None:
        raise GatescopeError("the tokenizer has no end-of-text token to mark a document start")
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{eos} $A", pair=f"{eos} $A {eos} $B", special_tokens=[(eos, eos_id)]
    )
    tokenizer.bos_token = eos
    return tokenizer


def single_token_id(tokenizer, word: str) -> int:
    """The id of ``" " + word`` if it is one token; a clear error otherwise."""
    ids = tokenizer(" " + word.strip(), add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        pieces = tokenizer.convert_ids_to_tokens(ids)
        raise GatescopeError(
            f"answer ' {word.strip()}' is not a single token: it tokenizes as {pieces}; "
            "use a word that is one token for this model"
        )
    return ids[0]


def check_single_tokens(tokenizer, words: Iterable[str]) -> None:
    bad = []
    for word in words:
        try:
            single_token_id(tokenizer, word)
        except GatescopeError:
            bad.append(word)
    if bad:
        raise GatescopeError(f"these task words are not single tokens: {bad}")
