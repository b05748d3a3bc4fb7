"""`poft`'s command line at the parsing level: what each spelling turns into, which errors exit 2, and that
`import poft` and `poft <command> --help` import no heavy library. No model is built here."""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

import poft
from poft.cli import COMMANDS, main, parse_command
from poft.commands import model_init_kwargs
from poft.configs import FORMATS, FilterConfig, InspectConfig, ScoreConfig

HEAVY = ("torch", "transformers", "trl", "datasets")
LIGHT_COMMANDS = [name for name in COMMANDS if name not in ("train", "dpo")]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}
TRAINING = ["--output_dir", "out", "--report_to", "none", "--bf16", "false"]  # TRL asks for bf16 by default
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def imported_after(code: str) -> list[str]:
    """The heavy top-level packages a fresh interpreter holds after running `code`."""
    probe = f"{code}\nimport sys\nprint(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=ENV, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return eval(done.stdout.strip().splitlines()[-1])


def options(*argv: str):
    return parse_command(list(argv)).options


def usage_error(capsys, *argv: str) -> str:
    """The command exits 2 with argparse's message; returns that message."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_import_poft_and_the_cli_imports_no_heavy_library():
    assert (
        imported_after("import poft.cli, poft\nassert poft.__version__\nassert 'PoFTTrainer' in dir(poft)")
        == []
    )


def test_help_and_version_import_no_heavy_library():
    calls = "".join(
        f"try:\n    main({argv!r})\nexcept SystemExit as e:\n    assert e.code == 0, {argv!r}\n"
        for argv in [["--help"], ["--version"], *([name, "--help"] for name in COMMANDS)]
    )
    heavy = imported_after(f"from poft.cli import main\n{calls}")
    assert heavy == []  # not even TRL: train and dpo --help list poft's own options (configs.py)


@pytest.mark.parametrize("name", ["train", "dpo"])
def test_train_and_dpo_help_list_poft_options_first_and_say_where_trls_are(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    head = capsys.readouterr().out.splitlines()[:40]
    first = COMMANDS[name].own_options[0]
    assert any(line.strip().startswith(f"--{dataclasses.fields(first)[0].name}") for line in head)
    assert any(f"poft {name} --help-all" in line for line in head)
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help-all"])
    assert exit_info.value.code == 0
    everything = capsys.readouterr().out
    assert "--learning_rate" in everything and "--model_name_or_path" in everything
    for config in COMMANDS[name].own_options:  # typed once: the full parser has poft's options too
        assert all(f"--{f.name}" in everything for f in dataclasses.fields(config))


def test_public_names_load_on_first_use():
    assert poft.PoFTConfig.__name__ == "PoFTConfig" and callable(poft.poft_loss)
    assert issubclass(poft.RowError, ValueError)
    assert set(poft.__all__) <= set(dir(poft))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        poft.nope  # noqa: B018


def test_top_level_help_lists_every_command_and_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert all(name in printed for name in COMMANDS)
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"poft {poft.__version__}"
    assert main([]) == 2 and "<command>" in capsys.readouterr().out
    assert "invalid choice: 'nope'" in usage_error(capsys, "nope")


@pytest.mark.parametrize("name", LIGHT_COMMANDS)
def test_command_help_shows_every_option_with_its_help(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert f"usage: poft {name}" in printed and "--config YAML" in printed
    for config in COMMANDS[name].options():
        for f in dataclasses.fields(config):
            assert f.metadata["help"], (config.__name__, f.name)
            assert f"--{f.name}" in printed


def test_score_config_file_with_an_override(tmp_path):
    yaml = tmp_path / "score.yaml"
    yaml.write_text("dataset: data.jsonl\nmodel: [zephyr=m/z, m/llama]\noutput: scores\nmax_length: 128\n")
    for spelling in ("--max_length", "--max-length"):
        (config,) = options("score", "--config", str(yaml), spelling, "512")
        assert config == ScoreConfig(dataset="data.jsonl", model=["zephyr=m/z", "m/llama"], output="scores",
                                     max_length=512)  # fmt: skip
    # a list from the file is replaced by the command line's, not extended
    (config,) = options("score", "--config", str(yaml), "--model", "a", "--model", "b")
    assert config.model == ["a", "b"] and config.max_length == 128


def test_score_spellings_of_today():
    (config,) = options("score", "--dataset", "d", "--model", "A", "--model", "b=path/B", "C", "--output", "o",
                        "--no-progress", "--batch-tokens", "256", "--rows-per-shard", "4", "--on-bad-row", "skip",
                        "--format", "sharegpt", "--split", "test", "--normalization", "byte", "--dtype", "float32")  # fmt: skip
    assert config.model == ["A", "b=path/B", "C"]
    assert (config.progress, config.batch_tokens, config.rows_per_shard) == (False, 256, 4)
    assert (config.on_bad_row, config.format, config.split) == ("skip", "sharegpt", "test")
    assert (config.normalization, config.dtype) == ("byte", "float32")


def test_score_usage_errors(capsys):
    assert "required: --model" in usage_error(capsys, "score", "--dataset", "d", "--output", "o")
    err = usage_error(capsys, "score", "--dataset", "d", "--model", "m", "--output", "o", "--dtype", "int8")
    assert "invalid choice: 'int8'" in err
    err = usage_error(capsys, "score", "--dataset", "d", "--model", "m", "--output", "o", "--nope", "1")
    assert "poft score: error:" in err and "--nope" in err
    err = usage_error(
        capsys, "score", "--dataset", "d", "--model", "m", "--output", "o", "--max-length", "-3"
    )
    assert "--max-length must be a positive number" in err  # was accepted, and scored nothing sensible


def test_config_file_errors_are_usage_errors(tmp_path, capsys):
    assert "No such file" in usage_error(capsys, "score", "--config", str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: d\nmodel: [m]\noutput: o\nmax_lenght: 3\n")
    assert "max_lenght" in usage_error(capsys, "score", "--config", str(bad))


def test_inspect_and_filter_take_the_folder_as_a_bare_word_or_dir(tmp_path):
    assert options("inspect", "scores", "-k", "2") == (InspectConfig(dir="scores", k=2),)
    assert options("inspect", "--output", "o", "scores") == (InspectConfig(dir="scores", output="o"),)
    assert options("inspect", "--dir", "scores") == (InspectConfig(dir="scores"),)
    expected = FilterConfig(dir="s", keep_top=0.4, output="top")
    assert options("filter", "s", "--keep-top", "0.4", "--output", "top") == (expected,)
    assert options("filter", "--keep_top", "0.4", "--output", "top", "--dir", "s") == (expected,)
    yaml = tmp_path / "filter.yaml"
    yaml.write_text("dir: s\nmin_score: -3.5\nby: ifd\noutput: top\n")
    (config,) = options("filter", "--config", str(yaml), "--format", "alpaca")
    assert (config.dir, config.min_score, config.by, config.format) == ("s", -3.5, "ifd", "alpaca")


def test_filter_and_inspect_usage_errors(capsys):
    assert "exactly one of --keep-top" in usage_error(capsys, "filter", "s", "--output", "o")
    err = usage_error(capsys, "filter", "s", "--keep-top", "0.4", "--min-score", "1", "--output", "o")
    assert "exactly one of --keep-top" in err
    err = usage_error(capsys, "filter", "s", "--keep-top", "0.4", "--output", "o", "--format", "csv")
    assert "invalid choice: 'csv'" in err and all(f in err for f in FORMATS)
    assert "folder to filter is required" in usage_error(
        capsys, "filter", "--keep-top", "0.4", "--output", "o"
    )
    assert "poft inspect: error: the folder to inspect is required" in usage_error(capsys, "inspect")


def test_filter_refuses_writing_over_its_input(tmp_path, capsys):
    assert main(["filter", str(tmp_path), "--keep-top", "0.5", "--output", str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip() == "poft filter: error: --output must differ from the input"


def test_eval_tasks_spellings():
    (config,) = options("eval", "--model", "m", "--tasks", "a:0", "b", "--tasks", "c,d:5", "--num-fewshot", "3",
                        "--include-path", "tasks/", "--batch-size", "auto", "--apply-chat-template", "--limit", "0.5")  # fmt: skip
    assert config.tasks == ["a:0", "b", "c,d:5"] and config.num_fewshot == 3
    assert (config.include_path, config.batch_size, config.limit) == ("tasks/", "auto", 0.5)
    assert config.apply_chat_template is True
    assert options("eval", "--model", "m")[0].tasks is None  # the leaderboard six


def test_tiny_example_options():
    (config,) = options("tiny-example", "--output", "runs/tiny", "--rows", "8", "--seed", "3")
    assert (config.output, config.rows, config.seed) == ("runs/tiny", 8, 3)


def test_train_max_length_both_spellings_and_dataset_format():
    for spelling in ("--max-length", "--max_length"):
        argv = ["train", "--model_name_or_path", "m", "--dataset_name", "d.jsonl", spelling, "512"]
        script, config, model, data = options(*argv, "--dataset-format", "alpaca", *TRAINING)
        assert type(config).__name__ == "PoFTConfig" and config.max_length == 512
        assert (model.model_name_or_path, script.dataset_name, data.dataset_format) == (
            "m",
            "d.jsonl",
            "alpaca",
        )


def test_train_without_a_model_is_a_usage_error(capsys):
    err = usage_error(capsys, "train", "--dataset_name", "d.jsonl", *TRAINING)
    assert "poft train: error: --model_name_or_path is required" in err


def test_dpo_passes_trust_remote_code_to_the_model_like_train():
    for name in ("train", "dpo"):
        argv = [name, "--model_name_or_path", "m", "--dataset_name", "d", "--trust-remote-code", "true"]
        _, config, model, *_ = options(*argv, *TRAINING)
        kwargs = model_init_kwargs(config, model)
        assert kwargs["trust_remote_code"] is True and kwargs["revision"] == model.model_revision


def test_usage_errors_are_one_line_pointing_at_help(capsys):
    """argparse's usage block (160 lines for `poft train`) is left out: the error and where the help is."""
    for argv in (["score", "--dataset", "d", "--output", "o"], ["nope"], ["filter", "s", "--output", "o"]):
        err = usage_error(capsys, *argv)
        assert len(err.strip().splitlines()) == 1 and err.rstrip().endswith("--help`)"), err
    err = usage_error(capsys, "train", "--dataset_name", "d.jsonl", *TRAINING)
    assert err.strip().splitlines() == [
        "poft train: error: --model_name_or_path is required (a local folder or a Hub id) "
        "(see `poft train --help`)"
    ]


def test_debug_is_a_flag_before_the_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "--debug" in capsys.readouterr().out
    assert "required: --model" in usage_error(capsys, "--debug", "score", "--dataset", "d", "--output", "o")


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_use_no_deprecated_option(path):
    """The recipes name `activation_checkpointing` (transformers' `gradient_checkpointing` is deprecated)."""
    import warnings

    from trl import ModelConfig, ScriptArguments, TrlParser

    from poft.training_configs import PoFTConfig, PoFTDPOConfig

    config = PoFTDPOConfig if "_dpo_" in path.name else PoFTConfig
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        TrlParser((ScriptArguments, config, ModelConfig)).parse_args_and_config(
            args=["--config", str(path), "--use_cpu", "true"]
        )
    assert [
        str(w.message) for w in caught if issubclass(w.category, (FutureWarning, DeprecationWarning))
    ] == []
