"""How `poft` commands end when something is wrong, as a user sees it: one line on stderr naming the file,
row, field or option (exit 1; 2 for options that cannot be used), no traceback unless `poft --debug`; Ctrl-C
says what was kept and how to resume (exit 130). Mostly in-process through `poft.cli.main` on tiny models;
a few subprocesses for what only a real process shows (Ctrl-C, the warnings a run prints)."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from poft.cli import COMMANDS, Command, main

CPU = ["--report_to", "none", "--bf16", "false", "--save_strategy", "no", "--max_steps", "1"]
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "CUDA_VISIBLE_DEVICES": "",
    "HF_HUB_OFFLINE": "1",
    "PYTHONUNBUFFERED": "1",
}


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_model) -> dict:
    """A tiny model, copies of it without a chat template / with its weights cut short / with NaN weights,
    and small data files (scored, unscored, with every score missing)."""
    root = tmp_path_factory.mktemp("cli_errors")
    model = Path(tiny_model())
    no_template = root / "no-template"
    shutil.copytree(model, no_template)
    (no_template / "chat_template.jinja").unlink()
    cut = root / "cut"
    shutil.copytree(model, cut)
    weights = cut / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    from transformers import AutoModelForCausalLM

    nan = root / "nan"
    shutil.copytree(model, nan)
    network = AutoModelForCausalLM.from_pretrained(model)
    with torch.no_grad():
        network.get_decoder().layers[0].mlp.down_proj.weight[0, 0] = float("nan")
    network.save_pretrained(nan)
    rows = [
        {"id": f"r{i}", "messages": [{"role": "user", "content": f"add {i} and 2"},
                                     {"role": "assistant", "content": str(i + 2)}], "ref_score": -1.0 - i / 10}
        for i in range(8)
    ]  # fmt: skip
    paths = {"model": str(model), "no_template": str(no_template), "cut": str(cut), "nan": str(nan)}
    unscored = [{k: v for k, v in r.items() if k != "ref_score"} for r in rows]
    no_scores = [{**r, "ref_score": None} for r in rows]
    for name, written in [("scored", rows), ("unscored", unscored), ("no_scores", no_scores)]:
        path = root / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in written))
        paths[name] = str(path)
    paths["root"] = root
    return paths


def one_line_error(capsys, argv: list[str], code: int = 1) -> str:
    """Run `poft ARGV` in-process: it returns (or exits with) `code` and ends with one stderr line
    `poft <command>: error: ...`, no traceback; returns that line."""
    try:
        returned = main(argv)
    except SystemExit as e:
        returned = e.code
    err = capsys.readouterr().err
    assert returned == code, err[-3000:]
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"poft {argv[0]}: error: "), err[-3000:]
    return last


def train(files, *argv: str) -> list[str]:
    return ["train", "--output_dir", str(files["root"] / "out"), *CPU, *argv]


# ------------------------------------------------------------------------------- a missing file or model


def test_missing_model_folder_is_not_a_network_problem(files, capsys):
    data = files["scored"]
    for argv in (
        ["score", "--dataset", data, "--model", "./missing_folder", "--output", str(files["root"] / "s")],
        train(files, "--model_name_or_path", "./missing_folder", "--dataset_name", data),
        [
            "dpo",
            "--model_name_or_path",
            "runs/missing/model",
            "--dataset_name",
            data,
            "--output_dir",
            "o",
            *CPU,
        ],
    ):
        line = one_line_error(capsys, argv)
        assert (
            line.endswith("./missing_folder: no such file or folder") or "runs/missing/model: no such" in line
        )
        assert "Repo id" not in line and "Hub" not in line


def test_a_hub_id_offline_says_the_hub_is_offline(files, capsys):
    out = str(files["root"] / "s")
    line = one_line_error(
        capsys, ["score", "--dataset", files["scored"], "--model", "poft-nobody/none", "--output", out]
    )
    assert "poft-nobody/none: no such file or folder here" in line and "HF_HUB_OFFLINE=1" in line


def test_missing_dataset_is_not_a_network_problem(files, capsys):
    for argv in (["inspect", "nope"], ["filter", "nope", "--keep-top", "0.5", "--output", "x"]):
        line = one_line_error(capsys, argv)
        assert "nope: no such file or folder" in line and "Couldn't reach" not in line
    line = one_line_error(
        capsys, train(files, "--model_name_or_path", files["model"], "--dataset_name", "nope.jsonl")
    )
    assert line == "poft train: error: nope.jsonl: no such file or folder"


def test_a_file_of_unknown_format_is_named(files, capsys):
    text = files["root"] / "text.jsonl"
    text.write_text('{"text": "hello"}\n')
    line = one_line_error(
        capsys, ["score", "--dataset", str(text), "--model", files["model"], "--output", "s"]
    )
    assert line.startswith(
        f"poft score: error: {text}: cannot tell the data format from the columns ['text']"
    )


# ------------------------------------------------------------------- the project's own messages, one line


def test_train_errors_are_one_line(files, capsys):
    model = ["--model_name_or_path", files["model"]]
    line = one_line_error(capsys, train(files, *model, "--dataset_name", files["unscored"]))
    assert "no 'ref_score' column" in line and "poft score" in line
    line = one_line_error(capsys, train(files, "--model_name_or_path", files["no_template"],
                                        "--dataset_name", files["scored"]))  # fmt: skip
    assert "no chat template" in line
    line = one_line_error(capsys, train(files, *model, "--dataset_name", files["no_scores"]))
    assert "no_scores.jsonl: no row is left to train on" in line  # was torch's "num_samples=0"
    line = one_line_error(
        capsys, train(files, "--model_name_or_path", files["cut"], "--dataset_name", files["scored"])
    )
    assert f"the weights of {files['cut']} cannot be read" in line


def test_an_output_folder_that_cannot_be_written_is_one_line(files, capsys):
    model_data = ["--model_name_or_path", files["model"], "--dataset_name", files["scored"]]
    inside_a_file = f"{files['scored']}/out"
    line = one_line_error(capsys, ["train", "--output_dir", inside_a_file, *CPU, *model_data])
    assert line == f"poft train: error: {inside_a_file}: Not a directory"
    if os.geteuid() != 0:  # root writes anywhere
        read_only = files["root"] / "read-only"
        read_only.mkdir()
        read_only.chmod(0o555)
        line = one_line_error(capsys, ["train", "--output_dir", str(read_only / "out"), *CPU, *model_data])
        assert "Permission denied (choose a folder you can write to)" in line


def test_score_names_a_model_with_damaged_or_nan_weights(files, capsys):
    score = ["score", "--dataset", files["scored"], "--output"]
    line = one_line_error(capsys, [*score, str(files["root"] / "s1"), "--model", files["cut"]])
    assert f"aligned model cut ({files['cut']}): could not load its weights" in line
    line = one_line_error(capsys, [*score, str(files["root"] / "s2"), "--model", files["nan"]])
    assert "nan: the model's logits are NaN or infinite" in line and "soft-capping" not in line


def test_dpo_wrong_columns_is_one_line(files, capsys):
    line = one_line_error(capsys, ["dpo", "--model_name_or_path", files["model"], "--dataset_name",
                                   files["scored"], "--output_dir", str(files["root"] / "d"), *CPU])  # fmt: skip
    assert "needs `chosen` and `rejected`" in line


def test_unexpected_errors_are_one_line_and_debug_shows_the_traceback(monkeypatch, capsys):
    def broken(config):
        raise KeyError("boom")

    monkeypatch.setitem(COMMANDS, "tiny-example", Command("h", COMMANDS["tiny-example"].options, broken))
    line = one_line_error(capsys, ["tiny-example", "--output", "x"])
    assert line == (
        "poft tiny-example: error: internal error: KeyError: 'boom' (run `poft --debug ...` for the "
        "traceback; please report it)"
    )
    with pytest.raises(KeyError):
        main(["--debug", "tiny-example", "--output", "x"])
    monkeypatch.setenv("POFT_DEBUG", "1")
    with pytest.raises(KeyError):
        main(["tiny-example", "--output", "x"])


def test_usage_errors_are_one_line_exit_2(capsys):
    line = one_line_error(capsys, ["train", "--dataset_name", "d.jsonl", "--output_dir", "o", *CPU], code=2)
    assert "--model_name_or_path is required" in line and "see `poft train --help`" in line


# --------------------------------------------------------------------------------------------- Ctrl-C


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["score", "--dataset", "d.jsonl", "--model", "m", "--output", "scores"],
         "poft score: interrupted; the finished shards in scores are kept: run the same command again to resume"),
        (["train", "--model_name_or_path", "m", "--dataset_name", "d", "--output_dir", "run", "--bf16", "false",
          "--report_to", "none"],
         "poft train: interrupted; the checkpoints saved so far in run are kept: run the same command with "
         "--resume_from_checkpoint last to resume"),
        (["train", "--model_name_or_path", "m", "--dataset_name", "d", "--output_dir", "run", *CPU],
         "poft train: interrupted; save_strategy is 'no', so no checkpoint was saved: the same command starts over"),
    ],
)  # fmt: skip
def test_ctrl_c_says_what_was_kept_and_how_to_resume(monkeypatch, capsys, argv, said):
    def interrupted(*options):
        raise KeyboardInterrupt

    command = COMMANDS[argv[0]]
    monkeypatch.setitem(COMMANDS, argv[0], Command(command.help, command.options, interrupted))
    try:
        code = main(argv)
    except KeyboardInterrupt:  # escaping, it would stop the test session
        code = "KeyboardInterrupt raised"
    err = capsys.readouterr().err
    assert code == 130, err
    assert err.strip() == said and "Traceback" not in err


def test_ctrl_c_in_a_real_score_run(files):
    out = files["root"] / "interrupted"
    cmd = [sys.executable, "-m", "poft", "score", "--dataset", files["scored"], "--model", files["model"],
           "--output", str(out), "--no-progress"]  # fmt: skip
    run = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    for line in run.stdout:  # the rows are read: the options are parsed and scoring is under way
        if "rows" in line:
            break
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=120)
    if run.returncode == 0:
        pytest.skip("scoring finished before the interrupt arrived")
    assert run.returncode == 130, err[-3000:]
    assert "Traceback" not in err and err.strip().splitlines()[-1] == (
        f"poft score: interrupted; the finished shards in {out} are kept: run the same command again "
        "to resume"
    )


# ----------------------------------------------------------------------------------- what a run prints


def test_a_training_run_prints_no_library_noise(files):
    """The tiny recipe, one step: no DeepSpeed accelerator line, no deprecation warning, no pin_memory."""
    recipe = Path(__file__).resolve().parents[2] / "examples" / "tiny_poft.yaml"
    cmd = [sys.executable, "-m", "poft", "train", "--config", str(recipe), "--model_name_or_path", files["model"],
           "--dataset_name", files["scored"], "--output_dir", str(files["root"] / "quiet"), "--max_steps", "1"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = done.stdout + done.stderr
    for noise in ("Setting accelerator to CPU", "Warning:", "pin_memory", "deprecated"):
        assert noise not in printed, noise


def test_eval_leaves_out_git_complaints_outside_a_repository(tmp_path, monkeypatch, capfd):
    pytest.importorskip("lm_eval", reason="lm-eval is the optional extra poft[eval]")
    from lm_eval import evaluator

    from poft.commands import quiet_git_hash

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(evaluator, "get_git_commit_hash", evaluator.get_git_commit_hash)  # restored after
    quiet_git_hash()
    assert evaluator.get_git_commit_hash() is None
    assert "not a git repository" not in capfd.readouterr().err
