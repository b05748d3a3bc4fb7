"""`poft inspect`: a data-quality audit of a `poft score` folder, before anything is trained on it.

r_ref is the quantity PoFT leans on (its weight tau and the filtering study both rank rows by it), so it
is worth looking at: how each aligned model's scores are spread, whether the aligned models agree
(correlations), how many rows were truncated or dropped, and above all the rows at both ends. The lowest
rows are where broken data (wrong answers paired with questions, garbled text) ends up; the highest are
often trivial or repetitive. Both lists are printed so a user can decide on a filter.

Out (in `output`): summary.json (counts, mean, std, quantiles, Pearson and Spearman correlations,
truncation and drop counts), scores_<name>.png per aligned model and for ref_score, scores_all.png with
every distribution on one axis, extremes.txt (the lowest and highest rows).

After training, `--weights RUN` reads the per-row weights `poft train` wrote (`row_weights/epoch-N.jsonl`,
the last epoch unless one file is named) beside the scores: tau's mean and quantiles per label (the rows'
`label`, or the `--by-label` column of the scores, joined on `id`), the rows with the lowest tau (the ones
PoFT leaned on least) in extremes.txt, and weights.png (tau's distribution per label).
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
from datasets import Dataset

from .arrow_rows import float_column
from .io_errors import writing
from .model_files import check_not_model_folder
from .readers import read_sft

QUANTILES = (0.0, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 1.0)
ROW_WEIGHTS_DIR = "row_weights"  # records.ROW_WEIGHTS_DIR (records imports transformers; inspect stays light)


def read_scored(folder: str | Path) -> tuple[Dataset, dict]:
    """The scored dataset (through `readers.read_sft`, which refuses an unfinished `poft score` folder) and
    its `poft score` manifest (for a `poft filter` folder, the one it was cut from; {} when there is none:
    aliases then come from the columns and scores are taken as token-normalised). A model folder given by
    mistake is named as one (datasets would fail on its config.json with "DatasetGenerationError")."""
    folder = Path(folder)
    check_not_model_folder(folder)
    dataset = read_sft(str(folder), on_bad_row="skip").dataset
    manifest = {}
    if (folder / "manifest.json").exists():
        manifest = json.loads((folder / "manifest.json").read_text())
    elif (folder / "filter.json").exists():
        manifest = json.loads((folder / "filter.json").read_text()).get("score_manifest", {})
    return dataset, manifest


PROMPT_SCORES = ("ref_pmi", "ref_ifd", "ref_combined")  # per-row scores of `poft score --uncond`


def aligned_aliases(dataset: Dataset, manifest: dict) -> list[str]:
    """Aliases from the manifest, else from columns with both `<alias>_logp_sum` and `<alias>_n_tokens`
    (except the prompt-free `<alias>_uncond_...` columns of `poft score --uncond`)."""
    if manifest.get("models"):
        return [m["alias"] for m in manifest["models"]]
    columns = set(dataset.column_names)
    aliases = [c.removesuffix("_logp_sum") for c in dataset.column_names if c.endswith("_logp_sum")]
    found = [alias for alias in aliases if f"{alias}_n_tokens" in columns]
    return [a for a in found if a.removesuffix("_uncond") == a or a.removesuffix("_uncond") not in found]


def model_scores(dataset: Dataset, manifest: dict) -> dict[str, np.ndarray]:
    """Each aligned model's normalised score r_m (as `poft score` normalised it) and `ref_score`."""
    normalization = manifest.get("normalization", "token")
    scores = {}
    for alias in aligned_aliases(dataset, manifest):
        sums = float_column(dataset, f"{alias}_logp_sum")
        counts = float_column(dataset, f"{alias}_n_tokens")
        if normalization == "token":
            denominator = np.maximum(counts, 1.0)
        elif normalization == "byte":
            denominator = np.maximum(float_column(dataset, "response_bytes"), 1.0)
        else:
            denominator = np.ones_like(sums)
        scores[alias] = np.where(counts > 0, sums / denominator, np.nan)
    if "ref_score" not in dataset.column_names:
        raise ValueError(f"no `ref_score` column (columns: {dataset.column_names}); run `poft score` first")
    scores["ref_score"] = float_column(dataset, "ref_score")
    for name in PROMPT_SCORES:  # written by `poft score --uncond` (pointwise.py): PMI, IFD, combination
        if name in dataset.column_names:
            scores[name] = float_column(dataset, name)
    return scores


