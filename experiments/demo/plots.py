"""The demo's three figures (matplotlib, Agg backend, PNG).

- accuracy_vs_epoch.png: held-out greedy accuracy, sampled accuracy and clean NLL per epoch, one column per
  noise level, one line per method (mean over seeds, band = +-1 std): the paper's noise figure.
- ref_scores.png: reference scores of clean vs noisy training rows (mismatched responses, corrupted
  characters): the paper's Figure 2 analogue; PoFT can only help if these separate.
- poft_weights.png: PoFT's per-row weight tau after the last epoch (seed 0) by row kind, and its mean per
  kind over epochs: the "soft filtering" mechanism itself.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .report import aggregate, method_order  # noqa: E402

COLORS = {"sft": "black", "dft": "tab:gray", "poft": "tab:blue", "poft_fixed_tau": "tab:cyan",
          "top40_sft": "tab:brown", "top40_poft": "tab:purple", "bi_poft_soft": "tab:green",
          "bi_poft_margin": "tab:olive", "bi_poft_signed": "tab:red"}  # fmt: skip
KIND_COLORS = {"clean": "tab:blue", "mismatch": "tab:red", "chars": "tab:orange"}
METRICS = (
    ("accuracy", "greedy accuracy"),
    ("sampled_accuracy", "sampled accuracy (T=1)"),
    ("clean_nll", "clean NLL"),
)


def write_plots(out: Path, results: dict, details: dict) -> list[Path]:
    """Write the three PNGs into `out`; returns their paths."""
    paths = [out / "accuracy_vs_epoch.png", out / "ref_scores.png", out / "poft_weights.png"]
    plot_metrics(results["runs"], paths[0])
    plot_ref_scores(details["ref_scores"], paths[1])
    plot_weights(details["poft_weights"], paths[2])
    return paths


def plot_metrics(runs: list[dict], path: Path) -> None:
    stats = aggregate(runs)
    noises = sorted({n for n, _, _ in stats})
    methods = sorted({k[1] for k in stats}, key=method_order)
    fig, axes = plt.subplots(len(METRICS), len(noises), figsize=(4 * len(noises), 8), squeeze=False)
    for col, noise in enumerate(noises):
        for row, (metric, label) in enumerate(METRICS):
            ax = axes[row][col]
            for method in methods:
                epochs = sorted(e for n, m, e in stats if n == noise and m == method)
                if not epochs:
                    continue
                mean = np.array([stats[noise, method, e][metric][0] for e in epochs])
                std = np.array([stats[noise, method, e][metric][1] for e in epochs])
                color = COLORS.get(method.split("@")[0])
                ax.plot(epochs, mean, marker="o", markersize=3, color=color, label=method)
                ax.fill_between(epochs, mean - std, mean + std, color=color, alpha=0.1)
            ax.set_xlabel("epoch")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
            if row == 0:
                ax.set_title(f"noise {noise:g}")
    handles = {h.get_label(): h for ax in axes.flat for h in ax.get_lines()}
    axes[0][0].legend(
        [handles[m] for m in methods if m in handles],
        [m for m in methods if m in handles],
        fontsize="x-small",
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_ref_scores(ref_scores: list[dict], path: Path) -> None:
    panels = [p for p in ref_scores if p["noise"] > 0] or ref_scores
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.5), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        kinds = np.array(panel["kind"])
        scores = np.array(panel["ref_score"], dtype=float)
        bins = np.linspace(np.nanmin(scores), np.nanmax(scores), 40)
        for kind in ("clean", "mismatch", "chars"):
            if (kinds == kind).any():
                ax.hist(scores[kinds == kind], bins=bins, alpha=0.55, color=KIND_COLORS[kind], label=kind)
        ax.set_title(f"training rows, noise {panel['noise']:g}")
        ax.set_xlabel("reference score r_ref (mean log-prob per token)")
        ax.set_ylabel("rows")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_weights(weights: list[dict], path: Path) -> None:
    if not weights:  # no PoFT run in this configuration
        fig, ax = plt.subplots(figsize=(4, 2))
        ax.text(0.5, 0.5, "no PoFT run", ha="center", va="center")
        ax.axis("off")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return
    noises = sorted({w["noise"] for w in weights if w["noise"] > 0}) or sorted({w["noise"] for w in weights})
    fig, axes = plt.subplots(2, max(1, len(noises)), figsize=(4.5 * max(1, len(noises)), 7), squeeze=False)
    for col, noise in enumerate(noises):
        rows = [w for w in weights if w["noise"] == noise]
        last = max((w for w in rows if "weight" in w), key=lambda w: w["epoch"])
        kinds, tau = np.array(last["kind"]), np.array(last["weight"])
        ax = axes[0][col]
        for kind in ("clean", "mismatch", "chars"):
            if (kinds == kind).any():
                ax.hist(tau[kinds == kind], bins=np.linspace(0, tau.max() * 1.02, 40), alpha=0.55,
                        color=KIND_COLORS[kind], label=kind)  # fmt: skip
        ax.set_title(f"PoFT weight tau after epoch {last['epoch']}, noise {noise:g}, seed 0")
        ax.set_xlabel("tau = beta * sigmoid(beta (r_ref - r_theta) - gamma)")
        ax.legend()
        ax = axes[1][col]
        for kind in ("clean", "mismatch", "chars"):
            epochs = sorted({w["epoch"] for w in rows if kind in w["mean_weight"]})
            if epochs:
                means = [np.mean([w["mean_weight"][kind] for w in rows if w["epoch"] == e]) for e in epochs]
                ax.plot(epochs, means, marker="o", color=KIND_COLORS[kind], label=kind)
        ax.set_xlabel("epoch")
        ax.set_ylabel("mean tau (over rows and seeds)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
