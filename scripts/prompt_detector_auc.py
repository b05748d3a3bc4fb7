"""How well each score of `poft score --uncond` tells noisy rows from clean ones: pairwise ROC AUCs.

Reads a scored folder whose rows have a `noise` column (clean / wrong_prompt / corrupted, as
`scripts/make_noisy_real_data.py` writes) and prints, for each score, AUC = P(a clean row scores above a
noisy row of that kind), ties one half: the aligned models' own scores, their PMI and IFD, `ref_score`,
`ref_pmi`, `ref_ifd` (lower IFD is cleaner, so its AUC is that of -IFD) and `ref_combined` (= ref_score -
4 * ref_ifd, poft.pointwise). Also both families of combinations over a grid of weights on all rows:
ref_score + w * ref_pmi (the first form, w = 1 fixed before any real row was scored) and ref_score - w *
ref_ifd (the form kept).

The held-out check of the weight: for each seed the rows are split in two halves, stratified by `noise`; on
one half the weight w of ref_score - w * ref_ifd is chosen from the grid (the largest wrong-prompt AUC among
the weights whose corrupted AUC is >= 0.99 there, else the largest sum of the two) and the AUCs of that
weight are reported on the other half, both ways round.

    python scripts/prompt_detector_auc.py SCORED_FOLDER [--seeds 6] [--json out.json]
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from poft.arrow_rows import float_column
from poft.inspection import read_scored, roc_auc
from poft.pointwise import COMBINED_WEIGHT

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


def choose_weight(ref: np.ndarray, ifd: np.ndarray, noise: np.ndarray, rows: np.ndarray) -> float:
    """The grid weight of ref - w * ifd with the best wrong-prompt AUC among those keeping corrupted >= 0.99
    on `rows`."""
    aucs = {w: pairwise(ref - w * ifd, noise, rows) for w in GRID}
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
    parser.add_argument("--seeds", type=int, default=6)
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
    ref, pmi, ifd = scores["ref_score"], scores["ref_pmi"], -scores["-ref_ifd"]
    report["grid_pmi"] = {w: pairwise(ref + w * pmi, noise) for w in GRID}
    report["grid_ifd"] = {w: pairwise(ref - w * ifd, noise) for w in GRID}
    report["split"] = []
    for seed in range(args.seeds):
        a, b = halves(noise, seed)
        for tune, test, name in ((a, b, "A->B"), (b, a, "B->A")):
            weight = choose_weight(ref, ifd, noise, tune)
            auc = pairwise(ref - weight * ifd, noise, test)
            report["split"].append({"seed": seed, "halves": name, "weight": weight, "auc": auc})
    print(f"rows: {counts}")
    print(f"{'score':<16} {'clean vs wrong_prompt':>22} {'clean vs corrupted':>19}")
    for name, auc in report["auc"].items():
        print(f"{name:<16} {auc['wrong_prompt']:>22.3f} {auc['corrupted']:>19.3f}")
    for family, sign in (("grid_pmi", "+ w * ref_pmi"), ("grid_ifd", "- w * ref_ifd")):
        print(f"ref_score {sign}, all rows (wrong_prompt / corrupted): " + "; ".join(
            f"w={w:g}: {x['wrong_prompt']:.3f} / {x['corrupted']:.3f}" for w, x in report[family].items()
        ))  # fmt: skip
    print(f"held out (ref_combined's weight is {COMBINED_WEIGHT:g}):")
    for r in report["split"]:
        auc = r["auc"]
        print(
            f"  seed {r['seed']} {r['halves']}: w={r['weight']:g}: {auc['wrong_prompt']:.3f} / {auc['corrupted']:.3f}"
        )
    held = np.array([[r["auc"]["wrong_prompt"], r["auc"]["corrupted"]] for r in report["split"]])
    print(f"  mean +- std: {held[:, 0].mean():.3f} +- {held[:, 0].std():.3f} / {held[:, 1].mean():.3f} +- "
          f"{held[:, 1].std():.3f}; goal met (>= 0.97 and >= 0.99) in {int(((held[:, 0] >= 0.97) & (held[:, 1] >= 0.99)).sum())} of {len(held)}")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
