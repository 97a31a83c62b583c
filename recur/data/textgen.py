"""Generated language text for the embedded default: short stories from a small grammar, no download.

Each story has a named character, a place, a want, an obstacle and an outcome, told in simple sentences
with agreement (he/she/they) and consistent names, so a small model has real regularities to learn
(coreference, tense, story structure) beyond n-gram statistics. Deterministic in the seed.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from recur.atomic import atomic_path

NAMES = {"he": ["Tom", "Ben", "Sam", "Leo", "Max", "Jack"], "she": ["Lily", "Mia", "Anna", "Sue", "Zoe", "Emma"]}
ANIMALS = ["cat", "dog", "bird", "fox", "rabbit", "frog", "duck", "bear"]
PLACES = ["the park", "the forest", "the garden", "the beach", "the farm", "the river", "the hill", "the town"]
WANTS = [
    ("a red ball", "play with it"),
    ("a big kite", "fly it high"),
    ("a shiny shell", "keep it in a box"),
    ("a sweet apple", "eat it"),
    ("a little boat", "sail it on the water"),
    ("a blue hat", "wear it"),
]
OBSTACLES = [
    "it was too high to reach",
    "a strong wind blew it away",
    "it fell into a deep hole",
    "a grumpy {animal} sat on it",
    "it was stuck behind a tall fence",
]
HELPS = [
    "asked {friend} for help",
    "found a long stick",
    "climbed up very carefully",
    "waited until the wind stopped",
    "sang a song to the {animal}",
]
FEELINGS = ["happy", "proud", "glad", "excited"]
MORALS = [
    "Friends make hard things easy.",
    "Being patient is a good idea.",
    "It is good to try again.",
    "Sharing makes everyone happy.",
]


def story(rng: random.Random) -> str:
    pronoun = rng.choice(["he", "she"])
    name = rng.choice(NAMES[pronoun])
    friend = rng.choice([n for n in NAMES[rng.choice(["he", "she"])] if n != name])
    animal, place = rng.choice(ANIMALS), rng.choice(PLACES)
    thing, use = rng.choice(WANTS)
    obstacle = rng.choice(OBSTACLES).format(animal=animal)
    help_ = rng.choice(HELPS).format(friend=friend, animal=animal)
    feeling = rng.choice(FEELINGS)
    possessive = "his" if pronoun == "he" else "her"
    sentences = [
        f"Once upon a time, there was a {rng.choice(['little', 'kind', 'curious', 'brave'])} "
        f"{'boy' if pronoun == 'he' else 'girl'} named {name}.",
        f"One day, {name} went to {place} with {possessive} {animal}.",
        f"At {place}, {name} saw {thing}.",
        f"{pronoun.capitalize()} wanted to {use}.",
        f"But {obstacle}.",
        f"{name} did not give up. {pronoun.capitalize()} {help_}.",
        f"At last, {name} had {thing} and could {use}.",
        f"{name} felt {feeling}. {rng.choice(MORALS)}",
    ]
    return " ".join(sentences)


def generate_stories(num_docs: int, seed: int) -> list[dict]:
    """`num_docs` text documents {"text": story}, deterministic in `seed`."""
    if num_docs < 1:
        raise ValueError(f"generate_stories: num_docs must be >= 1, got {num_docs}")
    rng = random.Random(seed)
    return [{"text": story(rng)} for _ in range(num_docs)]


def write_stories(path: str | Path, num_docs: int, seed: int) -> Path:
    """Write the stories as JSONL (the packing pipeline's input format), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for doc in generate_stories(num_docs, seed):
            f.write(json.dumps(doc) + "\n")
    return path
