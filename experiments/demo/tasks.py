"""A synthetic instruction-following task family with checkable answers, deterministic from a seed.

Why these skills: the demo must run in minutes on two CPU cores with ~100k-parameter models, so every
skill is solvable by attention over a few word tokens (copying, re-ordering, retrieving, counting), which
tiny transformers learn in a few hundred steps, and every answer has exactly one correct string, so
exact-match accuracy is a fair metric. Items are whole words / digits separated by spaces, so a small
BPE trained on the task text gives one token per item and answers stay short (< 12 tokens).

Skills: repeat (2-3 words), first, last, sort (digits), look-up (in-context key=value table), count. (An
earlier version had `reverse` and 3-5-word `repeat`: ~0.5M-parameter models did not learn them within the
demo's budget, so they only added noise to the accuracies.)

Splits: `make_splits` draws the held-out test prompts, the validation prompts (learning-rate choice), the
aligned models' training prompts, the target's training prompts and the pretraining corpus of the target's
base model from one stream without repeats, so no two sets share a prompt.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

WORDS = (
    "cat dog sun moon tree fish bird star rock leaf rain snow fire wind lake hill rose ship king gold"
).split()
DIGITS = list("0123456789")


@dataclass(frozen=True)
class Example:
    """One prompt with its single correct answer; `skill` names the generator that made it."""

    skill: str
    prompt: str
    answer: str

    def messages(self, answer: str | None = None) -> list[dict]:
        """The conversation {user: prompt, assistant: answer} (a different answer for noisy rows)."""
        return [
            {"role": "user", "content": self.prompt},
            {"role": "assistant", "content": self.answer if answer is None else answer},
        ]


def _items(rng: random.Random, pool: list[str], lo: int = 3, hi: int = 5) -> list[str]:
    return [rng.choice(pool) for _ in range(rng.randint(lo, hi))]


def _repeat(rng: random.Random) -> Example:
    items = _items(rng, WORDS, 2, 3)
    return Example("repeat", "repeat: " + " ".join(items), " ".join(items))


def _first(rng: random.Random) -> Example:
    items = _items(rng, WORDS)
    return Example("first", "first: " + " ".join(items), items[0])


def _sort(rng: random.Random) -> Example:
    items = _items(rng, DIGITS)
    return Example("sort", "sort: " + " ".join(items), " ".join(sorted(items)))


def _lookup(rng: random.Random) -> Example:
    keys = rng.sample(WORDS, rng.randint(2, 4))
    table = {k: rng.choice(DIGITS) for k in keys}
    key = rng.choice(keys)
    pairs = " ".join(f"{k} {v}" for k, v in table.items())
    return Example("lookup", f"table: {pairs} ; get {key}", table[key])


def _count(rng: random.Random) -> Example:
    items = _items(rng, WORDS, 1, 6)
    return Example("count", "count: " + " ".join(items), str(len(items)))


def _last(rng: random.Random) -> Example:
    items = _items(rng, WORDS)
    return Example("last", "last: " + " ".join(items), items[-1])


SKILLS: dict[str, Callable[[random.Random], Example]] = {
    "repeat": _repeat,
    "first": _first,
    "sort": _sort,
    "lookup": _lookup,
    "count": _count,
    "last": _last,
}


def generate(rng: random.Random, n: int, seen: set[str]) -> list[Example]:
    """`n` new examples, skills in rotation, none whose prompt is in `seen` (which is updated)."""
    out: list[Example] = []
    names = list(SKILLS)
    while len(out) < n:
        example = SKILLS[names[len(out) % len(names)]](rng)
        if example.prompt not in seen:
            seen.add(example.prompt)
            out.append(example)
    rng.shuffle(out)
    return out


@dataclass(frozen=True)
class Splits:
    """Disjoint prompt sets: the target's training data, the aligned models' data, validation and test
    prompts, and the base model's pretraining corpus."""

    train: list[Example]
    aligned: list[Example]
    test: list[Example]
    val: list[Example]
    pretrain: list[Example]


def make_splits(
    seed: int, n_train: int, n_aligned: int, n_test: int, n_val: int = 0, n_pretrain: int = 0
) -> Splits:
    """Deterministic from `seed`; no prompt appears in two splits."""
    rng, seen = random.Random(seed), set()
    test = generate(rng, n_test, seen)
    val = generate(rng, n_val, seen)
    aligned = generate(rng, n_aligned, seen)
    train = generate(rng, n_train, seen)
    pretrain = generate(rng, n_pretrain, seen)
    return Splits(train, aligned, test, val, pretrain)


def is_correct(example: Example, response: str) -> bool:
    """Exact match after stripping surrounding whitespace (the checker for every skill)."""
    return response.strip() == example.answer


def corpus(examples: list[Example]) -> list[str]:
    """Text to train the tiny tokenizers on: every prompt and answer."""
    return [text for e in examples for text in (e.prompt, e.answer)]
