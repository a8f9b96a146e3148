"""The reference corpus: a deterministic mixture of task text and ordinary English prose.

1. Indirect object identification (IOI) from 46 training templates of varied syntax (the
   names joined by "and", in separate clauses, in relative clauses), both name orders
   ("When Mary and John went to the store, John gave a drink to Mary.").
2. Induction: a random word sequence, the same sequence again, then a random-length start
   of a third copy, so that the end of the document is never predictable inside the first
   repeat (a document that always ended right after it taught the models to predict the
   end-of-text token late in every repeat instead of the next copied word). The words come
   from all other training text except a held-out eighth.
3. Facts (country -> capital, animal -> sound, thing -> colour), five phrasings each.
4. Sentiment sentences (positive / negative) and topic sentences (sport, cooking, weather,
   music) for concept vectors and steering.
5. Prose that ships with Python (``pydoc_data.topics``), minus a held-out slice.
6. Word lists (versions 3 and 4): random sequences of distinct words, held-out words
   included, never repeated (``_list_doc`` says why).
7. Version 5 (an experiment no bundled model uses; it lowered held-out induction): version 4
   with more induction documents, two in five of their words made up (``nonce_word``).

Held out for evaluation: ten IOI templates (six without "and" between the names), one
phrasing per fact, induction over words that never occur in an induction document, sentence
templates for steering prompts and a slice of the prose. Every word an evaluation asks for
still occurs in training text (in other templates, phrasings, prose or word lists).
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache, partial

from probe.errors import GatescopeError
from probe.reference import vocab as V

IOI_TRAIN = [
    # the two names joined by "and"
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
    "Both {x} and {y} liked the {p}. Later, {s} gave a {o} to",
    # the names in separate roles or clauses (no "and" between them)
    "{x} saw {y} at the {p}, so {s} gave a {o} to",
    "{x} called {y} from the {p}. Later {s} sent a {o} to",
    "{x} sat next to {y} in the {p}, and {s} passed a {o} to",
    "The {p} was busy when {x} found {y}, and {s} handed a {o} to",
    "{x} waited for {y} at the {p} until {s} could give a {o} to",
    "After {x} helped {y} at the {p}, {s} offered a {o} to",
    "{x} was talking with {y} near the {p}. Then {s} lent a {o} to",
    "{x} told {y} about the {p}, and afterwards {s} brought a {o} to",
    "{x} drove {y} to the {p}. There, {s} showed a {o} to",
    "At the {p}, {x} greeted {y}, and {s} tossed a {o} to",
    "{x} invited {y} to the {p}, where {s} gave a {o} to",
    "{x} asked {y} to come to the {p}. Soon {s} mailed a {o} to",
    "{x} followed {y} into the {p}, and {s} handed a {o} to",
    "{x} was with {y} at the {p} when {s} passed a {o} to",
    "{x} joined {y} at the {p}; {s} gave a {o} to",
    "When {x} visited {y} at the {p}, {s} brought a {o} to",
    "{x} ran into {y} outside the {p}, and {s} returned a {o} to",
    "{x} worked with {y} at the {p}, and one day {s} left a {o} for",
    "{x} played with {y} near the {p} until {s} threw a {o} to",
    "{x} sat beside {y} at the {p}. Then {s} showed a {o} to",
    "{x} watched {y} at the {p}, and {s} later offered a {o} to",
    # relative clauses and the names further apart
    "{x}, who knew {y} from the {p}, said that {s} would give a {o} to",
    "The {o} that {x} bought for {y} at the {p} was nice, so {s} gave it to",
    "{x}, who was at the {p} with {y}, was sure that {s} should send a {o} to",
    "It was at the {p} that {x} first saw {y}, and {s} gave a {o} to",
    "The {o} which {x} found near {y} at the {p} was lost, so {s} returned it to",
    "Everyone at the {p} knew that {x} liked {y}, and {s} brought a {o} to",
]
IOI_TEST = [
    "As {x} and {y} entered the {p}, {s} passed a {o} to",
    "{x} and {y} waited outside the {p}. Then {s} gave a {o} to",
    "Near the {p}, {x} and {y} stopped, and {s} offered a {o} to",
    "During a visit to the {p}, {x} and {y} laughed, and {s} handed a {o} to",
    # no "and" between the names
    "{x} met {y} at the {p}, and {s} gave a {o} to",
    "{x} spoke with {y} inside the {p}. Afterwards {s} handed a {o} to",
    "Outside the {p}, {x} thanked {y}, and then {s} passed a {o} to",
    "{x} greeted {y} at the {p} before {s} sent a {o} to",
    "The {o} that {x} found with {y} near the {p} was old, so {s} gave it to",
    "{x}, who was waiting for {y} at the {p}, decided that {s} would lend a {o} to",
]


def joined_by_and(template: str) -> bool:
    """Whether the two names of an IOI template are joined by "and" ("{x} and {y}")."""
    return "{x} and {y}" in template


def template_pattern(template: str) -> re.Pattern:
    """A pattern matching any filling of an IOI template (each slot one word)."""
    parts = re.split(r"\{[a-z]\}", template)
    return re.compile(r"\w+".join(re.escape(p) for p in parts))


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


#: The corpus of the first two training stages of the bundled gated and plain models.
IOI_TRAIN_V1 = IOI_TRAIN[:18]
V1_POOL = V.FILLER + V.NAMES + V.OBJECTS + V.PLACES
_WORD = re.compile(r"[A-Za-z]+|[0-9]+")


def _other_text() -> list[str]:
    """Every text other than induction documents that training draws words from."""
    train_prose, _ = prose_paragraphs()
    texts = list(train_prose) + [t.format(x="", y="", s="", p="", o="") for t in IOI_TRAIN]
    for table, phrasings, _ in FACTS.values():
        texts += [p.format(k=k, v=v) for k, v in table.items() for p in phrasings]
    texts += [t.format(n="", a="", b="") for t in SENTIMENT_TRAIN + TOPIC_TRAIN]
    lists = [V.NAMES, V.PLACES, V.OBJECTS, V.POSITIVE, V.NEGATIVE, V.REVIEW_NOUNS, V.FILLER]
    texts += [" ".join(w) for w in lists + list(V.TOPICS.values())]
    return texts


def _is_heldout(word: str) -> bool:
    """A fixed ~1/8 of the plain lower-case words (3-8 letters) by hash: never induced."""
    if not (word.isalpha() and word.islower() and 3 <= len(word) <= 8):
        return False
    return hashlib.sha256(word.encode()).digest()[0] % 8 == 0


@cache
def induction_vocabulary() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(training pool, held-out words) of the induction documents.

    Both come from the words (letters or digits, at most 12 characters) of every other
    training text, so each held-out word still occurs in training text. No training-pool
    word starts with a held-out word, so no induction document holds a held-out word's
    first token either.
    """
    words = sorted({w for t in _other_text() for w in _WORD.findall(t) if len(w) <= 12})
    held = tuple(w for w in words if _is_heldout(w) and w not in set(iter_task_words()))
    pool = tuple(w for w in words if w not in held and not any(w.startswith(h) for h in held))
    return pool, held


