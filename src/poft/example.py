"""A tiny model and a small dataset with reference scores, for trying `poft train` in seconds, offline.

The reference scores here are SYNTHETIC (clean rows about -1.5, corrupted rows about -4.0, with noise):
they stand in for `poft score` output so the training path can be exercised on its own. The demo
(`make demo`) builds real aligned models and scores data with them.
"""

from __future__ import annotations

import json
import random
from pathlib import Path


def make_rows(n_rows: int, seed: int = 0, noise: float = 0.3) -> list[dict]:
    """Arithmetic and string-reversal conversations; a `noise` share get a corrupted answer (label false)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n_rows):
        if rng.random() < 0.5:
            a, b = rng.randint(1, 99), rng.randint(1, 99)
            prompt, answer = f"add {a} and {b}", str(a + b)
        else:
            word = "".join(rng.choice("abcdefgh") for _ in range(rng.randint(3, 7)))
            prompt, answer = f"reverse {word}", word[::-1]
        clean = rng.random() >= noise
        if not clean:
            answer = "".join(rng.choice("xyz0123456789") for _ in range(len(answer) + 1))
        ref = (-1.5 if clean else -4.0) + rng.gauss(0.0, 0.3)
        rows.append(
            {
                "id": f"tiny-{i}",
                "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
                "ref_score": round(ref, 4),
                "label": clean,
            }
        )
    return rows


def write_tiny_example(output: str | Path, n_rows: int = 256, seed: int = 0) -> dict[str, Path]:
    """Write `output/model` (tiny Llama + ChatML tokenizer) and `output/train.jsonl`."""
    from .tiny import build_model, build_tokenizer

    out = Path(output)
    rows = make_rows(n_rows, seed)
    corpus = [m["content"] for r in rows for m in r["messages"]]
    tokenizer = build_tokenizer("chatml", corpus, vocab_size=384)
    model = build_model(tokenizer, hidden_size=64, num_layers=2, seed=seed)
    model.save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")
    data = out / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"model": out / "model", "data": data}
