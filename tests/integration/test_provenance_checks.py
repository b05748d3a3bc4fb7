"""Provenance checks a missing value cannot switch off: a scored row without a fingerprint, and scores made at
another max_length than training's, in either direction.

Seen on the earlier main: a scored row edited and its `fingerprint` set to null trained silently, and so did an
added row carrying another row's scores with fingerprint ""; scores made with `poft score --max-length 32`
trained at `--max_length 128` without a word (r_ref over 32 tokens, r_theta over the whole response).
"""

import json

import pytest
from datasets import Dataset

from poft import PoFTConfig, PoFTTrainer
from poft.example import make_rows
from poft.readers import read_sft

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(tiny_model, tmp_path_factory):
    """A tiny target and the rows `poft score`'s code scored with it at --max-length 28 (most rows cut) and whole."""
    from fixtures.scoring import score

    rows = make_rows(12, seed=5)
    for i, row in enumerate(rows):  # longer answers, so that a 28-token limit cuts responses short
        row["messages"][1]["content"] = " ".join([row["messages"][1]["content"]] * (1 + i % 5))
    corpus = [m["content"] for r in rows for m in r["messages"]]
    model = tiny_model("chatml", corpus, vocab_size=300, hidden_size=32, seed=2, name="provenance")
    plain = Dataset.from_list([{"id": r["id"], "messages": r["messages"]} for r in rows])
    root = tmp_path_factory.mktemp("provenance-checks")
    cut = score(plain, [f"a={model}"], root / "cut", max_length=28, progress=False)
    whole = score(plain, [f"a={model}"], root / "whole", progress=False)
    return {"model": model, "cut": cut, "whole": whole, "root": root}


def config(tmp_path, **overrides) -> PoFTConfig:
    options = {"output_dir": str(tmp_path), "max_steps": 1, "per_device_train_batch_size": 4, "bf16": False}
    options.update(report_to=[], save_strategy="no", gradient_checkpointing=False, logging_steps=1)
    return PoFTConfig(**{**options, **overrides})


def trainer(tiny, tmp_path, rows, **overrides) -> PoFTTrainer:
    if isinstance(rows, str):  # a file, read as `poft train` reads it
        data = read_sft(rows, on_bad_row="skip", report=False)
    else:
        data = rows if isinstance(rows, Dataset) else Dataset.from_list(rows)
    return PoFTTrainer(model=tiny["model"], args=config(tmp_path, **overrides), train_dataset=data)


# ---- a scored row without a fingerprint ---------------------------------------------------------------------


def test_an_edited_row_whose_fingerprint_was_nulled_is_refused_naming_it(tiny, tmp_path):
    rows = tiny["whole"].to_list()
    rows[3]["messages"][1]["content"] = "an edited answer"
    rows[3]["fingerprint"] = None
    with pytest.raises(ValueError) as refused:
        trainer(tiny, tmp_path, rows)
    message = str(refused.value)
    assert "1 of 12 rows with a ref_score have no `fingerprint` (null or empty)" in message
    assert "row 3 (id=tiny-3): no fingerprint" in message
    assert "cannot be tied to the text" in message and "--scores_without_fingerprint" in message
    assert "no longer match" not in message  # not blamed on an edit it cannot see


def test_an_added_row_with_another_rows_scores_and_an_empty_fingerprint_is_refused(tiny, tmp_path):
    rows = tiny["whole"].to_list()
    added = {**rows[0], "id": "added", "fingerprint": ""}
    added["messages"] = [{"role": "user", "content": "add 1 and 2"}, {"role": "assistant", "content": "3"}]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [*rows, added]))
    with pytest.raises(ValueError, match=r"1 of 13 rows .* line 13 \(id=added\): no fingerprint"):
        trainer(tiny, tmp_path / "out", str(path))


def test_many_rows_without_a_fingerprint_are_named_a_few_then_a_count(tiny, tmp_path):
    rows = [{**r, "fingerprint": ""} for r in tiny["whole"].to_list()]
    with pytest.raises(
        ValueError, match=r"12 of 12 rows .*row 4 \(id=tiny-4\): no fingerprint; \.\.\. 7 more"
    ):
        trainer(tiny, tmp_path, rows)


def test_scores_from_elsewhere_train_when_the_user_says_so(tiny, tmp_path, capsys):
    rows = tiny["whole"].to_list()
    for row in rows[:2]:
        row["fingerprint"] = None
    rows[5]["messages"][1]["content"] = "an edited answer"  # its fingerprint is there: still checked
    with pytest.raises(ValueError, match=r"1 of 12 rows no longer match.*row 5 \(id=tiny-5\)"):
        trainer(tiny, tmp_path, rows, scores_without_fingerprint=True)
    capsys.readouterr()
    rows[5] = tiny["whole"][5]
    built = trainer(tiny, tmp_path, rows, scores_without_fingerprint=True)
    assert len(built.train_dataset) == 12
    out = capsys.readouterr().out
    assert out.count("2 of 12 rows with a ref_score have no `fingerprint`") == 1
    assert "accepted as scores from elsewhere (scores_without_fingerprint)" in out


def test_rows_without_a_fingerprint_column_are_scores_from_elsewhere_as_before(tiny, tmp_path, capsys):
    rows = [{**r, "ref_score": -1.0} for r in make_rows(8, seed=5)]
    assert len(trainer(tiny, tmp_path, rows).train_dataset) == 8
    assert "no 'score_provenance' column (scores not written by `poft score`)" in capsys.readouterr().out


# ---- max_length: training and scoring cut rows at different lengths ------------------------------------------


def test_scored_at_a_shorter_max_length_than_training_warns_with_a_count(tiny, tmp_path, capsys):
    n_cut = sum(
        t and n > 0 for t, n in zip(tiny["cut"]["a_truncated"], tiny["cut"]["a_n_tokens"], strict=True)
    )
    assert n_cut >= 3  # the fixture cuts rows that still have response tokens (they are trained)
    trainer(tiny, tmp_path, tiny["cut"], max_length=128)
    out = capsys.readouterr().out
    assert (
        f"warning: {n_cut} train rows were cut at 28 tokens when scored (`poft score --max-length 28`) but are "
        "trained up to max_length=128 tokens: their r_ref covers fewer response tokens than their r_theta"
    ) in out


def test_the_scorers_truncation_is_counted_by_length_when_its_columns_were_dropped(tiny, tmp_path, capsys):
    dropped = tiny["cut"].remove_columns(["a_truncated"])
    trainer(tiny, tmp_path, dropped, max_length=None)
    out = capsys.readouterr().out
    assert "rows were cut at 28 tokens when scored" in out and "but are trained whole" in out


def test_scored_whole_and_trained_shorter_still_warns_with_a_count(tiny, tmp_path, capsys):
    trainer(tiny, tmp_path, tiny["whole"], max_length=26)
    out = capsys.readouterr().out
    n_cut = int(out.split(" train rows were truncated to max_length=26")[0].rsplit("poft: ", 1)[1])
    assert f"warning: {n_cut} train rows are cut at max_length=26 in training but were scored whole" in out


def test_the_same_max_length_in_both_says_no_warning(tiny, tmp_path, capsys):
    trainer(tiny, tmp_path, tiny["cut"], max_length=28)
    assert "warning" not in capsys.readouterr().out
