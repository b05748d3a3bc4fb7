"""How much the prompt raises a response's likelihood: PMI, IFD and their combination with r_ref.

Per aligned model m, from the response's log-prob sum and token count with its prompt (`cond`) and without
it (`uncond`, the prompt-free render of `unconditional`), both over the same response tokens:

    per-token log-prob   c = cond_sum / cond_n,   u = uncond_sum / uncond_n
    PMI_m = c - u        (nats per token; > 0 when the prompt makes the response more likely)
    IFD_m = c / u        (= L(y|x) / L(y), the ratio of the mean token losses: Li et al. 2023, "From Quantity
                         to Quality: Boosting LLM Performance with Self-Guided Data Selection for Instruction
                         Tuning", NAACL 2024 (arXiv:2308.12032): the conditioned answer score over the direct
                         answer score, both mean cross-entropies (a ratio of losses, not of perplexities);
                         IFD > 1 means the prompt does not help: IFD-based selection drops such rows)

and per row `ref_pmi` and `ref_ifd`, their means over the models. A row with no response token under some
model (cut away by max_length) has NaN there, as `ref_score` has. A wrong-prompt row has PMI near 0 or below
(IFD near 1 or above); a clean answer has PMI > 0 (IFD < 1).

`ref_combined = ref_score - COMBINED_WEIGHT * ref_ifd` keeps r_ref's view of corrupted text and takes off
what the prompt does not explain: see `combined` for the form, the weight and how they were chosen.
"""

from __future__ import annotations

import numpy as np

COMBINED_WEIGHT = 4.0  # lambda of ref_combined, chosen on half of the real noisy rows (docs/RESULTS.md)


def per_token(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """sum / count per row, NaN where no token was scored."""
    sums, counts = np.asarray(sums, dtype=np.float64), np.asarray(counts, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1.0), np.nan)


def pmi(cond_sum, cond_n, uncond_sum, uncond_n) -> np.ndarray:
    """Per-token pointwise mutual information of prompt and response under one model: c - u (nats/token)."""
    return per_token(cond_sum, cond_n) - per_token(uncond_sum, uncond_n)


def ifd(cond_sum, cond_n, uncond_sum, uncond_n) -> np.ndarray:
    """Instruction-following difficulty under one model: mean conditional over mean unconditional token loss
    (NaN where the unconditional loss is 0, i.e. the response is certain without its prompt)."""
    uncond = per_token(uncond_sum, uncond_n)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(uncond != 0, per_token(cond_sum, cond_n) / uncond, np.nan)


def combined(ref_score: np.ndarray, ref_ifd: np.ndarray, weight: float = COMBINED_WEIGHT) -> np.ndarray:
    """r_ref - weight * IFD: higher is cleaner on both counts. IFD rather than PMI: IFD is bounded (clean
    answers 0.1-0.95, wrong-prompt ones about 1) where PMI has a long tail on clean rows (up to 10 nats) and
    is large on corrupted ones (the prompt still predicts their words), so a sum with PMI trades corrupted
    rows for wrong-prompt ones; IFD is also higher on corrupted rows than on clean ones, so it loses none.
    The weight was chosen on one half of the real noisy rows and checked on the other (docs/RESULTS.md)."""
    return np.asarray(ref_score, dtype=np.float64) - weight * np.asarray(ref_ifd, dtype=np.float64)


def row_scores(per_model: list[dict[str, np.ndarray]], ref_score: np.ndarray) -> dict[str, np.ndarray]:
    """`ref_pmi`, `ref_ifd` and `ref_combined` of every row from each model's four arrays (`cond_sum`,
    `cond_n`, `uncond_sum`, `uncond_n`): the mean over models, as `ref_score` is."""
    args = [(m["cond_sum"], m["cond_n"], m["uncond_sum"], m["uncond_n"]) for m in per_model]
    ref_pmi = np.mean([pmi(*a) for a in args], axis=0)
    ref_ifd = np.mean([ifd(*a) for a in args], axis=0)
    return {"ref_pmi": ref_pmi, "ref_ifd": ref_ifd, "ref_combined": combined(ref_score, ref_ifd)}
