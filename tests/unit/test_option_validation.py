"""Numeric options are checked when they are read, before any model or data is loaded: a NaN, an infinity or a
value out of range stops `poft train` / `poft dpo` with one line naming the option and its allowed range.

Seen on the earlier main: bi-PoFT `--undesirable_weight inf` was accepted and the run stopped later on an
infinite loss that named other options; `--learning_rate nan`, `--max_grad_norm inf`, `--adam_beta1 2` and
DPO's `--beta nan` were accepted too.
"""

import math
import re

import pytest

from poft.cli import parse_command
from poft.configs import FLOAT32_MAX, Interval, check_ranges

TRAIN_CASES = [
    ("undesirable_weight", "inf", "a finite number within float32 range, >= 0"),
    ("undesirable_weight", "-1", "a finite number within float32 range, >= 0"),
    ("undesirable_margin", "inf", "a finite number within float32 range, >= 0"),
    ("undesirable_target", "nan", r"a finite number in \(0, 0.5\]"),
    ("undesirable_target", "0.7", r"a finite number in \(0, 0.5\]"),
    ("beta", "0", "a finite number within float32 range, > 0"),
    ("beta", "1e39", "a finite number within float32 range, > 0"),
    ("gamma", "-inf", "a finite number within float32 range, got"),
    ("learning_rate", "nan", "a finite number within float32 range, >= 0"),
    ("learning_rate", "-1e-3", "a finite number within float32 range, >= 0"),
    ("num_train_epochs", "nan", "a finite number within float32 range, >= 0"),
    ("weight_decay", "inf", "a finite number within float32 range, >= 0"),
    ("max_grad_norm", "inf", "a finite number within float32 range, >= 0"),
    ("adam_beta1", "2", r"a finite number in \[0, 1\)"),
    ("adam_epsilon", "nan", "a finite number within float32 range, >= 0"),
    ("warmup_steps", "-5", "a finite number within float32 range, >= 0"),
]


def refusal(argv: list[str], capsys) -> str:
    """The one error line `poft <command>` prints for argv, at parse time (exit 2)."""
    with pytest.raises(SystemExit) as stopped:
        parse_command(argv)
    assert stopped.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(lines) == 1
    return lines[0]


@pytest.mark.parametrize("name, value, allowed", TRAIN_CASES)
def test_train_refuses_a_number_out_of_range_naming_the_option(tmp_path, capsys, name, value, allowed):
    argv = ["train", "--output_dir", str(tmp_path), "--objective", "bi_poft", f"--{name}={value}"]
    line = refusal(argv, capsys)
    assert line.startswith(f"poft train: error: {name} must be ")
    assert re.search(f"{name} must be {allowed}", line), line
    assert "no GPU" not in capsys.readouterr().out  # refused before anything is set up or said


@pytest.mark.parametrize(
    "name, value, allowed",
    [
        ("beta", "nan", "a finite number within float32 range, > 0"),
        ("learning_rate", "inf", "a finite number within float32 range, >= 0"),
        ("label_smoothing", "0.5", r"a finite number in [0, 0.5)"),
    ],
)
def test_dpo_refuses_a_number_out_of_range_naming_the_option(tmp_path, capsys, name, value, allowed):
    line = refusal(["dpo", "--output_dir", str(tmp_path), f"--{name}={value}"], capsys)
    assert f"poft dpo: error: {name} must be {allowed}, got " in line


def test_values_in_range_are_accepted(tmp_path):
    argv = ["train", "--output_dir", str(tmp_path), "--report_to", "none", "--bf16", "false"]
    argv += "--undesirable_weight 3.5 --learning_rate 0 --beta 1e30 --undesirable_target 0.5".split()
    config = parse_command(argv).options[1]
    assert config.undesirable_weight == 3.5 and config.beta == 1e30 and config.undesirable_target == 0.5


def test_an_interval_holds_finite_numbers_between_its_bounds_only():
    half_open = Interval(0.0, 1.0, open_high=True)
    assert half_open.holds(0.0) and half_open.holds(0.999) and not half_open.holds(1.0)
    assert not any(half_open.holds(v) for v in (math.nan, math.inf, -math.inf, -1e-9, True, "0.5"))
    assert Interval(0.0, FLOAT32_MAX, open_low=True).describe() == "a finite number within float32 range, > 0"


def test_an_unset_optional_number_is_not_checked():
    class Options:
        max_grad_norm = None

    check_ranges(Options(), {"max_grad_norm": Interval(0.0, 1.0)})
    Options.max_grad_norm = math.nan
    with pytest.raises(ValueError, match=r"max_grad_norm must be a finite number in \[0, 1\], got nan"):
        check_ranges(Options(), {"max_grad_norm": Interval(0.0, 1.0)})
