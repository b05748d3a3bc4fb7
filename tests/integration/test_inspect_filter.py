"""score -> inspect -> filter on two tiny aligned models (chatml, llama3): ShareGPT and Alpaca files score
exactly like their messages twins; inspect's numbers match an independent computation; filter keeps the
right rows in the right order, with deterministic ties."""

import json
import math
import random

import numpy as np
import pytest
from datasets import Dataset, load_from_disk
from fixtures.scoring import score  # tests/ is on sys.path

from poft.cli import main
from poft.filtering import select_rows
from poft.inspection import inspect_scores
from poft.readers import load_sft_dataset


def conversation(i: int, rng: random.Random) -> list[dict]:
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    answer = str(a + b) if i % 3 else "the quick brown fox " * (i % 5 + 1)  # some rows are nonsense
    messages = [{"role": "user", "content": f"add {a} and {b}"}, {"role": "assistant", "content": answer}]
    if i % 4 == 0:
        messages = [{"role": "system", "content": "be brief"}, *messages]
        messages += [{"role": "user", "content": "and again?"}, {"role": "assistant", "content": answer}]
    return messages


@pytest.fixture(scope="module")
def scored(tmp_path_factory, tiny_model):
    """Two saved tiny aligned models, a 96-row messages file, and its scores."""
    root = tmp_path_factory.mktemp("pipeline")
    models = [f"{family}={tiny_model(family, seed=seed)}" for family, seed in (("chatml", 1), ("llama3", 2))]
    rng = random.Random(0)
    rows = [{"id": f"r{i}", "messages": conversation(i, rng)} for i in range(96)]
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    score(root / "data.jsonl", models, root / "scores", progress=False)
    return {"root": root, "models": models, "rows": rows}


