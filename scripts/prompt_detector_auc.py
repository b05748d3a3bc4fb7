"""How well each score of `poft score --uncond` tells noisy rows from clean ones: pairwise ROC AUCs.

Reads a scored folder whose rows have a `noise` column (clean / wrong_prompt / corrupted, as
`scripts/make_noisy_real_data.py` writes) and prints, for each score, AUC = P(a clean row scores above a
noisy row of that kind), ties one half: the aligned models' own scores, `ref_score`, `ref_pmi`, `ref_ifd`
(lower IFD is cleaner, so its AUC is that of -IFD) and `ref_combined` (= ref_score + 1 * ref_pmi, the weight
fixed in poft.pointwise before any real row was scored).

It also checks the weight honestly: the rows are split in two halves, stratified by `noise` (seeded); on
each half the weight lambda of ref_score + lambda * ref_pmi is chosen from a grid (the largest wrong-prompt
AUC among the weights whose corrupted AUC is >= 0.99 there, else the largest mean of the two) and the AUCs
of that weight are reported on the other half.

    python scripts/prompt_detector_auc.py SCORED_FOLDER [--seed 0] [--json out.json]
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from poft.inspection import float_column, read_scored, roc_auc
from poft.pointwise import combined

KINDS = ("wrong_prompt", "corrupted")
GRID = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)


def pairwise(values: np.ndarray, noise: np.ndarray, rows: np.ndarray | None = None) -> dict[str, float]:
    """AUC of clean vs each kind of noise (higher score = cleaner), over `rows` (all rows when None)."""
    rows = np.arange(len(values)) if rows is None else rows
    v, n = values[rows], noise[rows]
    out = {}
    for kind in KINDS:
        keep = ((n == "clean") | (n == kind)) & np.isfinite(v)
        out[kind] = roc_auc(v[keep], n[keep] == "clean")
    return out


def choose_weight(ref: np.ndarray, pmi: np.ndarray, noise: np.ndarray, rows: np.ndarray) -> float:
    """The grid weight with the best wrong-prompt AUC among those keeping corrupted >= 0.99 on `rows`."""
    aucs = {w: pairwise(combined(ref, pmi, w), noise, rows) for w in GRID}
    ok = [w for w in GRID if aucs[w]["corrupted"] >= 0.99]
    if ok:
        return max(ok, key=lambda w: (aucs[w]["wrong_prompt"], -w))
    return max(GRID, key=lambda w: (aucs[w]["wrong_prompt"] + aucs[w]["corrupted"], -w))


def halves(noise: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two halves of the rows, each kind of `noise` split evenly (seeded)."""
    rng = np.random.default_rng(seed)
    first = []
    for kind in sorted(set(noise)):
        rows = rng.permutation(np.flatnonzero(noise == kind))
        first += rows[: len(rows) // 2].tolist()
    a = np.sort(np.asarray(first, dtype=np.int64))
    return a, np.setdiff1d(np.arange(len(noise)), a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scored")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    dataset, manifest = read_scored(args.scored)
    noise = np.array(dataset["noise"], dtype=object)
    aliases = [m["alias"] for m in manifest["models"]]
    scores = {}
    for alias in aliases:
        c = float_column(dataset, f"{alias}_logp_sum") / float_column(dataset, f"{alias}_n_tokens")
        u = float_column(dataset, f"{alias}_uncond_logp_sum") / float_column(
            dataset, f"{alias}_uncond_n_tokens"
        )
        scores[alias], scores[f"{alias} pmi"], scores[f"{alias} -ifd"] = c, c - u, -(c / u)
    for name in ("ref_score", "ref_pmi", "ref_ifd", "ref_combined"):
        values = float_column(dataset, name)
        scores["-ref_ifd" if name == "ref_ifd" else name] = -values if name == "ref_ifd" else values
    counts = {k: int((noise == k).sum()) for k in ("clean", *KINDS)}
    report = {"rows": counts, "auc": {name: pairwise(v, noise) for name, v in scores.items()}}
    ref, pmi = scores["ref_score"], scores["ref_pmi"]
    report["grid_all_rows"] = {w: pairwise(combined(ref, pmi, w), noise) for w in GRID}
    a, b = halves(noise, args.seed)
    report["split"] = {}
    for tune, test, name in ((a, b, "tune A, report B"), (b, a, "tune B, report A")):
        weight = choose_weight(ref, pmi, noise, tune)
        report["split"][name] = {"weight": weight, "auc": pairwise(combined(ref, pmi, weight), noise, test)}
    print(f"rows: {counts}")
    print(f"{'score':<16} {'clean vs wrong_prompt':>22} {'clean vs corrupted':>19}")
    for name, auc in report["auc"].items():
        print(f"{name:<16} {auc['wrong_prompt']:>22.3f} {auc['corrupted']:>19.3f}")
    print("ref_score + w * ref_pmi on all rows: " + "; ".join(
        f"w={w:g}: {x['wrong_prompt']:.3f} / {x['corrupted']:.3f}" for w, x in report["grid_all_rows"].items()
    ))  # fmt: skip
    for name, r in report["split"].items():
        print(f"{name}: w={r['weight']:g}: {r['auc']['wrong_prompt']:.3f} / {r['auc']['corrupted']:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