def summarise(scores: dict[str, np.ndarray], dataset: Dataset, manifest: dict) -> dict:
    """Per-score statistics, correlations between models, and truncation / drop counts."""
    stats = {}
    for name, values in scores.items():
        finite = values[np.isfinite(values)]
        stats[name] = {
            "count": int(len(finite)),
            "n_missing": int(len(values) - len(finite)),
            "mean": float(finite.mean()) if len(finite) else None,
            "std": float(finite.std()) if len(finite) else None,
            "quantiles": {f"{q:g}": float(np.quantile(finite, q)) for q in QUANTILES} if len(finite) else {},
        }
    frame = pd.DataFrame(scores)
    truncated = {
        alias: int(np.sum(dataset[f"{alias}_truncated"]))
        for alias in scores
        if f"{alias}_truncated" in dataset.column_names
    }
    counts = manifest.get("counts", {})
    return {
        "n_rows": len(dataset),
        "normalization": manifest.get("normalization", "token"),
        "scores": stats,
        "pearson": frame.corr(method="pearson").round(6).to_dict(),
        "spearman": frame.corr(method="spearman").round(6).to_dict(),
        "truncated": truncated,
        "dropped_when_scoring": counts.get("dropped", 0),
        "ref_score_nan": stats["ref_score"]["n_missing"],
    }


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """P(score of a random positive row > score of a random other row), ties counting one half (the
    Mann-Whitney form of the ROC AUC); None when either side is empty. 1.0: the score separates perfectly."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return None
    ranks = pd.Series(scores).rank(method="average").to_numpy()
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def label_classes(dataset: Dataset, column: str) -> np.ndarray:
    """The label column as text classes ("True", "clean", "3"); rows without a label are "" (left out)."""
    if column not in dataset.column_names:
        raise ValueError(f"--by-label {column!r}: no such column (columns: {dataset.column_names})")
    return np.array(["" if v is None else str(v) for v in dataset[column]], dtype=object)


def separation_by_label(scores: dict[str, np.ndarray], classes: np.ndarray, column: str) -> dict:
    """For each score: per class its count and mean, and the one-vs-rest ROC AUC of the score for telling
    that class from the others (rows without a label or a finite score are left out)."""
    labelled = classes != ""
    names = sorted(set(classes[labelled]))
    out = {
        "column": column,
        "classes": {c: int((classes == c).sum()) for c in names},
        "n_unlabelled": int((~labelled).sum()),
        "scores": {},
    }
    for name, values in scores.items():
        keep = labelled & np.isfinite(values)
        v, c = values[keep], classes[keep]
        out["scores"][name] = {
            "mean": {k: float(v[c == k].mean()) if (c == k).any() else None for k in names},
            "auc": {k: roc_auc(v, c == k) for k in names},
        }
    return out


def plot_by_label(
    scores: dict[str, np.ndarray],
    classes: np.ndarray,
    column: str,
    output: Path,
    normalization: str = "token",
) -> Path:
    """One panel per score: a histogram per label class, with each class's AUC in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted(set(classes[classes != ""]))
    fig, axes = plt.subplots(len(scores), 1, figsize=(7, 2.6 * len(scores)), squeeze=False)
    for ax, (name, values) in zip(axes[:, 0], scores.items(), strict=True):
        keep = np.isfinite(values) & (classes != "")
        bins = np.histogram_bin_edges(values[keep] if keep.any() else np.zeros(1), bins=40)
        for label in names:
            chosen = keep & (classes == label)
            auc = roc_auc(values[keep], classes[keep] == label)
            auc_text = f", AUC {auc:.2f}" if auc is not None else ""
            legend = f"{column}={label} (n={int(chosen.sum())}{auc_text})"
            ax.hist(values[chosen], bins=bins, density=True, histtype="step", linewidth=1.5, label=legend)
        ax.set(title=name, xlabel=AXIS_LABELS[normalization], ylabel="density")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = output / f"scores_by_{column}.png"
    with writing(path):
        fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


AXIS_LABELS = {
    "token": "mean log-prob per response token",
    "byte": "log-prob per response byte",
    "none": "sum of response log-probs",
}


