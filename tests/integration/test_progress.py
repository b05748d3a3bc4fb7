"""`poft score`'s progress on a small run: at least 20 packed batches (not one or two that jump from 0 to
100 %), a bar of tokens with rows, tok/s and the time left; and a bf16 resume under the lowered budget is
still the uninterrupted run, bit for bit."""

import json
import random
import re

import pytest
from datasets import Dataset
from fixtures.scoring import score  # tests/ is on sys.path

import poft.scoring
from poft.logprobs import MIN_BATCHES
from poft.shards import shard_files

WORDS = "the quick brown fox jumps over a lazy dog add reverse sort paris answer hello 12 30 42".split()

pytestmark = pytest.mark.usefixtures("one_thread")


def rows(n: int, seed: int = 0) -> Dataset:
    rng = random.Random(seed)

    def text(lo: int, hi: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))

    return Dataset.from_list(
        [
            {
                "id": f"r{i}",
                "messages": [
                    {"role": "user", "content": text(2, 12)},
                    {"role": "assistant", "content": text(1, 30)},
                ],
            }
            for i in range(n)
        ]
    )


def test_a_small_run_moves_per_batch_with_rows_tok_s_and_time_left(tiny_model, tmp_path, monkeypatch, capsys):
    model = tiny_model("chatml", [" ".join(WORDS) * 3], vocab_size=320, hidden_size=48)
    calls = []
    packed = poft.scoring.packed_logprob_sums
    monkeypatch.setattr(
        poft.scoring,
        "packed_logprob_sums",
        lambda net, seqs, **kw: calls.append(len(seqs)) or packed(net, seqs, **kw),
    )
    score(rows(400), [model], tmp_path / "out", progress=True)  # the default budget: 8192 tokens on CPU
    assert len(calls) >= MIN_BATCHES and sum(calls) == 400  # ~13k tokens: 2 batches at the full budget
    bar = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()
    last = [line for line in bar if line.startswith("scoring chatml")][-1]
    # e.g. "scoring chatml: 100%|██████████| 1.73k/1.73k [00:00<00:00, 9.11ktok/s, 400/400 rows]"
    assert re.search(r"100%.*\| [\d.]+k?/[\d.]+k? \[[\d:]+<[\d:]+, [\d.]+k?tok/s, 400/400 rows\]", last), last


def test_bf16_resume_under_the_lowered_budget_equals_an_uninterrupted_run(tiny_model, tmp_path):
    """The lowered budget depends on all of a process's rows, finished ones included: a resume re-forms the
    same batches, so each row is scored beside the same rows as in an uninterrupted bf16 run."""
    model = tiny_model("llama3", [" ".join(WORDS) * 3], vocab_size=380, hidden_size=128, seed=1)
    data, out = rows(80, seed=3), tmp_path / "out"
    kwargs = {"dtype": "bfloat16", "rows_per_shard": 4, "progress": False}  # the default budget, lowered
    full = score(data, [model], out, **kwargs)
    for path in shard_files(out, "llama3")[::2]:  # as if killed: every other shard never written
        path.unlink()
    (out / "manifest.json").unlink()
    resumed = score(data, [model], out, **kwargs)
    assert resumed["llama3_logp_sum"] == full["llama3_logp_sum"]
    assert json.loads((out / "manifest.json").read_text())["batching"]["batch_tokens"] == 8192
