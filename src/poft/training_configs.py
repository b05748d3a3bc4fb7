"""PoFTConfig and PoFTDPOConfig: TRL's SFTConfig / DPOConfig plus poft's own options (`configs.PoFTArguments`,
`configs.PoFTDPOArguments`), with the defaults poft changes.

Every TRL / transformers field keeps its meaning. These classes import TRL (several seconds), so the fast
`poft train --help` reads poft's part from `configs.py` alone; `poft train --help-all` lists everything.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from trl import DPOConfig, SFTConfig

from .configs import (
    DPO_RANGES,
    OBJECTIVES,
    ON_BAD_ROW,
    TRAINING_RANGES,
    PoFTArguments,
    PoFTDPOArguments,
    check_choices,
    check_ranges,
)
from .console import say_once
from .device import fit_training_args
from .templates import TEMPLATE_NAMES, template_path

TRL_LOGGING_STEPS = 10  # SFTConfig's default logging_steps


@dataclass
class PoFTConfig(PoFTArguments, SFTConfig):
    """SFTConfig plus the PoFT objective (`PoFTArguments`)."""

    logging_steps: float | None = field(
        default=None,
        metadata={
            "help": "Log every X optimizer steps (a float in (0, 1): that share of the total steps). Unset: every "
            "max(1, min(10, total steps // 20)) steps, so a short run logs every step and a long one every 10 "
            "(TRL's default)."
        },
    )

    def __post_init__(self):
        # numbers and choices first, before anything is said or set up: one line naming the option
        check_ranges(self, TRAINING_RANGES)
        self._read_deprecated_loss_type()
        self.check_poft_options()
        # unset: TRL's 10 until the total is known, then records.auto_logging_steps (RunRecord.on_train_begin)
        self.logging_steps_auto = self.logging_steps is None
        if self.logging_steps_auto:
            self.logging_steps = TRL_LOGGING_STEPS
        if (
            self.chat_template_path in TEMPLATE_NAMES
        ):  # else TRL's meaning: a .jinja file, a tokenizer folder / id
            self.chat_template_path = str(template_path(self.chat_template_path))
        say_once(fit_training_args(self))  # no GPU: the CPU, in bf16 where it has the instructions
        SFTConfig.__post_init__(self)
        if self.truncation_mode != "keep_start":
            raise ValueError("PoFT truncates conversations from the end (truncation_mode='keep_start') only")
        if self.assistant_only_loss:
            warnings.warn(
                "assistant_only_loss is ignored: PoFTTrainer always trains on response tokens only "
                "(assistant contents + end-of-turn), located under any chat template by poft.chat.",
                stacklevel=2,
            )
            self.assistant_only_loss = False

    def _read_deprecated_loss_type(self) -> None:
        """`loss_type: poft|bi_poft|sft` (recipes written before `objective` existed) sets `objective`."""
        if self.loss_type not in OBJECTIVES:
            return
        if self.objective not in ("poft", self.loss_type):  # "poft" is the default: not a choice we can see
            raise ValueError(
                f"objective={self.objective!r} and loss_type={self.loss_type!r} disagree; loss_type "
                f"'{self.loss_type}' is the deprecated spelling of objective: set objective only (TRL's "
                "loss_type is 'nll' or 'dft')"
            )
        warnings.warn(
            f"loss_type={self.loss_type!r} is deprecated as PoFT's objective (TRL's loss_type is 'nll' | "
            f"'dft'): use objective={self.loss_type!r}; read as objective={self.loss_type!r}, "
            "loss_type='nll'",
            FutureWarning,
            stacklevel=4,
        )
        self.objective, self.loss_type = self.loss_type, "nll"


@dataclass
class PoFTDPOConfig(PoFTDPOArguments, DPOConfig):
    """TRL's DPOConfig with reference log-probs precomputed by default (the reference never changes)."""

    def __post_init__(self):
        check_ranges(self, {**TRAINING_RANGES, **DPO_RANGES})  # before anything is said or set up
        check_choices(self, {"on_bad_row": ON_BAD_ROW})
        say_once(fit_training_args(self))  # no GPU: the CPU, in bf16 where it has the instructions
        DPOConfig.__post_init__(self)
