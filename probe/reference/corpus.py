"""The reference corpus: a deterministic mixture of task text and ordinary English prose.

1. Indirect object identification (IOI) from 18 training templates, both name orders
   ("When Mary and John went to the store, John gave a drink to Mary.").
2. Induction: a random word sequence, the same sequence again, then a random-length start
   of a third copy, so that the end of the document is never predictable inside the first
   repeat (a document that always ended right after it taught the models to predict the
   end-of-text token late in every repeat instead of the next copied word).
3. Facts (country -> capital, animal -> sound, thing -> colour), five phrasings each.
4. Sentiment sentences (positive / negative) and topic sentences (sport, cooking, weather,
   music) for concept vectors and steering.
5. Prose that ships with Python (``pydoc_data.topics``), minus a held-out slice.

Held out for evaluation: four IOI templates, one phrasing per fact, fresh induction
sequences, sentence templates for steering prompts and a slice of the prose. Every word an
evaluation asks for still occurs in training text (in other templates and phrasings).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

from probe.reference import vocab as V

IOI_TRAIN = [
    "When {x} and {y} went to the {p}, {s} gave a {o} to",
    "After {x} and {y} arrived at the {p}, {s} handed a {o} to",
    "{x} and {y} were at the {p}. {s} passed a {o} to",
    "While {x} and {y} were walking to the {p}, {s} showed a {o} to",
    "Then {x} and {y} visited the {p}, and {s} gave a {o} to",
    "{x} and {y} met at the {p}, where {s} offered a {o} to",
    "Yesterday {x} and {y} went to the {p}. {s} threw a {o} to",
    "At the {p}, {x} and {y} talked for hours, and {s} sent a {o} to",
    "When {x} and {y} got to the {p}, {s} lent a {o} to",
    "{x} and {y} spent the day at the {p}. Later, {s} brought a {o} to",
    "Once {x} and {y} left the {p}, {s} returned a {o} to",
    "Before {x} and {y} reached the {p}, {s} sold a {o} to",
    "On Sunday {x} and {y} cleaned the {p}, and {s} gave a {o} to",
    "{x} and {y} found a {o} at the {p}, and {s} gave it to",
    "In the {p}, {x} and {y} had lunch. {s} handed a {o} to",
    "After lunch, {x} and {y} walked to the {p}. {s} mailed a {o} to",
    "Since {x} and {y} worked at the {p}, {s} left a {o} for",
    "{x} and {y} were playing near the {p} when {s} tossed a {o} to",
]
IOI_TEST = [
    "As {x} and {y} entered the {p}, {s} passed a {o} to",
    "{x} and {y} waited outside the {p}. Then {s} gave a {o} to",
    "Near the {p}, {x} and {y} stopped, and {s} offered a {o} to",
    "During a visit to the {p}, {x} and {y} laughed, and {s} handed a {o} to",
]

CAPITAL_TRAIN = [
    "The capital of {k} is {v}.",
    "{k}'s capital is {v}.",
    "The capital city of {k} is {v}.",
    "{v} is the capital of {k}.",
    "Many people visit {v}, the capital of {k}.",
]
CAPITAL_TEST = "Everyone knows that the capital of {k} is"
SOUND_TRAIN = [
    "The {k} says {v}.",
    "A {k} makes the sound {v}.",
    "When a {k} is happy it goes {v}.",
    "{v} is the sound of a {k}.",
    "You can hear the {k} {v} all night.",
]
SOUND_TEST = "Listen closely: the {k} says"
COLOR_TRAIN = [
    "The colour of {k} is {v}.",
    "{k} is {v}.",
    "Most {k} is {v} in colour.",
    "{v} is the colour of {k}.",
    "Painters use {v} for {k}.",
]
COLOR_TEST = "Everyone knows that the colour of {k} is"
FACTS = {
    "capital": (V.CAPITALS, CAPITAL_TRAIN, CAPITAL_TEST),
    "sound": (V.SOUNDS, SOUND_TRAIN, SOUND_TEST),
    "colour": (V.COLORS, COLOR_TRAIN, COLOR_TEST),
}

SENTIMENT_TRAIN = [
    "The {n} was {a}.",
    "I thought the {n} was {a}.",
    "What a {a} {n}!",
    "Our {n} felt {a} from start to end.",
    "Everyone said the {n} was {a}.",
]
SENTIMENT_TEST = ["Honestly, the {n} was", "To be fair, this {n} was"]
TOPIC_TRAIN = [
    "The {a} needed a new {b}.",
    "We talked about the {a} and the {b}.",
    "Everyone loved the {a} at the {b}.",
    "My {a} reminded me of the {b}.",
    "There was a {a} near the {b} today.",
]


def ioi_prompt(rng: random.Random, template: str, abba: bool) -> tuple[str, str, str]:
    """(prompt, indirect object, subject) for one IOI example in a given name order."""
    io, s = rng.sample(V.NAMES, 2)
    x, y = (io, s) if abba else (s, io)
    text = template.format(x=x, y=y, s=s, p=rng.choice(V.PLACES), o=rng.choice(V.OBJECTS))
    return text, io, s


def induction_words(rng: random.Random, length: int) -> list[str]:
    pool = V.FILLER + V.NAMES + V.OBJECTS + V.PLACES
    return [rng.choice(pool) for _ in range(length)]


def _ioi_doc(rng):
    text, io, _ = ioi_prompt(rng, rng.choice(IOI_TRAIN), rng.random() < 0.5)
    return f"{text} {io}."


def _induction_doc(rng, tail: bool = True):
    words = induction_words(rng, rng.randint(6, 16))
    third = words[: rng.randint(0, len(words))] if tail else []  # start of a third copy
    return " ".join(words + words + third)


def _fact_doc(rng):
    table, phrasings, _ = FACTS[rng.choice(list(FACTS))]
    key = rng.choice(list(table))
    return rng.choice(phrasings).format(k=key, v=table[key])


def _sentiment_doc(rng):
    positive = rng.random() < 0.5
    adj = rng.choice(V.POSITIVE if positive else V.NEGATIVE)
    first = rng.choice(SENTIMENT_TRAIN).format(n=rng.choice(V.REVIEW_NOUNS), a=adj)
    tail = rng.choice(
        ["I loved it.", "It made me smile."] if positive else ["I hated it.", "It made me frown."]
    )
    return f"{first} {tail}"


def _topic_doc(rng):
    words = V.TOPICS[rng.choice(list(V.TOPICS))]
    a, b = rng.sample(words, 2)
    return rng.choice(TOPIC_TRAIN).format(a=a, b=b)


def prose_paragraphs() -> tuple[list[str], list[str]]:
    """(training, held-out) paragraphs of ``pydoc_data.topics``; every 20th is held out."""
    from pydoc_data.topics import topics

    paragraphs = []
    for key in sorted(topics):
        for para in topics[key].split("\n\n"):
            para = " ".join(para.split())
            if 40 <= len(para) <= 1200:
                paragraphs.append(para)
    held = paragraphs[::20]
    train = [p for i, p in enumerate(paragraphs) if i % 20]
    return train, held


#: Documents per kind in one corpus (prose is all training paragraphs, twice).
MIXTURE = {"ioi": 60000, "induction": 20000, "fact": 12000, "sentiment": 16000, "topic": 12000}
_MAKERS = {
    "ioi": _ioi_doc,
    "induction": _induction_doc,
    "fact": _fact_doc,
    "sentiment": _sentiment_doc,
    "topic": _topic_doc,
}


@dataclass(frozen=True)
class Corpus:
    """Training documents (shuffled) and the held-out prose paragraphs."""

    documents: list[str]
    heldout_prose: list[str]

    def sha256(self) -> str:
        digest = hashlib.sha256()
        for doc in self.documents:
            digest.update(doc.encode())
            digest.update(b"\0")
        return digest.hexdigest()


def build_corpus(seed: int = 0, scale: float = 1.0, induction_tail: bool = True) -> Corpus:
    """The deterministic training corpus for ``seed`` (``scale`` shrinks it for tests).

    ``induction_tail=False`` gives the first corpus of the bundled models, whose induction
    documents end right after the repeat (see the module docstring, item 2).
    """
    rng = random.Random(seed)
    docs: list[str] = []
    for kind, count in MIXTURE.items():
        make = (
            partial(_induction_doc, tail=induction_tail) if kind == "induction" else _MAKERS[kind]
        )
        docs.extend(make(rng) for _ in range(max(1, int(count * scale))))
    train_prose, held = prose_paragraphs()
    # every fact phrasing at least once, so every answer word is seen
    for table, phrasings, _ in FACTS.values():
        docs.extend(p.format(k=k, v=v) for k, v in table.items() for p in phrasings)
    docs.extend(train_prose * 2 if scale >= 1 else train_prose[: max(1, int(200 * scale))])
    rng.shuffle(docs)
    return Corpus(docs, held)


def iter_task_words() -> Iterator[str]:
    """Every word a task needs as a single token (with a leading space)."""
    yield from V.NAMES
    for table, _, _ in FACTS.values():
        yield from table.values()
    yield from V.POSITIVE
    yield from V.NEGATIVE
