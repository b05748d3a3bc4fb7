"""`poft score` on real aligned models equals an independent full-forward reference (float32, within 1e-4).

The reference is written here from transformers alone, not from poft's chat.py / logprobs.py: the chat
template renders the prompt (with the generation prompt) and the whole conversation; the response tokens are
those after the prompt's tokens up to and including the end-of-turn token that closes the answer; the full
logits of one unbatched forward pass give log p of each of them; the row's score is their mean. SmolLM2
(49k vocabulary, its template adds a default system prompt) and Qwen2.5-Coder (152k vocabulary) disagree on
every tokenisation, so a poft that scored one model's tokens with the other's positions would show here.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import MODELS, reference_scores, run_poft

END_OF_TURN = {"smol": "<|im_end|>", "qwen": "<|im_end|>"}  # what both ChatML templates close a turn with
TOLERANCE = 1e-4


@pytest.mark.parametrize("alias", ["smol", "qwen"])
def test_score_equals_full_forward_reference(alias, scored, real_models, noisy_rows):
    from datasets import load_from_disk

    out = load_from_disk(str(scored))
    assert out["id"] == [r["id"] for r in noisy_rows]  # input order kept
    poft_counts = np.array(out[f"{alias}_n_tokens"])
    poft_means = np.array(out[f"{alias}_logp_sum"]) / poft_counts
    ref_means, ref_counts = reference_scores(real_models[alias], noisy_rows, END_OF_TURN[alias])
    differ = [r["id"] for r, a, b in zip(noisy_rows, poft_counts, ref_counts, strict=True) if a != b]
    assert not differ, f"{alias}: response token counts differ from the reference on rows {differ}"
    diff = np.abs(poft_means - ref_means)
    print(f"{alias} ({MODELS[alias]}): max |poft - reference| = {diff.max():.3g} over {len(diff)} rows "
          f"(mean score {ref_means.mean():.4f}, {ref_counts.sum()} response tokens)")  # fmt: skip
    assert diff.max() < TOLERANCE, (alias, diff.max(), noisy_rows[int(diff.argmax())]["id"])
    assert not any(out[f"{alias}_truncated"])


def test_ref_score_is_the_mean_of_both_models(scored):
    from datasets import load_from_disk

    out = load_from_disk(str(scored))
    manifest = json.loads((scored / "manifest.json").read_text())
    assert [m["alias"] for m in manifest["models"]] == ["smol", "qwen"]
    per_model = [np.array(out[f"{a}_logp_sum"]) / np.array(out[f"{a}_n_tokens"]) for a in ("smol", "qwen")]
    np.testing.assert_allclose(np.array(out["ref_score"]), np.mean(per_model, axis=0), atol=1e-6)


def test_inspect_by_noise_kind(scored, tmp_path):
    """`poft inspect --by-label noise`: finite ROC AUCs per model and for ref_score; real aligned models tell
    character corruption from the other rows far better than chance."""
    run_poft(["inspect", str(scored), "--by-label", "noise", "--output", str(tmp_path)])
    summary = json.loads((tmp_path / "summary.json").read_text())
    by = summary["by_label"]
    assert by["classes"] == {"clean": 40, "corrupted": 5, "wrong_prompt": 5}
    for name in ("smol", "qwen", "ref_score"):
        aucs = by["scores"][name]["auc"]
        assert all(np.isfinite(aucs[k]) for k in ("clean", "corrupted", "wrong_prompt")), (name, aucs)
    # one-vs-rest AUC of "corrupted": P(a corrupted row scores above another row); low = separated
    assert by["scores"]["ref_score"]["auc"]["corrupted"] < 0.2, by["scores"]["ref_score"]
    assert by["scores"]["ref_score"]["auc"]["clean"] > 0.5, by["scores"]["ref_score"]
    assert (tmp_path / "scores_by_noise.png").exists()