def plot_scores(scores: dict[str, np.ndarray], output: Path, normalization: str = "token") -> list[Path]:
    """A histogram (density) per score, plus all of them on one axis; returns the PNG paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finite = {name: v[np.isfinite(v)] for name, v in scores.items()}
    every = np.concatenate([v for v in finite.values() if len(v)] or [np.zeros(1)])
    bins = np.histogram_bin_edges(every, bins=min(60, max(10, int(np.sqrt(len(every))))))
    paths = []
    for name, values in finite.items():
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.hist(values, bins=bins, density=True, color="tab:orange" if name == "ref_score" else "tab:blue")
        if len(values):
            ax.axvline(float(np.median(values)), color="black", linestyle="--", label="median")
            ax.legend()
        ax.set(title=f"{name} (n={len(values)})", xlabel=AXIS_LABELS[normalization], ylabel="density")
        fig.tight_layout()
        paths.append(output / f"scores_{name}.png")
        with writing(paths[-1]):
            fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, values in finite.items():
        width = 2 if name == "ref_score" else 1.2
        ax.hist(values, bins=bins, density=True, histtype="step", linewidth=width, label=name)
    ax.set(title="score distributions", xlabel=AXIS_LABELS[normalization], ylabel="density")
    ax.legend()
    fig.tight_layout()
    paths.append(output / "scores_all.png")
    with writing(paths[-1]):
        fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths


def format_row(row: dict, row_scores: dict[str, float], width: int = 100, max_chars: int = 400) -> str:
    """One example, readable: id, every score, then each message shortened to max_chars."""
    head = ", ".join(f"{name}={value:.3f}" for name, value in row_scores.items())
    lines = [f"id={row.get('id')}  {head}"]
    for message in row.get("messages") or []:
        content = str(message.get("content", ""))
        if len(content) > max_chars:
            content = content[:max_chars] + f" [... {len(content) - max_chars} more chars]"
        indent = "    "
        wrapped = textwrap.fill(
            content, width=width, initial_indent=indent, subsequent_indent=indent, replace_whitespace=False
        )
        lines.append(f"  [{message.get('role')}]\n{wrapped}")
    return "\n".join(lines)


def extremes(dataset: Dataset, scores: dict[str, np.ndarray], k: int) -> tuple[list[int], list[int]]:
    """Row indices of the k lowest and k highest finite ref_scores (ties in input order)."""
    ref = scores["ref_score"]
    finite = np.flatnonzero(np.isfinite(ref))
    ascending = finite[np.lexsort((finite, ref[finite]))]
    descending = finite[np.lexsort((finite, -ref[finite]))]
    return ascending[:k].tolist(), descending[:k].tolist()


def inspect_scores(
    folder: str | Path,
    output: str | Path | None = None,
    k: int = 5,
    by_label: str | None = None,
    weights: str | Path | None = None,
) -> dict:
    """Write the audit (summary.json, PNGs, extremes.txt) to `output` (default FOLDER/inspect); return it.

    by_label: a column of row labels (e.g. which rows are known noise): per-label histograms
    (scores_by_<column>.png) and each score's ROC AUC for telling each label from the others (summary.json).
    weights: a `poft train` output folder, its row_weights/ folder or one epoch-N.jsonl: tau per label and the
    k rows with the lowest tau (`inspect_weights`).
    """
    dataset, manifest = read_scored(folder)
    scores = model_scores(dataset, manifest)
    classes = label_classes(dataset, by_label) if by_label else None
    output = Path(output) if output is not None else Path(folder) / "inspect"
    output.mkdir(parents=True, exist_ok=True)
    summary = summarise(scores, dataset, manifest)
    summary["figures"] = [str(p) for p in plot_scores(scores, output, summary["normalization"])]
    if classes is not None:
        summary["by_label"] = separation_by_label(scores, classes, by_label)
        summary["figures"].append(
            str(plot_by_label(scores, classes, by_label, output, summary["normalization"]))
        )
    lowest, highest = extremes(dataset, scores, k)
    sections = []
    for title, rows in (
        (f"{len(lowest)} lowest ref_score", lowest),
        (f"{len(highest)} highest ref_score", highest),
    ):
        blocks = [format_row(dataset[i], {n: float(s[i]) for n, s in scores.items()}) for i in rows]
        sections.append(f"==== {title} ====\n\n" + "\n\n".join(blocks))
    summary["lowest_ids"] = [dataset[i].get("id") for i in lowest]
    summary["highest_ids"] = [dataset[i].get("id") for i in highest]
    if weights is not None:
        summary["weights"], section = inspect_weights(weights, dataset, k, by_label, output)
        summary["figures"].append(summary["weights"]["figure"])
        sections.append(section)
    with writing(output / "extremes.txt"):
        (output / "extremes.txt").write_text("\n\n".join(sections) + "\n")
    with writing(output / "summary.json"):
        (output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    summary["extremes_text"] = "\n\n".join(sections)
    return summary


def row_weights_file(path: str | Path) -> Path:
    """PATH when it is a file; else the last `epoch-N.jsonl` of PATH/row_weights/ (a run folder) or of PATH."""
    path = Path(path)
    if path.is_file():
        return path
    folder = path / ROW_WEIGHTS_DIR if (path / ROW_WEIGHTS_DIR).is_dir() else path
    files = sorted(folder.glob("epoch-*.jsonl"), key=lambda f: int(f.stem.removeprefix("epoch-") or 0))
    if not files:
        raise ValueError(
            f"--weights {path}: no {ROW_WEIGHTS_DIR}/epoch-N.jsonl there (`poft train` writes one per epoch into "
            "its output folder, with objective poft or bi_poft)"
        )
    return files[-1]


def read_row_weights(path: str | Path) -> pd.DataFrame:
    """The per-row weights of one epoch (`row_weights_file`): one row per training row, in row order."""
    file = row_weights_file(path)
    weights = pd.read_json(file, lines=True, dtype=False)
    missing = {"tau", "r_ref", "r_theta"} - set(weights.columns)
    if len(weights) == 0 or missing:
        raise ValueError(f"--weights {file}: not a row-weights file of `poft train` (no {sorted(missing)})")
    weights.attrs["file"] = str(file)
    return weights


def weight_stats(values: np.ndarray) -> dict:
    """count, mean, std and quantiles of tau (the finite values)."""
    finite = values[np.isfinite(values)]
    if not len(finite):
        return {"count": 0}
    quantiles = {f"{q:g}": float(np.quantile(finite, q)) for q in QUANTILES}
    return {
        "count": len(finite),
        "mean": float(finite.mean()),
        "std": float(finite.std()),
        "quantiles": quantiles,
    }


def inspect_weights(
    path: str | Path, dataset: Dataset, k: int, by_label: str | None, output: Path
) -> tuple[dict, str]:
    """tau per label (`by_label` of the scores joined on id, else the weights' own `label`), the k rows with the
    lowest tau (their text from the scores), and weights.png; returns (summary part, extremes.txt section)."""
    weights = read_row_weights(path)
    where = {}  # id -> row of the scores (the first, when an id repeats)
    for i, row_id in enumerate(dataset["id"]):
        where.setdefault(row_id, i)
    rows = [where.get(row_id) for row_id in weights["id"]] if "id" in weights else [None] * len(weights)
    column = by_label if by_label else ("label" if "label" in weights else None)
    classes = None
    if by_label:
        values = label_classes(dataset, by_label)
        classes = np.array(["" if i is None else values[i] for i in rows], dtype=object)
    elif column:
        classes = np.array(["" if v is None else str(v) for v in weights["label"]], dtype=object)
    tau = weights["tau"].to_numpy(dtype=np.float64)
    names = sorted(set(classes[classes != ""])) if classes is not None else []
    order = np.lexsort((np.arange(len(tau)), tau))[:k]
    blocks = []
    for j in order:
        line = weights.iloc[j]
        values = {name: float(line[name]) for name in ("tau", "r_theta", "r_ref")}
        found = rows[j] is not None
        blocks.append(format_row(dataset[rows[j]] if found else {"id": line.get("id")}, values))
    file = weights.attrs["file"]
    epoch = int(weights["epoch"].max()) if "epoch" in weights else None
    part = {
        "file": file,
        "epoch": epoch,
        "n_rows": len(weights),
        "n_not_in_scores": sum(i is None for i in rows),
        "column": column,
        "tau": {"all": weight_stats(tau), **{c: weight_stats(tau[classes == c]) for c in names}},
        "lowest_ids": [weights.iloc[j].get("id") for j in order],
        "figure": str(plot_weights(tau, classes, column, output, epoch)),
    }
    title = f"==== {len(order)} lowest tau (epoch {epoch}, {file}) ====\n\n"
    return part, title + "\n\n".join(blocks)


def plot_weights(
    tau: np.ndarray, classes: np.ndarray | None, column: str | None, output: Path, epoch: int | None = None
) -> Path:
    """A histogram of tau, one per label class when there are labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    keep = np.isfinite(tau)
    bins = np.histogram_bin_edges(tau[keep] if keep.any() else np.zeros(1), bins=40)
    groups = sorted(set(classes[classes != ""])) if classes is not None else []
    for label in groups or [None]:
        chosen = keep if label is None else keep & (classes == label)
        name = "all rows" if label is None else f"{column}={label}"
        mean = f", mean {tau[chosen].mean():.3f}" if chosen.any() else ""
        ax.hist(
            tau[chosen], bins=bins, histtype="step", linewidth=1.5, label=f"{name} (n={chosen.sum()}{mean})"
        )
    ax.set(title=f"per-row weight tau (epoch {epoch})", xlabel="tau", ylabel="rows")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = output / "weights.png"
    with writing(path):
        fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def summary_table(summary: dict) -> str:
    """Plain-text table of the per-score statistics and the correlation matrix."""
    lines = [
        f"{'score':<20} {'count':>7} {'missing':>7} {'mean':>9} {'std':>8} {'p5':>9} {'p50':>9} {'p95':>9}"
    ]
    for name, s in summary["scores"].items():
        q = s["quantiles"]
        if s["count"]:
            lines.append(
                f"{name:<20} {s['count']:>7} {s['n_missing']:>7} {s['mean']:>9.4f} {s['std']:>8.4f} "
                f"{q['0.05']:>9.4f} {q['0.5']:>9.4f} {q['0.95']:>9.4f}"
            )
        else:
            lines.append(f"{name:<20} {0:>7} {s['n_missing']:>7}")
    names = list(summary["scores"])
    lines.append("\nSpearman correlation\n" + " " * 20 + "".join(f"{n[:10]:>11}" for n in names))
    for a in names:
        row = "".join(f"{summary['spearman'][a].get(b, float('nan')):>11.3f}" for b in names)
        lines.append(f"{a:<20}{row}")
    lines.append(
        f"\ntruncated: {summary['truncated']}; dropped when scoring: {summary['dropped_when_scoring']}; "
        f"ref_score NaN: {summary['ref_score_nan']}"
    )
    if "by_label" in summary:
        by = summary["by_label"]
        classes = list(by["classes"])
        counts = ", ".join(f"{c}: {n}" for c, n in by["classes"].items())
        lines.append(
            f"\nROC AUC of each score for telling {by['column']}=<class> from the other rows ({counts} rows)"
        )
        lines.append(" " * 20 + "".join(f"{c[:10]:>11}" for c in classes))
        for name, s in by["scores"].items():
            cells = "".join(
                f"{s['auc'][c]:>11.3f}" if s["auc"][c] is not None else f"{'-':>11}" for c in classes
            )
            lines.append(f"{name:<20}{cells}")
    if "weights" in summary:
        lines.append(weights_table(summary["weights"]))
    return "\n".join(lines)


def weights_table(weights: dict) -> str:
    """tau's count, mean and quantiles, over all rows and per label class."""
    lines = [
        f"\nper-row weight tau, epoch {weights['epoch']} ({weights['file']}; {weights['n_rows']} rows, "
        f"{weights['n_not_in_scores']} not in the scores)",
        f"{'rows':<20} {'count':>7} {'mean':>9} {'p5':>9} {'p25':>9} {'p50':>9} {'p95':>9}",
    ]
    for name, s in weights["tau"].items():
        label = name if name == "all" else f"{weights['column']}={name}"
        if not s["count"]:
            lines.append(f"{label:<20} {0:>7}")
            continue
        q = s["quantiles"]
        cells = "".join(f" {q[p]:>9.4f}" for p in ("0.05", "0.25", "0.5", "0.95"))
        lines.append(f"{label:<20} {s['count']:>7} {s['mean']:>9.4f}{cells}")
    return "\n".join(lines)
