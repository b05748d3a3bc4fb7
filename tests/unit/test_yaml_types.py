"""A `--config FILE.yaml` value of the wrong type is one error naming the key, the file and the type expected
(argparse converts only string defaults and checks no default's choices); a single value for a list option
is a one-item list, as on the command line."""

import pytest

from poft.cli import parse_command


def config_file(tmp_path, text: str) -> str:
    path = tmp_path / "options.yaml"
    path.write_text(text)
    return str(path)


def usage_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as stopped:
        parse_command(argv)
    assert stopped.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_one_model_as_a_string_is_a_one_item_list(tmp_path):
    """Was iterated letter by letter: "--model '/': expected PATH_OR_HUB_ID"."""
    path = config_file(tmp_path, "dataset: rows.jsonl\nmodel: /models/llama\noutput: out\n")
    (score,) = parse_command(["score", "--config", path]).options
    assert score.model == ["/models/llama"]
    path = config_file(tmp_path, "dataset: rows.jsonl\nmodel: [a, b=/m/b]\noutput: out\n")
    assert parse_command(["score", "--config", path]).options[0].model == ["a", "b=/m/b"]


def test_values_are_converted_as_on_the_command_line(tmp_path):
    path = config_file(tmp_path, 'dataset: d\nmodel: m\noutput: o\nmax_length: "12"\nflush_seconds: 2\n')
    (score,) = parse_command(["score", "--config", path]).options
    assert score.max_length == 12 and score.flush_seconds == 2.0
    (evaluation,) = parse_command(
        ["eval", "--config", config_file(tmp_path, "model: m\nbatch_size: 8\n")]
    ).options
    assert evaluation.batch_size == "8"  # a string option given a YAML number: its text


@pytest.mark.parametrize(
    "line, said",
    [
        ("max_length: 1.5", "key 'max_length' must be an integer, got 1.5 (a YAML number)"),
        ("dtype: float64", "key 'dtype' must be one of auto, float32, bfloat16, float16, got 'float64'"),
        ("progress: maybe", "key 'progress' must be true or false, got 'maybe' (a YAML string)"),
        ("rows_per_shard: [1]", "key 'rows_per_shard' must be an integer, got [1] (a YAML list)"),
        ("rows_per_shard: null", "key 'rows_per_shard' must be an integer, got null (a YAML null)"),
        ("normalization: true", "key 'normalization' must be a string, got true (a YAML boolean)"),
        ("model: [a, {b: 1}]", "key 'model' must be a list of strings (or one string)"),
    ],
)
def test_a_value_of_the_wrong_type_names_the_key_the_file_and_the_type(tmp_path, capsys, line, said):
    base = {"dataset": "dataset: d", "model": "model: m", "output": "output: o"}
    base[line.split(":")[0]] = line
    path = config_file(tmp_path, "\n".join(base.values()) + "\n")
    assert f"poft score: error: {path}: {said}" in usage_error(capsys, ["score", "--config", path])


def test_train_and_dpo_configs_read_by_trl_are_checked_too(tmp_path, capsys):
    path = config_file(tmp_path, "model_name_or_path: m\ndataset_name: d\noutput_dir: o\nmax_steps: 1.5\n")
    line = usage_error(capsys, ["train", "--config", path])
    assert f"poft train: error: {path}: key 'max_steps' must be an integer, got 1.5" in line
    path = config_file(tmp_path, "model_name_or_path: [m]\ndataset_name: d\noutput_dir: o\n")
    line = usage_error(capsys, ["dpo", "--config", path])
    assert f"{path}: key 'model_name_or_path' must be a string, got ['m'] (a YAML list)" in line
