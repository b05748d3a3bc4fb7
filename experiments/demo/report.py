"""Results table (stdout and report.md), aggregated over seeds as mean +- std (population std, n seeds).

The table shows the LAST epoch (what the paper reports for its noise study) and, for reference, the best
epoch's greedy accuracy; report.md adds the aligned models' own held-out accuracy, the mean reference
score and final PoFT weight of clean vs noisy rows, the figures, and the settings.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .methods import METHODS

METRIC_NAMES = ("accuracy", "sampled_accuracy", "clean_nll")


def aggregate(runs: list[dict]) -> dict[tuple[float, str, int], dict[str, tuple[float, float, int]]]:
    """(noise, method, epoch) -> metric -> (mean, std, n seeds)."""
    groups: dict[tuple[float, str, int], list[dict]] = {}
    for run in runs:
        groups.setdefault((run["noise"], run["method"], run["epoch"]), []).append(run["metrics"])
    return {
        key: {
            m: (float(np.mean([r[m] for r in rs])), float(np.std([r[m] for r in rs])), len(rs))
            for m in METRIC_NAMES
        }
        for key, rs in groups.items()
    }


def _cell(mean: float, std: float, n: int) -> str:
    return f"{mean:.3f} ± {std:.3f}" if n > 1 else f"{mean:.3f}"


def method_order(label: str) -> tuple[int, str]:
    """Table order: methods as listed in methods.METHODS; `method@lr` labels (tuning) by method, then label."""
    names = list(METHODS)
    name = label.split("@")[0]
    return (names.index(name) if name in names else len(names), label)


def results_table(runs: list[dict]) -> str:
    """Markdown table: one row per (noise, method), last-epoch metrics and the best epoch's accuracy."""
    stats = aggregate(runs)
    lrs = {(r["noise"], r["method"]): r.get("learning_rate") for r in runs}
    lines = [
        "| noise | method | lr | accuracy (greedy) | sampled accuracy (T=1) | clean NLL | best-epoch accuracy | seeds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    keys = sorted({(n, m) for n, m, _ in stats}, key=lambda k: (k[0], method_order(k[1])))
    for noise, method in keys:
        epochs = sorted(e for n, m, e in stats if (n, m) == (noise, method))
        last = stats[noise, method, epochs[-1]]
        best = max(epochs, key=lambda e: stats[noise, method, e]["accuracy"][0])
        cells = [_cell(*last[m]) for m in METRIC_NAMES]
        best_cell = f"{stats[noise, method, best]['accuracy'][0]:.3f} (epoch {best})"
        lr = lrs[noise, method]
        lr_cell = f"{lr:g}" if lr is not None else "-"
        lines.append(
            f"| {noise:g} | {method} | {lr_cell} | {' | '.join(cells)} | {best_cell} | {last['accuracy'][2]} |"
        )
    return "\n".join(lines)


def reading(runs: list[dict]) -> list[str]:
    """One line per noise level: last-epoch differences of PoFT / bi-PoFT from SFT (positive NLL = worse)."""
    stats = aggregate(runs)
    last = max(e for _, _, e in stats)
    lines = []
    for noise in sorted({n for n, _, _ in stats}):
        if (noise, "sft", last) not in stats:
            continue
        sft = stats[noise, "sft", last]
        for method in sorted({m for n, m, _ in stats if n == noise and m != "sft"}, key=method_order):
            if (noise, method, last) in stats:
                other = stats[noise, method, last]
                deltas = [other[m][0] - sft[m][0] for m in METRIC_NAMES]
                lines.append(
                    f"- noise {noise:g}, {method} minus sft after epoch {last}: accuracy {deltas[0]:+.3f}, "
                    f"sampled accuracy {deltas[1]:+.3f}, clean NLL {deltas[2]:+.3f} (seed means; NLL: negative = better)"
                )
    return lines


def _per_seed(runs: list[dict]) -> dict[tuple[float, str, int], list[float]]:
    """(noise, method, seed) -> greedy accuracy per epoch, in epoch order."""
    curves: dict[tuple[float, str, int], dict[int, float]] = {}
    for run in runs:
        curves.setdefault((run["noise"], run["method"], run["seed"]), {})[run["epoch"]] = run["metrics"][
            "accuracy"
        ]
    return {key: [c[e] for e in sorted(c)] for key, c in curves.items()}


def _mean_std(values: list[float]) -> str:
    return f"{np.mean(values):+.3f} ± {np.std(values):.3f}"


# (claim of the paper, method, minus method): last-epoch greedy accuracy differences, same noise level
COMPARISONS = (
    ("PoFT vs SFT (paper: parity on clean data, a gap growing with noise)", "poft", "sft"),
    ("what r_ref adds (PoFT vs the same loss, tau fixed)", "poft", "poft_fixed_tau"),
    ("PoFT vs DFT", "poft", "dft"),
    ("filtering helps SFT (paper)", "top40_sft", "sft"),
    ("filtering stacks with PoFT (paper)", "top40_poft", "top40_sft"),
    ("PoFT vs filtering + SFT", "poft", "top40_sft"),
    ("bounded bi-PoFT (soft) vs PoFT, same rows", "bi_poft_soft", "poft"),
    ("bounded bi-PoFT (margin) vs PoFT, same rows", "bi_poft_margin", "poft"),
    ("original bi-PoFT vs PoFT, same rows", "bi_poft_signed", "poft"),
)


def claims_table(runs: list[dict]) -> list[str]:
    """Per-seed differences of last-epoch greedy accuracy (mean ± std over seeds, wins), and each method's drop
    from its best epoch to its last (the paper's over-fitting signature), per noise level."""
    curves = _per_seed(runs)
    noises = sorted({n for n, _, _ in curves})
    seeds = sorted({s for _, _, s in curves})
    lines = ["| comparison (accuracy, last epoch) | " + " | ".join(f"noise {n:g}" for n in noises) + " |"]
    lines.append("|---|" + "---|" * len(noises))
    for claim, a, b in COMPARISONS:
        cells = []
        for noise in noises:
            pairs = [(curves[noise, a, s][-1], curves[noise, b, s][-1]) for s in seeds
                     if (noise, a, s) in curves and (noise, b, s) in curves]  # fmt: skip
            wins = sum(x > y for x, y in pairs)
            cells.append(
                f"{_mean_std([x - y for x, y in pairs])} ({wins}/{len(pairs)} seeds)" if pairs else "-"
            )
        if any(c != "-" for c in cells):
            lines.append(f"| {claim}: {a} minus {b} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| drop from the best epoch to the last (accuracy) | "
        + " | ".join(f"noise {n:g}" for n in noises)
        + " |",
    ]
    lines.append("|---|" + "---|" * len(noises))
    for method in sorted({m for _, m, _ in curves}, key=method_order):
        cells = []
        for noise in noises:
            drops = [max(curves[noise, method, s]) - curves[noise, method, s][-1] for s in seeds
                     if (noise, method, s) in curves]  # fmt: skip
            cells.append(f"{np.mean(drops):.3f} ± {np.std(drops):.3f}" if drops else "-")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def _kind_means(details: dict) -> list[str]:
    lines = [
        "| noise | row kind | rows | mean r_ref | mean PoFT weight, last epoch |",
        "|---|---|---|---|---|",
    ]
    last_weights: dict[float, dict[str, list[float]]] = {}
    for w in details["poft_weights"]:
        final = max(x["epoch"] for x in details["poft_weights"])
        if w["epoch"] == final:
            for kind, mean in w["mean_weight"].items():
                last_weights.setdefault(w["noise"], {}).setdefault(kind, []).append(mean)
    for panel in details["ref_scores"]:
        kinds, scores = np.array(panel["kind"]), np.array(panel["ref_score"], dtype=float)
        for kind in ("clean", "mismatch", "chars"):
            if (kinds == kind).any():
                weight = last_weights.get(panel["noise"], {}).get(kind)
                weight_cell = f"{np.mean(weight):.3f}" if weight else "-"
                lines.append(
                    f"| {panel['noise']:g} | {kind} | {(kinds == kind).sum()} | "
                    f"{np.nanmean(scores[kinds == kind]):.3f} | {weight_cell} |"
                )
    return lines


def write_report(out: Path, results: dict, details: dict, plots: list[Path]) -> Path:
    """Print the table and write `out/report.md`."""
    table = results_table(results["runs"])
    print(table)
    config = details["config"]
    models = [
        f"| {'base (the target before training)' if name == 'base' else 'aligned ' + name} | "
        f"{m['accuracy']:.3f} | {m['sampled_accuracy']:.3f} | {m['clean_nll']:.3f} |"
        for name, m in details["models"].items()
    ]
    text = [
        "# The PoFT demo: SFT, PoFT and baselines on noisy synthetic data",
        "",
        f"{config['eval_split'].capitalize()} metrics after the last epoch ({config['epochs']} epochs), mean ± std over "
        f"{config['seeds']} seed(s); wall time {details['wall_seconds']:.0f} s.",
        "",
        table,
        "",
        *reading(results["runs"]),
        "",
        "## The paper's claims, per seed (differences: mean ± std over seeds, and on how many seeds it is > 0)",
        "",
        *claims_table(results["runs"]),
        "",
        "## The base and the aligned models (validation prompts)",
        "",
        "| model | accuracy | sampled accuracy | clean NLL |",
        "|---|---|---|---|",
        *models,
        "",
        "## Reference scores and PoFT weights by training-row kind (seed 0 for r_ref; weights over seeds)",
        "",
        *_kind_means(details),
        "",
        "## Figures",
        "",
        *[f"![{p.stem}]({p.name})\n" for p in plots],
        "## Settings",
        "",
        "```",
        *[f"{k}: {v}" for k, v in config.items()],
        "```",
        "",
    ]
    path = out / "report.md"
    path.write_text("\n".join(text))
    return path
