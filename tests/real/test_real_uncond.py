"""`poft score --uncond` on real aligned models: the prompt-free scores equal an independent reference
(float32, within 1e-4), and PMI tells a right answer to the wrong prompt from the clean answers.

The reference is written here from transformers alone: the model's own chat template renders the prompt-free
conversation (an empty user turn, then the answer) and its generation prompt; the response tokens are those
after the generation prompt's up to and including the end-of-turn token; one unbatched full forward pass.
Six rows keep it under a minute: the first 4 clean rows, the first corrupted row and the second wrong_prompt
row. Not the first: alpaca-1 answers "Transform the following sentence using a synonym" with "Bright, cheerful,
warm.", a short generic answer that fits its prompt's kind; its IFD is 0.954, one of the 5 of 25 wrong-prompt
rows below 1 (docs/RESULTS.md), where the detector is known to miss.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import NOISY, read_jsonl, run_poft

TOLERANCE = 1e-4
ALIASES = ("smol", "qwen")


@pytest.fixture(scope="module")
def few_rows() -> list[dict]:
    rows = read_jsonl(NOISY)
    clean = [r for r in rows if r["noise"] == "clean"][:4]
    wrong = [r for r in rows if r["noise"] == "wrong_prompt"][1]
    return [*clean, wrong, next(r for r in rows if r["noise"] == "corrupted")]


@pytest.fixture(scope="module")
def scored_uncond(real_models, few_rows, tmp_path_factory):
    from datasets import load_from_disk

    root = tmp_path_factory.mktemp("real-uncond")
    data = root / "few.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in few_rows), encoding="utf-8")
    models = [arg for alias in ALIASES for arg in ("--model", f"{alias}={real_models[alias]}")]
    run_poft(["score", "--dataset", str(data), *models, "--output", str(root / "out"), "--dtype", "float32",
              "--uncond", "--no-progress"])  # fmt: skip
    return load_from_disk(str(root / "out")), json.loads((root / "out" / "manifest.json").read_text())


def prompt_free_reference(folder, rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Per row: mean log p of the answer + end-of-turn after an empty user turn, and how many tokens."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")  # both models' ChatML end of turn
    means, counts = [], []
    for row in rows:
        messages = [{"role": "user", "content": ""}, {"role": "assistant", "content": row["output"]}]
        prompt = tokenizer.apply_chat_template(messages[:1], add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids
        ids = tokenizer(full, add_special_tokens=False).input_ids
        assert ids[: len(prompt_ids)] == prompt_ids, row["id"]
        end = ids.index(end_id, len(prompt_ids))
        positions = torch.arange(len(prompt_ids), end + 1)
        with torch.inference_mode():
            logits = model(torch.tensor([ids])).logits[0].float()
        logp = torch.log_softmax(logits, dim=-1)[positions - 1, torch.tensor(ids)[positions]]
        means.append(logp.mean().item())
        counts.append(len(positions))
    return np.array(means), np.array(counts)


@pytest.mark.parametrize("alias", ALIASES)
def test_uncond_scores_equal_the_prompt_free_reference(alias, scored_uncond, real_models, few_rows):
    out, manifest = scored_uncond
    counts = np.array(out[f"{alias}_uncond_n_tokens"])
    assert (counts == np.array(out[f"{alias}_n_tokens"])).all()  # the same response tokens
    means = np.array(out[f"{alias}_uncond_logp_sum"]) / counts
    ref_means, ref_counts = prompt_free_reference(real_models[alias], few_rows)
    assert counts.tolist() == ref_counts.tolist()
    diff = np.abs(means - ref_means)
    print(f"{alias}: max |poft - reference| of the prompt-free mean log-prob = {diff.max():.3g}")
    assert diff.max() < TOLERANCE
    assert manifest["unconditional"]["response_differs"][alias] == 0


def test_pmi_separates_the_wrong_prompt_row(scored_uncond):
    out, _ = scored_uncond
    assert out.column_names[-5:] == ["ref_score", "ref_pmi", "ref_ifd", "ref_combined", "score_provenance"]
    noise, pmi, ifd = out["noise"], np.array(out["ref_pmi"]), np.array(out["ref_ifd"])
    clean = np.array([n == "clean" for n in noise])
    wrong = noise.index("wrong_prompt")
    print(f"ref_pmi clean {np.round(pmi[clean], 3).tolist()}, wrong_prompt {pmi[wrong]:.3f}")
    assert pmi[wrong] < 0 < pmi[clean].min()  # the prompt makes a right answer more likely, not this one
    assert ifd[wrong] > 1 > ifd[clean].max()
