"""Write the evaluation and concept data of the reference models to ``data/tasks/``.

Everything comes from held-out templates and phrasings (``probe.reference.corpus``) with a
random generator seeded apart from the training corpus, so no test prompt is seen verbatim in
training. Pairs are kept only when clean and corrupt prompts tokenize to equal lengths.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from probe.reference import vocab as V
from probe.reference.corpus import (
    FACTS,
    IOI_TEST,
    SENTIMENT_TEST,
    TOPIC_TRAIN,
    V1_POOL,
    induction_vocabulary,
    ioi_prompt,
    joined_by_and,
    prose_paragraphs,
)


def _n_tokens(tok, text: str) -> int:
    return len(tok(text, add_special_tokens=False)["input_ids"])


def ioi_rows(rng: random.Random, tok, n: int) -> list[dict]:
    """Held-out IOI pairs; corrupt = the subject's second mention replaced by the IO name."""
    rows = []
    while len(rows) < n:
        template = IOI_TEST[len(rows) % len(IOI_TEST)]
        abba = len(rows) % 2 == 0
        clean, io, s = ioi_prompt(rng, template, abba)
        head, _, tail = clean.rpartition(f" {s} ")
        corrupt = f"{head} {io} {tail}"
        rows.append(
            {
                "clean": clean,
                "corrupt": corrupt,
                "answer": f" {io}",
                "wrong": f" {s}",
                "template": template,
                "order": "ABBA" if abba else "BABA",
                "joined_by_and": joined_by_and(template),
            }
        )
    return rows


def heldout_single_tokens(tok) -> list[str]:
    """The held-out induction words that are one token and occur in no induction document
    of either corpus version (the twins' first stages used version 1's word pool)."""
    _, held = induction_vocabulary()
    return [w for w in held if w not in set(V1_POOL) and _n_tokens(tok, " " + w) == 1]


def induction_rows(rng: random.Random, tok, n: int) -> list[dict]:
    """Repeated random sequences of held-out words (never used in an induction training
    document, each one token): clean ends one word before the sequence completes."""
    pool = heldout_single_tokens(tok)
    rows = []
    while len(rows) < n:
        words = rng.sample(pool, rng.randint(8, 14))
        other = rng.sample(pool, len(words))
        clean = " ".join(words + words[:-1])
        corrupt = " ".join(other + words[:-1])
        wrong = rng.choice([w for w in pool if w not in words])
        if _n_tokens(tok, clean) == _n_tokens(tok, corrupt) == 2 * len(words) - 1:
            rows.append(
                {
                    "clean": clean,
                    "corrupt": corrupt,
                    "answer": f" {words[-1]}",
                    "wrong": f" {wrong}",
                    "half": len(words),
                }
            )
    return rows


def fact_rows(tok) -> list[dict]:
    """Every fact in its held-out phrasing; corrupt = another fact of the same relation."""
    rows = []
    for relation, (table, _, test) in FACTS.items():
        keys = list(table)
        for i, key in enumerate(keys):
            clean = test.format(k=key)
            for other in keys[i + 1 :] + keys[:i]:
                corrupt = test.format(k=other)
                if table[other] != table[key] and _n_tokens(tok, clean) == _n_tokens(tok, corrupt):
                    rows.append(
                        {
                            "clean": clean,
                            "corrupt": corrupt,
                            "answer": f" {table[key]}",
                            "wrong": f" {table[other]}",
                            "relation": relation,
                        }
                    )
                    break
    return rows


def sentiment_rows(rng: random.Random) -> tuple[list[dict], list[dict]]:
    """Contrast pairs (same sentence, positive vs negative word) and held-out prompts."""
    pairs = []
    for _ in range(60):
        noun = rng.choice(V.REVIEW_NOUNS)
        pos, neg = rng.choice(V.POSITIVE), rng.choice(V.NEGATIVE)
        pairs.append({"positive": f"The {noun} was {pos}", "negative": f"The {noun} was {neg}"})
    prompts = [{"text": t.format(n=n)} for t in SENTIMENT_TEST for n in V.REVIEW_NOUNS]
    return pairs, prompts