def test_sharegpt_and_alpaca_files_score_exactly_like_their_messages_twins(scored, tmp_path):
    rows = scored["rows"][:24]
    role = {"system": "system", "user": "human", "assistant": "gpt"}
    sharegpt = [
        {"conversations": [{"from": role[m["role"]], "value": m["content"]} for m in r["messages"]]}
        for r in rows
    ]
    (tmp_path / "sharegpt.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sharegpt))
    # single-turn rows as Alpaca (an empty input adds nothing to the user turn)
    single = [r for r in rows if len(r["messages"]) == 2]
    alpaca = [
        {"instruction": r["messages"][0]["content"], "input": "", "output": r["messages"][1]["content"]}
        for r in single
    ]
    (tmp_path / "alpaca.json").write_text(json.dumps(alpaca))  # a JSON array file
    twins = {"sharegpt.jsonl": rows, "alpaca.json": single}
    for name, twin_rows in twins.items():
        messages_twin = tmp_path / f"{name}.messages.jsonl"
        messages_twin.write_text("".join(json.dumps({"messages": r["messages"]}) + "\n" for r in twin_rows))
        expected = score(messages_twin, scored["models"], tmp_path / f"scores-{name}-twin", progress=False)
        out = score(tmp_path / name, scored["models"], tmp_path / f"scores-{name}", progress=False)
        assert out["messages"] == [r["messages"] for r in twin_rows]
        for column in (
            "chatml_logp_sum",
            "chatml_n_tokens",
            "llama3_logp_sum",
            "llama3_n_tokens",
            "ref_score",
        ):
            assert out[column] == expected[column], (name, column)  # exactly, not approximately
        assert out["id"] == expected["id"] and out["fingerprint"] == expected["fingerprint"]


def test_inspect_statistics_figures_and_extremes(scored, tmp_path, capsys):
    folder = scored["root"] / "scores"
    summary = inspect_scores(folder, tmp_path / "audit", k=3)
    data = load_from_disk(str(folder))
    ref = np.array(data["ref_score"])
    chatml = np.array(data["chatml_logp_sum"]) / np.array(data["chatml_n_tokens"])
    llama3 = np.array(data["llama3_logp_sum"]) / np.array(data["llama3_n_tokens"])
    assert np.allclose((chatml + llama3) / 2, ref, atol=1e-5)  # r_ref is the mean of the model scores
    assert summary["scores"]["ref_score"]["count"] == 96
    assert summary["scores"]["ref_score"]["mean"] == pytest.approx(ref.mean(), rel=1e-9)
    assert summary["scores"]["chatml"]["quantiles"]["0.5"] == pytest.approx(np.median(chatml), rel=1e-6)
    assert summary["pearson"]["chatml"]["llama3"] == pytest.approx(
        np.corrcoef(chatml, llama3)[0, 1], abs=1e-5
    )
    assert summary["truncated"] == {"chatml": 0, "llama3": 0}
    order = np.argsort(ref, kind="stable")
    assert summary["lowest_ids"] == [data["id"][i] for i in order[:3]]
    assert summary["highest_ids"] == [data["id"][i] for i in order[::-1][:3]]
    for name in ("chatml", "llama3", "ref_score", "all"):
        png = tmp_path / "audit" / f"scores_{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert json.loads((tmp_path / "audit" / "summary.json").read_text())["n_rows"] == 96
    assert main(["inspect", str(folder), "--output", str(tmp_path / "cli"), "-k", "2"]) == 0
    out = capsys.readouterr().out
    assert "2 lowest ref_score" in out and f"id={data['id'][order[0]]}" in out and "Spearman" in out


def test_inspect_by_label_reports_each_scores_auc_and_plots_per_label(scored, tmp_path, capsys):
    """`poft inspect --by-label COLUMN`: a label column (here: even rows marked, and one unlabelled row)."""
    import shutil

    from datasets import load_from_disk

    folder = tmp_path / "labelled"
    data = load_from_disk(str(scored["root"] / "scores"))
    kinds = ["even" if i % 2 == 0 else "odd" for i in range(len(data))]
    kinds[5] = None
    data.add_column("kind", kinds).save_to_disk(str(folder))
    shutil.copy(scored["root"] / "scores" / "manifest.json", folder / "manifest.json")
    summary = inspect_scores(folder, tmp_path / "audit", k=1, by_label="kind")
    by = summary["by_label"]
    assert by["classes"] == {"even": 48, "odd": 47} and by["n_unlabelled"] == 1
    ref = np.array(data["ref_score"])
    even = np.array([k == "even" for k in kinds])
    odd = np.array([k == "odd" for k in kinds])
    wins = (ref[even][:, None] > ref[odd][None, :]).mean()  # no ties among these float scores
    assert by["scores"]["ref_score"]["auc"]["even"] == pytest.approx(wins)
    assert by["scores"]["ref_score"]["auc"]["odd"] == pytest.approx(1 - wins)
    png = tmp_path / "audit" / "scores_by_kind.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and str(png) in summary["figures"]
    assert main(["inspect", str(folder), "--by-label", "kind", "--output", str(tmp_path / "cli")]) == 0
    assert "ROC AUC of each score for telling kind=<class>" in capsys.readouterr().out
    assert main(["inspect", str(folder), "--by-label", "nope", "--output", str(tmp_path / "x")]) == 1
    assert "--by-label 'nope': no such column" in capsys.readouterr().err


def test_filter_keep_top_half_of_96_keeps_the_48_best_in_input_order(scored, tmp_path, capsys):
    folder = scored["root"] / "scores"
    assert main(["filter", str(folder), "--keep-top", "0.5", "--output", str(tmp_path / "top")]) == 0
    assert "kept 48 of 96 rows, dropped 48" in capsys.readouterr().out
    data = load_from_disk(str(folder))
    best = sorted(range(96), key=lambda i: -data["ref_score"][i])[:48]
    kept = load_sft_dataset(str(tmp_path / "top"))  # what `poft train` reads
    assert kept["id"] == [data["id"][i] for i in sorted(best)]
    assert min(kept["ref_score"]) >= max(s for i, s in enumerate(data["ref_score"]) if i not in best)
    report = json.loads((tmp_path / "top" / "filter.json").read_text())
    assert (report["n_kept"], report["n_dropped"], report["by"]) == (48, 48, "ref_score")
    audit = inspect_scores(tmp_path / "top", k=1)  # the filtered folder can be audited too
    assert audit["scores"]["ref_score"]["count"] == 48 and set(audit["scores"]) == {
        "chatml",
        "llama3",
        "ref_score",
    }
    assert audit["scores"]["ref_score"]["mean"] == pytest.approx(np.mean(kept["ref_score"]), rel=1e-9)


def test_filter_by_another_column_and_min_score(tmp_path, capsys):
    rows = [{"id": f"x{i}", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
             "ifd": [0.3, None, 0.9, 0.1, 0.9][i]} for i in range(5)]  # fmt: skip
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "in"))
    assert (
        main(
            [
                "filter",
                str(tmp_path / "in"),
                "--by",
                "ifd",
                "--min-score",
                "0.3",
                "--output",
                str(tmp_path / "o"),
            ]
        )
        == 0
    )
    assert load_from_disk(str(tmp_path / "o"))["id"] == ["x0", "x2", "x4"]
    args = [
        "filter",
        str(tmp_path / "in"),
        "--by",
        "id",
        "--keep-top",
        "0.5",
        "--output",
        str(tmp_path / "p"),
    ]
    assert main(args) == 1
    assert "--by 'id' is not a numeric column; numeric columns: ['ifd']" in capsys.readouterr().err
    assert main([*args[:3], "ref_score", *args[4:]]) == 1
    assert "no column 'ref_score' (run `poft score` first)" in capsys.readouterr().err


