"""Concept figures on the gated reference model (issue: concepts).

For the bundled sentiment and topic concepts and two random "concepts" (``random_10`` and
``random_11``, held out of the pool of random sets ``random_0..9``), at every layer of
``resid_post``: CAV held-out accuracy (mean over the 10 random sets), TCAV score and its
p-value (``p_value`` = max of the score t-test and the CAV-accuracy test), and the cosine of
adjacent layers' CAVs. The target is the sentiment logit difference ``wonderful|terrible``
(``terrible|wonderful`` for the negative concept) on the held-out sentiment prompts, for
every concept: the sentiment concepts should raise it, random sets must not be significant.
The test is two-sided, so a topic whose CAV consistently lowers the target (TCAV near 0) is
significant too: the random sets lean positive, so "topic vs random" points away from it.
Then each topic with a topic target: the logit difference of one of its words against another
topic's word (``football|recipe`` for sport, ...) on 30 neutral prompts built from the corpus's
topic templates with filler nouns ("We talked about the river and the"), where a topic word
may come next. Then concept steering with the positive CAV at ``resid_post.2`` against 10
random vectors of equal norm.

    .venv/bin/python bench/concepts_reference.py [--kind resid_post] [--json out.json]
"""

from __future__ import annotations

import argparse
import json

import torch

from interventions.concept_steering import evaluate_concept_steering
from interventions.steering import word_logit_metric
from probe import load_model
from probe.concepts import cross_layer, train_cav
from probe.tasks import TASKS_DIR, load_texts

CONCEPTS = {
    "concept_positive": "wonderful|terrible",
    "concept_negative": "terrible|wonderful",
    "concept_sport": "wonderful|terrible",
    "concept_cooking": "wonderful|terrible",
    "concept_weather": "wonderful|terrible",
    "concept_music": "wonderful|terrible",
    "random_10": "wonderful|terrible",
    "random_11": "wonderful|terrible",
}


TOPIC_TARGETS = {
    "concept_sport": "football|recipe",
    "concept_cooking": "recipe|football",
    "concept_weather": "rain|song",
    "concept_music": "song|rain",
    "random_10": "football|recipe",
    "random_11": "song|rain",
}
TEMPLATES = (
    "The {a} needed a new",
    "We talked about the {a} and the",
    "Everyone loved the {a} at the",
    "My {a} reminded me of the",
    "There was a {a} near the",
)
FILLERS = ("river", "tree", "house", "road", "window", "door")


def _row(model, name, target, randoms, kind, inputs, table):
    res = cross_layer(model, load_texts(name), randoms, kind, target, inputs)
    table[f"{name} {target}"] = {
        "accuracy": res.accuracy,
        "tcav": res.tcav,
        "p": res.p_values,
        "significant": [r.significant for r in res.results],
        "adjacent_cosine": res.adjacent_cosine,
    }
    cells = "  ".join(
        f"L{layer} {a:.2f}/{t:.2f} (p={p:.3g}{'*' if p < 0.05 else ''})"
        for layer, a, t, p in zip(res.layers, res.accuracy, res.tcav, res.p_values, strict=True)
    )
    print(f"{name:18s}{target:20s} {cells}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="reference")
    parser.add_argument("--kind", default="resid_post")
    parser.add_argument("--steer-site", default="resid_post.2")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", dest="json_out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    randoms = [load_texts(f"random_{i}") for i in range(10)]
    prompts = load_texts("sentiment_prompts")
    table = {}
    print(f"{args.model}, {args.kind}.*, target on {len(prompts)} held-out sentiment prompts")
    print(f"{'concept':18s}{'target':20s} per layer: CAV accuracy / TCAV score (p)")
    for name, target in CONCEPTS.items():
        _row(model, name, target, randoms, args.kind, prompts, table)
    neutral = [t.format(a=f) for t in TEMPLATES for f in FILLERS]
    print(f"\ntopic targets on {len(neutral)} neutral prompts")
    for name, target in TOPIC_TARGETS.items():
        _row(model, name, target, randoms, args.kind, neutral, table)
    print("(* significant at p < 0.05)")
    words = json.loads((TASKS_DIR / "sentiment_words.json").read_text())
    metric = word_logit_metric(model, words["positive"], words["negative"])
    cav = train_cav(model, load_texts("concept_positive"), randoms[0], args.steer_site)
    steer = evaluate_concept_steering(model, cav, prompts, metric, (-1, 0, 1, 2), n_random=10)
    add = steer.add
    base = add.vector[add.coefs.index(0.0)]
    print(f"\nconcept steering, positive CAV at {args.steer_site} (coefficient 1 = concept gap)")
    for i, coef in enumerate(add.coefs):
        biggest = max(abs(r[i] - base) for r in add.random)
        print(
            f"  coef {coef:+.0f}: metric {add.vector[i]:+.3f} (effect {add.vector[i] - base:+.3f})"
            f", largest random |effect| {biggest:.3f}"
        )
    print(f"  beats every random vector at +1: {add.beats_random_at(1.0)}")
    table["steering"] = {"coefs": add.coefs, "vector": add.vector, "random": add.random}
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(table, f, indent=2)


if __name__ == "__main__":
    main()