def concept_sets(rng: random.Random) -> dict[str, list[dict]]:
    """Topic and sentiment concept sets, random sets, probe labels.

    Sentiment sentences end at the sentiment word (so last-token CAVs read it). A random set
    mixes held-out prose sentences, topic sentences and sentiment sentences of either
    polarity, so a concept CAV must separate the concept, not merely the sentence form.
    """
    sets: dict[str, list[dict]] = {}
    for topic, words in V.TOPICS.items():
        sets[f"concept_{topic}"] = [
            {"text": rng.choice(TOPIC_TRAIN).format(a=a, b=b)}
            for a, b in (rng.sample(words, 2) for _ in range(50))
        ]
    for name, adjs in (("positive", V.POSITIVE), ("negative", V.NEGATIVE)):
        sets[f"concept_{name}"] = [
            {"text": f"The {rng.choice(V.REVIEW_NOUNS)} was {rng.choice(adjs)}"} for _ in range(50)
        ]
    _, held = prose_paragraphs()
    sentences = [s.strip() + "." for p in held for s in p.split(". ") if 20 < len(s) < 160]
    topic_words = [w for words in V.TOPICS.values() for w in words]
    for i in range(12):
        prose = [{"text": s} for s in rng.sample(sentences, 20)]
        topics = [
            {"text": rng.choice(TOPIC_TRAIN).format(a=a, b=b)}
            for a, b in (rng.sample(topic_words, 2) for _ in range(15))
        ]
        moods = [
            {"text": f"The {rng.choice(V.REVIEW_NOUNS)} was {rng.choice(V.POSITIVE + V.NEGATIVE)}"}
            for _ in range(15)
        ]
        mixed = prose + topics + moods
        rng.shuffle(mixed)
        sets[f"random_{i}"] = mixed
    # probe sentences end with a full stop: the sentiment must be carried past its word
    labels = [
        {"text": f"The {rng.choice(V.REVIEW_NOUNS)} was {rng.choice(adjs)}.", "label": y}
        for y, adjs in ((1, V.POSITIVE), (0, V.NEGATIVE))
        for _ in range(50)
    ]
    rng.shuffle(labels)
    sets["probe_sentiment"] = labels
    return sets


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    os.replace(tmp, path)


def _first_version_draws(rng: random.Random, tok) -> None:
    """Advance ``rng`` past the draws of the first version's 200 IOI and 200 induction rows
    (4 templates; the ~200-word pool), so the sentiment and concept files keep their rows."""
    for i in range(200):
        ioi_prompt(rng, IOI_TEST[i % 4], i % 2 == 0)
    kept = 0
    while kept < 200:
        n = rng.randint(8, 14)
        words = [rng.choice(V1_POOL) for _ in range(n)]
        other = [rng.choice(V1_POOL) for _ in range(n)]
        rng.choice([w for w in V.FILLER if w not in words])
        clean, corrupt = " ".join(words + words[:-1]), " ".join(other + words[:-1])
        kept += _n_tokens(tok, clean) == _n_tokens(tok, corrupt) == 2 * n - 1


def write_task_data(out: Path, tokenizer, seed: int = 0) -> dict[str, int]:
    """Write every task and concept file to ``out``; returns rows per file."""
    # generators apart from the training corpus's
    files = {
        "ioi": ioi_rows(random.Random(seed + 7920), tokenizer, 300),
        "induction": induction_rows(random.Random(seed + 7921), tokenizer, 200),
        "facts": fact_rows(tokenizer),
    }
    rng = random.Random(seed + 7919)
    _first_version_draws(rng, tokenizer)
    out.mkdir(parents=True, exist_ok=True)
    files["sentiment_pairs"], files["sentiment_prompts"] = sentiment_rows(rng)
    files.update(concept_sets(rng))
    for name, rows in files.items():
        _write_jsonl(out / f"{name}.jsonl", rows)
    words = {"positive": V.POSITIVE, "negative": V.NEGATIVE}
    (out / "sentiment_words.json").write_text(json.dumps(words, indent=2) + "\n")
    return {name: len(rows) for name, rows in files.items()}
