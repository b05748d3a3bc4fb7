"""The RESULTS.md marker blocks (experiments.publish): a block is replaced by the run's own tables, nothing else."""

import json

import pytest

from experiments.demo.report import claims_table, results_table
from experiments.publish import main, markers, publish, read_block, replace_block

RUNS = [
    {"method": m, "noise": 0.3, "seed": s, "epoch": e, "learning_rate": 1e-3,
     "metrics": {"accuracy": a, "sampled_accuracy": a / 2, "clean_nll": 1.5 - a}}
    for m, s, curve in (("sft", 0, (0.2, 0.3)), ("poft", 0, (0.25, 0.35)), ("sft", 1, (0.1, 0.2)),
                        ("poft", 1, (0.3, 0.25)))
    for e, a in zip((2, 4), curve, strict=True)
]  # fmt: skip


def _document(*names: str) -> str:
    parts = ["# Results", "", "intro, kept"]
    for name in names:
        begin, end = markers(name)
        parts += ["", begin, "| old | table |", end, f"after {name}, kept"]
    return "\n".join(parts) + "\n"


def test_replace_block_keeps_the_text_around_it():
    text = _document("default", "full")
    new = replace_block(text, "default", "| new |\n|---|\n")
    assert read_block(new, "default") == "| new |\n|---|"
    assert read_block(new, "full") == "| old | table |"
    assert new.replace("| new |\n|---|", "| old | table |") == text
    assert replace_block(new, "default", "| new |\n|---|") == new  # idempotent


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (_document("full"), "found 0 and 0"),
        (_document("default", "default"), "found 2 and 2"),
        ("<!-- poft-demo:default end -->\n<!-- poft-demo:default begin -->\n", "before"),
    ],
)
def test_replace_block_refuses_missing_duplicated_or_reversed_markers(text, message):
    with pytest.raises(ValueError, match=message):
        replace_block(text, "default", "x")


def test_publish_writes_the_run_tables_and_refuses_a_report_that_differs(tmp_path):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "results.json").write_text(json.dumps({"runs": RUNS}))
    table, claims = results_table(RUNS), "\n".join(claims_table(RUNS))
    (out / "report.md").write_text(f"# report\n\n{table}\n\n{claims}\n")
    results = tmp_path / "RESULTS.md"
    results.write_text(_document("full", "full-claims", "default"))

    assert publish(out, results, "full") == ["full", "full-claims"]
    text = results.read_text()
    assert read_block(text, "full") == table and read_block(text, "full-claims") == claims
    assert read_block(text, "default") == "| old | table |"
    assert "| poft | 0.001 | 0.300 ± 0.050 |" in table  # mean ± std over the two seeds' last epochs

    (out / "report.md").write_text(f"# report\n\n{table.replace('0.300', '0.301')}\n\n{claims}\n")
    with pytest.raises(ValueError, match="not the one in report.md"):
        publish(out, results, "default")
    assert results.read_text() == text  # nothing written


def test_main_writes_the_block_and_a_missing_run_is_one_line(tmp_path, capsys):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "results.json").write_text(json.dumps({"runs": RUNS}))
    (out / "report.md").write_text(f"{results_table(RUNS)}\n\n" + "\n".join(claims_table(RUNS)) + "\n")
    results = tmp_path / "RESULTS.md"
    results.write_text(_document("default"))
    assert main(["--output", str(out), "--results", str(results)]) == 0
    assert read_block(results.read_text(), "default") == results_table(RUNS)
    assert main(["--output", str(tmp_path / "missing"), "--results", str(results)]) == 1
    err = capsys.readouterr().err
    assert (
        err
        == f"python -m experiments.publish: error: {tmp_path / 'missing' / 'results.json'}: No such file or directory\n"
    )