_ONSETS = "b c d f g h j k l m n p r s t v w z br cr dr fl gr pl st tr sh ch th sk sp".split()
_NUCLEI = "a e i o u ai ea ou oo ie".split()
_CODAS = ["", "", "n", "r", "s", "t", "l", "m", "k", "x", "nd", "st", "rk"]


def nonce_word(rng: random.Random) -> str:
    """A made-up word of one to three syllables ("trienmest", "kunjicrum") that neither is
    nor starts with a held-out induction word, so no held-out word's first token occurs in
    it. Such words split into tokens in combinations no training text has, so copying them
    cannot be a lookup over known words."""
    held = set(induction_vocabulary()[1])
    while True:
        n = rng.randint(1, 3)
        word = "".join(
            rng.choice(_ONSETS) + rng.choice(_NUCLEI) + rng.choice(_CODAS) for _ in range(n)
        )
        if not any(word[:k] in held for k in range(3, 9)):
            return word


def induction_words(rng: random.Random, length: int, version: int = 2) -> list[str]:
    """Words of one induction document: from the training pool (version 1: ~200 words);
    from version 5 on, each word is a made-up one (:func:`nonce_word`) with probability 0.4."""
    pool = V1_POOL if version == 1 else induction_vocabulary()[0]
    if version < 5:
        return [rng.choice(pool) for _ in range(length)]
    return [nonce_word(rng) if rng.random() < 0.4 else rng.choice(pool) for _ in range(length)]


def _ioi_doc(rng, version: int = 2):
    templates = IOI_TRAIN_V1 if version == 1 else IOI_TRAIN
    text, io, _ = ioi_prompt(rng, rng.choice(templates), rng.random() < 0.5)
    return f"{text} {io}."


@cache
def list_vocabulary() -> tuple[str, ...]:
    """Every word of the induction vocabulary, the held-out words included."""
    pool, held = induction_vocabulary()
    return tuple(sorted(pool + held))


