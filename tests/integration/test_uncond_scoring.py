"""`poft score --uncond` against a naive reference: each response scored alone in its prompt-free render.

The reference renders the conversation with system messages removed and user contents emptied, encodes it
with `ChatFormat.encode`, keeps as many response tokens as the conditional encoding kept (max_length cuts
some), and runs one full-logits forward per row. The scorer's unconditional token counts must equal it
exactly and its log-prob sums to 1e-5 relative, under three templates (ChatML with generation markers,
Llama-3-style, Zephyr-style), through multi-turn rows, system prompts, truncation, shards and resume.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import test_scoring  # this folder is on sys.path
import torch
from fixtures.scoring import score  # tests/ is on sys.path
from test_scoring import FAMILIES, make_rows, rows_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from poft.chat import ChatFormat
from poft.inspection import inspect_scores, summary_table
from poft.shards import shard_files

pytestmark = pytest.mark.usefixtures("one_thread")
aligned = test_scoring.aligned  # the fixture: the same tiny aligned models


def without_prompt(messages: list[dict]) -> list[dict]:
    """The reference's prompt-free conversation, written out here on its own."""
    out = []
    for m in messages:
        if m["role"] == "system":
            continue
        out.append(m if m["role"] == "assistant" else {"role": m["role"], "content": ""})
    return out


def response_log_probs(model, ids: list[int], mask: list[int]) -> tuple[float, int]:
    """Sum of log p over the response tokens (first token never scored) and their count: full logits."""
    tensor = torch.tensor([ids])
    with torch.no_grad():
        log_probs = torch.log_softmax(model(input_ids=tensor).logits[0, :-1].double(), dim=-1)
    token_log_probs = log_probs.gather(-1, tensor[0, 1:, None]).squeeze(-1)
    keep = torch.tensor(mask[1:], dtype=torch.bool)
    return float(token_log_probs[keep].sum()), int(keep.sum())


def naive_uncond(path: str, rows: list[dict], max_length: int | None) -> tuple[list[float], list[int]]:
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    chat = ChatFormat.from_tokenizer(tokenizer, path)
    sums, counts = [], []
    for row in rows:
        kept = sum(chat.encode(row["messages"], max_length).response_mask)
        free = chat.encode(without_prompt(row["messages"]))
        ids, mask = list(free.input_ids), list(free.response_mask)
        seen = 0
        for t, m in enumerate(mask):  # cut right after the kept-th response token
            seen += m
            if seen == kept and m:
                ids, mask = ids[: t + 1], mask[: t + 1]
                break
        if kept == 0:
            ids, mask = [], []
        s, n = response_log_probs(model, ids, mask) if ids else (0.0, 0)
        sums.append(s)
        counts.append(n)
    return sums, counts


def test_uncond_scores_equal_naive_reference_under_three_templates(aligned, tmp_path):
    rows = make_rows(30, seed=3)
    max_length = 90  # some conversations are longer: the prompt-free render keeps the same response tokens
    out = tmp_path / "out"
    scored = score(
        rows_dataset(rows), list(aligned.values()), out, max_length=max_length,
        batch_tokens=400, rows_per_shard=7, progress=False, uncond=True,
    )  # fmt: skip
    assert sum(scored["llama3_truncated"]) > 0
    for family, path in aligned.items():
        ref_sums, ref_counts = naive_uncond(path, rows, max_length)
        assert scored[f"{family}_uncond_n_tokens"] == ref_counts
        assert scored[f"{family}_uncond_n_tokens"] == scored[f"{family}_n_tokens"]  # the same tokens
        for ours, ref in zip(scored[f"{family}_uncond_logp_sum"], ref_sums, strict=True):
            assert ours == pytest.approx(ref, rel=1e-5, abs=1e-6)
        assert len(shard_files(out, f"{family}@uncond")) > 1
    check_row_scores(scored, list(aligned))
    manifest = json.loads((out / "manifest.json").read_text())
    record = manifest["unconditional"]
    assert record["response_differs"] == {family: 0 for family in FAMILIES}
    assert record["combined"] == "ref_score - 4 * ref_ifd" and "system messages removed" in record["render"]
    assert manifest["columns"][-5:] == ["ref_score", "ref_pmi", "ref_ifd", "ref_combined", "score_provenance"]


def check_row_scores(scored, aliases: list[str]) -> None:
    """ref_pmi, ref_ifd and ref_combined (ref_score - 4 IFD) from the columns, row by row in plain Python."""
    for r in scored:
        if any(r[f"{a}_n_tokens"] == 0 for a in aliases):  # the response cut away: no score, as ref_score
            assert np.isnan(r["ref_pmi"]) and np.isnan(r["ref_ifd"]) and np.isnan(r["ref_score"])
            continue
        cond = [r[f"{a}_logp_sum"] / r[f"{a}_n_tokens"] for a in aliases]
        free = [r[f"{a}_uncond_logp_sum"] / r[f"{a}_uncond_n_tokens"] for a in aliases]
        pmi = sum(c - u for c, u in zip(cond, free, strict=True)) / len(aliases)
        ifd = sum(c / u for c, u in zip(cond, free, strict=True)) / len(aliases)
        assert r["ref_pmi"] == pytest.approx(pmi, rel=1e-9, abs=1e-12)
        assert r["ref_ifd"] == pytest.approx(ifd, rel=1e-9)
        assert r["ref_combined"] == pytest.approx(r["ref_score"] - 4.0 * ifd, rel=1e-6, abs=1e-9)


