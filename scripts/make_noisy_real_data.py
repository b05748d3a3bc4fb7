"""Make the real rows (data/): a slice of real Alpaca rows and a seeded noisy copy of it.

Why: the real-model study (experiments/real_study.py), the real-model tests (tests/real), the scoring and
training benchmarks and the real-model figures in docs/RESULTS.md need real text with known
noise, so that `poft inspect --by-label noise` can say how well real aligned models tell noise apart (ROC AUC).
The noise is made by hand, the two kinds of the paper's noise study (and of the demo, experiments/demo):
- wrong_prompt: the response of another row of the slice (never the row's own);
- corrupted:    the row's response with characters inserted, deleted or substituted (each character with
                probability CHAR_RATE; at least one edit).
Noisy rows are chosen at random (seeded): a NOISE share of them, half of each kind.

Input: ../shared/data/alpaca_en_demo.json (999 GPT-4 Alpaca rows from LLaMA-Factory's data/ folder; the
Alpaca data is CC BY-NC 4.0, research use). Output (data/, committed; re-running gives the same
bytes):
  alpaca_real.json           the first N_ROWS rows whose instruction + input + output have at most
                             MAX_CHARS characters (short rows keep CPU tests fast), with an `id`
  alpaca_real_noisy.jsonl    the same rows, Alpaca format, NOISE of them noisy; `noise` = clean /
                             wrong_prompt / corrupted, `label` = true for clean rows (bi-PoFT's column)

    python scripts/make_noisy_real_data.py [--source ../shared/data/alpaca_en_demo.json] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import random
import string
from pathlib import Path

N_ROWS = 200
MAX_CHARS = 500
NOISE = 0.25
CHAR_RATE = 0.1
SEED = 0
ALPHABET = string.ascii_letters + string.digits
OUT = Path(__file__).resolve().parent.parent / "data"


def corrupt(text: str, rng: random.Random, rate: float = CHAR_RATE) -> str:
    """Each character inserted-after, deleted or substituted with probability `rate`; never unchanged."""
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
    return corrupted if corrupted and corrupted != text else text + rng.choice(ALPHABET)


def real_slice(source: Path) -> list[dict]:
    rows = json.loads(source.read_text(encoding="utf-8"))
    picked = []
    for i, row in enumerate(rows):
        if len(row["instruction"]) + len(row["input"]) + len(row["output"]) <= MAX_CHARS:
            picked.append({"id": f"alpaca-{i}", **row})
        if len(picked) == N_ROWS:
            return picked
    raise SystemExit(f"{source}: only {len(picked)} rows of at most {MAX_CHARS} characters")


def noisy_copy(rows: list[dict], seed: int) -> list[dict]:
    rng = random.Random(seed)
    noisy = rng.sample(range(len(rows)), round(NOISE * len(rows)))
    kinds = {i: ("wrong_prompt" if k % 2 == 0 else "corrupted") for k, i in enumerate(noisy)}
    out = []
    for i, row in enumerate(rows):
        kind, output = kinds.get(i, "clean"), row["output"]
        if kind == "wrong_prompt":
            j = rng.choice([j for j in range(len(rows)) if rows[j]["output"] != row["output"]])
            output = rows[j]["output"]
        elif kind == "corrupted":
            output = corrupt(output, rng)
        out.append({**row, "output": output, "noise": kind, "label": kind == "clean"})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    here = Path(__file__).resolve().parent.parent
    parser.add_argument(
        "--source", type=Path, default=here.parent / "shared" / "data" / "alpaca_en_demo.json"
    )
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--output", type=Path, default=OUT)
    args = parser.parse_args()
    rows = real_slice(args.source)
    noisy = noisy_copy(rows, args.seed)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "alpaca_real.json").write_text(json.dumps(rows, ensure_ascii=False, indent=1) + "\n")
    with open(args.output / "alpaca_real_noisy.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in noisy)
    counts = {k: sum(r["noise"] == k for r in noisy) for k in ("clean", "wrong_prompt", "corrupted")}
    print(f"wrote {len(rows)} real rows and their noisy copy (seed {args.seed}: {counts}) to {args.output}")


if __name__ == "__main__":
    main()
