"""The real-model figures of RESULTS.md: score agreement with the full-forward reference, and ROC AUCs on the
project's noisy copy of real rows, from the same code the real-model tests run (not itself a test).

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python tests/real/figures.py --rows 200 --output /tmp/real200

Runs `poft score` (SmolLM2 + Qwen2.5-Coder, float32) and `poft inspect --by-label noise` on the first ROWS
rows of data/alpaca_real_noisy.jsonl, the reference of test_real_score on them, and prints
markdown tables: max |poft - reference| per model, and each score's ROC AUC for clean vs each noise kind
(P(a clean row scores above a noisy row), ties one half) next to inspect's one-vs-rest AUCs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from conftest import MODELS, NOISY, cache_dir, read_jsonl, run_poft
from test_real_score import END_OF_TURN, reference_scores

from poft.inspection import roc_auc


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--no-reference", action="store_true", help="AUCs only (the reference is slow)")
    args = parser.parse_args()
    rows = read_jsonl(NOISY)[: args.rows]
    folders = {alias: cache_dir() / "hf" / MODELS[alias] for alias in ("smol", "qwen")}
    args.output.mkdir(parents=True, exist_ok=True)
    data = args.output / "noisy.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    scored = args.output / "scored"
    start = time.time()
    run_poft(["score", "--dataset", str(data), "--model", f"smol={folders['smol']}", "--model",
              f"qwen={folders['qwen']}", "--output", str(scored), "--dtype", "float32", "--no-progress"],
             timeout=7200)  # fmt: skip
    print(f"poft score: {time.time() - start:.0f} s")
    run_poft(["inspect", str(scored), "--by-label", "noise", "--output", str(args.output / "inspect")])
    from datasets import load_from_disk

    out = load_from_disk(str(scored))
    noise = np.array(out["noise"])
    scores = {a: np.array(out[f"{a}_logp_sum"]) / np.array(out[f"{a}_n_tokens"]) for a in folders}
    scores["ref_score"] = np.array(out["ref_score"])
    counts = {k: int((noise == k).sum()) for k in ("clean", "wrong_prompt", "corrupted")}
    summary = json.loads((args.output / "inspect" / "summary.json").read_text())["by_label"]["scores"]
    print(f"\n{len(rows)} rows: {counts}\n")
    print("| score | AUC clean vs wrong_prompt | AUC clean vs corrupted | inspect one-vs-rest AUC: clean / "
          "wrong_prompt / corrupted | mean score clean / wrong_prompt / corrupted |")  # fmt: skip
    print("|---|---|---|---|---|")
    for name, values in scores.items():
        pairwise = []
        for kind in ("wrong_prompt", "corrupted"):
            keep = (noise == "clean") | (noise == kind)
            pairwise.append(roc_auc(values[keep], noise[keep] == "clean"))
        ovr = " / ".join(f"{summary[name]['auc'][k]:.3f}" for k in ("clean", "wrong_prompt", "corrupted"))
        means = " / ".join(f"{values[noise == k].mean():.3f}" for k in ("clean", "wrong_prompt", "corrupted"))
        print(f"| {name} | {pairwise[0]:.3f} | {pairwise[1]:.3f} | {ovr} | {means} |")
    if args.no_reference:
        return
    print(
        "\n| model | rows | response tokens | max abs diff of the mean log-prob vs reference | reference time |"
    )
    print("|---|---|---|---|---|")
    for alias, folder in folders.items():
        start = time.time()
        means, counts = reference_scores(folder, rows, END_OF_TURN[alias])
        n_tokens = np.array(out[f"{alias}_n_tokens"])
        assert (n_tokens == counts).all(), f"{alias}: response token counts differ from the reference"
        diff = np.abs(scores[alias] - means).max()
        print(
            f"| {alias} ({MODELS[alias]}) | {len(rows)} | {counts.sum()} | {diff:.2e} | {time.time() - start:.0f} s |"
        )


if __name__ == "__main__":
    main()