def test_select_rows_ties_nan_and_rounding():
    scores = np.array([1.0, 2.0, 2.0, 2.0, 3.0, math.nan])
    # 5 scored rows, top 0.6 -> 3 rows: the 3.0 and the first two 2.0s (ties in input order), NaN never kept
    assert select_rows(scores, keep_top=0.6).tolist() == [1, 2, 4]
    assert select_rows(scores[::-1].copy(), keep_top=0.6).tolist() == [1, 2, 3]
    assert select_rows(scores, keep_top=0.5).tolist() == [1, 2, 4]  # 2.5 rounds half up to 3
    assert select_rows(scores, keep_top=1.0).tolist() == [0, 1, 2, 3, 4]
    assert select_rows(scores, min_score=2.0).tolist() == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="exactly one"):
        select_rows(scores, keep_top=0.5, min_score=1.0)
    with pytest.raises(ValueError, match="fraction"):
        select_rows(scores, keep_top=40)


def test_inspect_counts_truncated_and_unscored_rows(scored, tmp_path):
    """A short max_length truncates rows (some lose their whole response: NaN ref_score); inspect reports both."""
    rows = scored["rows"][:12]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = score(tmp_path / "d.jsonl", scored["models"], tmp_path / "s", max_length=28, progress=False)
    summary = inspect_scores(tmp_path / "s", k=2)
    n_nan = int(np.isnan(np.array(data["ref_score"], dtype=float)).sum())
    assert 0 < n_nan < len(rows)  # the test data really has both kinds of row
    assert summary["ref_score_nan"] == n_nan and summary["scores"]["ref_score"]["count"] == len(rows) - n_nan
    for alias in ("chatml", "llama3"):
        assert summary["truncated"][alias] == sum(data[f"{alias}_truncated"]) > 0
    assert len(summary["lowest_ids"]) == 2  # rows without a score are never listed
    assert not set(summary["lowest_ids"]) & {
        r for r, s in zip(data["id"], data["ref_score"], strict=True) if s != s
    }


def test_inspect_refuses_a_folder_poft_score_did_not_finish(tmp_path):
    from poft.inspection import read_scored

    (tmp_path / "scoring_config.json").write_text("{}")
    with pytest.raises(ValueError, match="did not finish"):
        read_scored(tmp_path)


def test_inspect_and_filter_of_a_scored_folder_import_no_torch_transformers_or_trl(scored, tmp_path):
    """`poft inspect` / `poft filter` of a scored folder read a table: they run without importing torch,
    transformers or TRL (their parser is poft's own, `poft.options`), in a fresh process."""
    import subprocess
    import sys

    folder = str(scored["root"] / "scores")
    check = (
        "import sys; from poft.cli import main; code = main(sys.argv[1:]); "
        "print(sorted(m for m in ('torch', 'transformers', 'trl', 'accelerate') if m in sys.modules))"
    )
    for argv in (
        ["inspect", folder, "--output", str(tmp_path / "audit")],
        ["filter", folder, "--keep-top", "0.5", "--output", str(tmp_path / "kept")],
    ):
        done = subprocess.run(
            [sys.executable, "-c", check, *argv], capture_output=True, text=True, check=True
        )
        assert done.stdout.strip().splitlines()[-1] == "[]", (argv[0], done.stdout[-500:], done.stderr[-500:])


def test_filter_names_a_bad_row_and_skips_it_when_asked(tmp_path, capsys):
    """The hint of the bad-row error (`--on-bad-row skip`) is an option `poft filter` has."""
    good = [{"id": f"g{i}", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
             "ref_score": -float(i)} for i in range(4)]  # fmt: skip
    lines = [json.dumps(r) for r in good] + ['{"id": "bad", "messages": [{"role": "user", "content": "q"}]}']
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    argv = ["filter", str(tmp_path / "d.jsonl"), "--keep-top", "0.5", "--output", str(tmp_path / "top")]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "line 5 (id=bad)" in err and "--on-bad-row skip" in err
    assert main([*argv, "--on-bad-row", "skip"]) == 0
    assert "left out: line 5 (id=bad)" in capsys.readouterr().out
    assert load_from_disk(str(tmp_path / "top"))["id"] == ["g0", "g1"]
