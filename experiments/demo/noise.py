"""Noisy training data made the way the paper made it (arXiv 2412.12865, noise study).

A `noise` share of the training rows is replaced by one of two corruptions, half each:
- "mismatch": the prompt is paired with the response of another, randomly chosen training row;
- "chars": the correct response with characters inserted, deleted or substituted (each character is
  edited with probability `char_rate`, at least one edit, and the result always differs from the answer).

Noisy rows carry `label: false` (read by bi-PoFT only: they are pushed below the aligned models); clean rows
carry `label: true`. Every row keeps its clean answer in `answer` and its kind in `noise_kind` so the demo
can plot clean vs noisy distributions; the trainers never see those columns.
"""

from __future__ import annotations

import random
import string

from .tasks import Example

ALPHABET = string.ascii_lowercase + string.digits


def corrupt_chars(text: str, rng: random.Random, rate: float = 0.2) -> str:
    """Insert / delete / substitute characters; each position is edited with probability `rate`."""
    for _ in range(100):
        out: list[str] = []
        for ch in text:
            if rng.random() >= rate:
                out.append(ch)
                continue
            op = rng.choice(("insert", "delete", "substitute"))
            if op == "insert":
                out += [ch, rng.choice(ALPHABET)]
            elif op == "substitute":
                out.append(rng.choice([c for c in ALPHABET if c != ch]))
        corrupted = "".join(out).strip()
        if corrupted and corrupted != text:
            return corrupted
    return text + rng.choice(ALPHABET)  # rate so low that nothing changed: force one insertion


def make_noisy_rows(examples: list[Example], noise: float, seed: int, char_rate: float = 0.2) -> list[dict]:
    """Training rows with `round(noise * n)` noisy ones (half mismatched, half character-corrupted)."""
    rng = random.Random(seed)
    n_noisy = round(noise * len(examples))
    noisy = set(rng.sample(range(len(examples)), n_noisy))
    rows = []
    for i, example in enumerate(examples):
        kind, response = "clean", example.answer
        if i in noisy:
            if rng.random() < 0.5:
                kind = "mismatch"
                while response == example.answer:
                    response = examples[rng.randrange(len(examples))].answer
            else:
                kind, response = "chars", corrupt_chars(example.answer, rng, char_rate)
        rows.append(
            {
                "id": f"train-{i}",
                "messages": example.messages(response),
                "label": kind == "clean",
                "noise_kind": kind,
                "skill": example.skill,
                "answer": example.answer,
            }
        )
    return rows