def test_uncond_resumes_after_a_kill_and_adds_to_an_earlier_run(aligned, tmp_path):
    rows = make_rows(24, seed=4)
    models = [aligned["chatml"], aligned["zephyr"]]
    kwargs = {"batch_tokens": 300, "rows_per_shard": 5, "progress": False}
    full = score(rows_dataset(rows), models, tmp_path / "full", uncond=True, **kwargs)
    out = tmp_path / "out"
    plain = score(rows_dataset(rows), models, out, **kwargs)  # without --uncond first
    assert "ref_pmi" not in plain.column_names and "unconditional" not in read_manifest(out)
    conditional = {p.name for p in shard_files(out, "chatml")}
    score(rows_dataset(rows), models, out, uncond=True, **kwargs)  # adds the prompt-free pass only
    for path in shard_files(out, "chatml@uncond")[::2]:  # as if killed: some shards never written
        path.unlink()
    (out / "manifest.json").unlink()
    resumed = score(rows_dataset(rows), models, out, uncond=True, **kwargs)
    assert {p.name for p in shard_files(out, "chatml")} == conditional  # nothing scored again
    for column in ("chatml_uncond_n_tokens", "zephyr_uncond_n_tokens"):
        assert resumed[column] == full[column]
    for column in ("chatml_uncond_logp_sum", "zephyr_uncond_logp_sum", "ref_pmi", "ref_ifd"):
        np.testing.assert_allclose(resumed[column], full[column], rtol=1e-6)
    covered = [r for p in shard_files(out, "chatml@uncond") for r in json.loads(p.read_text())["rows"]]
    assert sorted(covered) == list(range(24))  # every row exactly once


def read_manifest(out) -> dict:
    return json.loads((out / "manifest.json").read_text())


def test_inspect_by_label_reports_each_prompt_score(aligned, tmp_path):
    rows = make_rows(12, seed=5)
    for i, row in enumerate(rows):
        row["noise"] = "wrong_prompt" if i % 3 == 0 else "clean"
    out = tmp_path / "out"
    score(rows_dataset(rows), [aligned["chatml"]], out, progress=False, uncond=True)
    summary = inspect_scores(out, tmp_path / "inspect", by_label="noise")
    for name in ("ref_pmi", "ref_ifd", "ref_combined"):
        auc = summary["by_label"]["scores"][name]["auc"]
        assert set(auc) == {"clean", "wrong_prompt"} and 0.0 <= auc["clean"] <= 1.0
    lines = summary_table(summary).splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("ROC AUC"))
    assert [line.split()[0] for line in lines[header + 2 : header + 6]] == [
        "chatml", "ref_score", "ref_pmi", "ref_ifd",
    ]  # fmt: skip
    assert lines[header + 6].split()[0] == "ref_combined"


def test_aliases_that_clash_with_prompt_free_scores_are_refused(aligned, tmp_path):
    rows = rows_dataset(make_rows(2))
    models = [f"x={aligned['chatml']}", f"x_uncond={aligned['zephyr']}"]
    with pytest.raises(ValueError, match=r"--uncond: the aliases \['x_uncond'\] clash"):
        score(rows, models, tmp_path / "a", uncond=True, progress=False)
    with pytest.raises(ValueError, match=r"\['y@uncond'\]"):
        score(rows, [f"y@uncond={aligned['chatml']}"], tmp_path / "b", uncond=True, progress=False)
    assert (
        "x_uncond_logp_sum" in score(rows, models, tmp_path / "c", progress=False).column_names
    )  # no --uncond


@pytest.mark.slow
def test_two_processes_give_the_prompt_free_scores_of_one(aligned, tmp_path):
    """torchrun with 2 processes: each encodes and scores its share of both passes; the main one merges (the
    count of rows whose response tokens differ is summed over the processes)."""
    rows = make_rows(20, seed=6)
    data = tmp_path / "rows.jsonl"
    data.write_text(
        "".join(json.dumps({"id": f"r{i}", "messages": r["messages"]}) + "\n" for i, r in enumerate(rows))
    )
    models = [aligned["chatml"], aligned["llama3"]]
    one = score(str(data), models, tmp_path / "one", max_length=60, uncond=True, progress=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "poft",
    ]
    args = ["score", "--dataset", str(data), *[a for m in models for a in ("--model", m)], "--output",
            str(tmp_path / "two"), "--max-length", "60", "--uncond", "--no-progress"]  # fmt: skip
    done = subprocess.run([*launcher, *args], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    from datasets import load_from_disk

    two = load_from_disk(str(tmp_path / "two"))
    assert two.column_names == one.column_names
    for alias in ("chatml", "llama3"):
        assert two[f"{alias}_uncond_n_tokens"] == one[f"{alias}_uncond_n_tokens"]
        np.testing.assert_allclose(
            two[f"{alias}_uncond_logp_sum"], one[f"{alias}_uncond_logp_sum"], rtol=1e-6
        )
        assert {p.name.split("-")[0] for p in shard_files(tmp_path / "two", f"{alias}@uncond")} == {
            "rank0",
            "rank1",
        }
    np.testing.assert_allclose(two["ref_combined"], one["ref_combined"], rtol=1e-6)
    assert (
        read_manifest(tmp_path / "two")["unconditional"] == read_manifest(tmp_path / "one")["unconditional"]
    )