def _list_doc(rng, long: bool = True):
    """A word list: distinct words of all other training text, held-out words included,
    never repeated. Random word sequences then occur with every word, so a model cannot learn
    that a held-out word is improbable in such text (with induction documents alone it
    does: the held-out words are exactly those that never occur in a sequence of random
    words); copying stays confined to the induction documents and their pool.

    A list runs for 36-60 words (``long``; version 4), past where any induction document
    repeats or ends (at most 48 words): lists of 6-16 words (version 3) ended just where an
    induction document repeats, and since only lists hold held-out words, models learned to
    predict the end of the document inside a repeated sequence of held-out words instead of
    copying it."""
    n = rng.randint(36, 60) if long else rng.randint(6, 16)
    return " ".join(rng.sample(list_vocabulary(), n))


def _induction_doc(rng, tail: bool = True, version: int = 2):
    words = induction_words(rng, rng.randint(6, 16), version)
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


#: Documents per kind in one corpus (prose is all training paragraphs, twice); version 1 is
#: the corpus of the first two stages of the bundled gated and plain models.
MIXTURE = {"ioi": 60000, "induction": 36000, "fact": 12000, "sentiment": 16000, "topic": 12000}
MIXTURE_V1 = {"ioi": 60000, "induction": 20000, "fact": 12000, "sentiment": 16000, "topic": 12000}
#: Version 3 adds short word lists (``_list_doc``) to version 2, version 4 long ones.
MIXTURE_V3 = {**MIXTURE, "list": 12000}
MIXTURE_V4 = {**MIXTURE, "list": 6000}
#: Version 5: version 4 with made-up words in the induction documents, and more of them.
MIXTURE_V5 = {**MIXTURE_V4, "induction": 48000}
_MAKERS = {
    "ioi": _ioi_doc,
    "induction": _induction_doc,
    "fact": _fact_doc,
    "sentiment": _sentiment_doc,
    "topic": _topic_doc,
    "list": _list_doc,
}


@dataclass(frozen=True)
class Corpus:
    """Training documents (shuffled), the kind of each, and the held-out prose paragraphs."""

    documents: list[str]
    heldout_prose: list[str]
    kinds: list[str]

    def sha256(self) -> str:
        digest = hashlib.sha256()
        for doc in self.documents:
            digest.update(doc.encode())
            digest.update(b"\0")
        return digest.hexdigest()

    def of_kind(self, kind: str) -> list[str]:
        return [d for d, k in zip(self.documents, self.kinds, strict=True) if k == kind]


VERSIONS = {1: MIXTURE_V1, 2: MIXTURE, 3: MIXTURE_V3, 4: MIXTURE_V4, 5: MIXTURE_V5}


def build_corpus(
    seed: int = 0,
    scale: float = 1.0,
    induction_tail: bool = True,
    version: int = 4,
    induction: bool = True,
) -> Corpus:
    """The deterministic training corpus for ``seed`` (``scale`` shrinks it for tests).

    ``version=4`` (current) is version 2 plus long word lists, ``version=3`` with short
    ones; ``version=1`` is the corpus of the
    first two stages of the earlier bundled gated and plain models (18 IOI templates,
    induction over a pool of ~200 words); with ``induction_tail=False`` its induction
    documents end right after the repeat (see the module docstring, item 2).
    ``induction=False`` leaves the induction documents out (a first stage that learns the
    token embeddings from the other text only); every other document is drawn as with them.
    """
    if version not in VERSIONS:
        raise GatescopeError(f"corpus version {version}: expected one of 1, 2, 3, 4, 5")
    rng = random.Random(seed)
    docs: list[tuple[str, str]] = []
    for kind, count in VERSIONS[version].items():
        if kind == "induction":
            make = partial(_induction_doc, tail=induction_tail, version=version)
        elif kind == "ioi":
            make = partial(_ioi_doc, version=version)
        elif kind == "list":
            make = partial(_list_doc, long=version >= 4)
        else:
            make = _MAKERS[kind]
        docs.extend((make(rng), kind) for _ in range(max(1, int(count * scale))))
    if not induction:  # drawn above all the same, so the other documents do not change
        docs = [d for d in docs if d[1] != "induction"]
    train_prose, held = prose_paragraphs()
    # every fact phrasing at least once, so every answer word is seen
    for table, phrasings, _ in FACTS.values():
        docs.extend((p.format(k=k, v=v), "fact") for k, v in table.items() for p in phrasings)
    prose = train_prose * 2 if scale >= 1 else train_prose[: max(1, int(200 * scale))]
    docs.extend((p, "prose") for p in prose)
    order = list(range(len(docs)))
    rng.shuffle(order)
    return Corpus([docs[i][0] for i in order], held, [docs[i][1] for i in order])


def iter_task_words() -> Iterator[str]:
    """Every word a task needs as a single token (with a leading space)."""
    yield from V.NAMES
    for table, _, _ in FACTS.values():
        yield from table.values()
    yield from V.POSITIVE
    yield from V.NEGATIVE
