"""poft: Preference-Oriented Supervised Fine-Tuning (arXiv 2412.12865) on top of TRL.

The public names load on first use (module-level `__getattr__`): `import poft` and `poft --help` do not
import torch or TRL.
"""

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_HOMES = {
    "ChatFormat": ".chat",
    "ChatTemplateError": ".chat",
    "PoFTConfig": ".training_configs",
    "PoFTDPOConfig": ".training_configs",
    "PoFTDPOTrainer": ".dpo",
    "PoFTTrainer": ".trainer",
    "RowError": ".readers",
    "ScoreConfig": ".configs",
    "score_dataset": ".scoring",
    "normalize_scores": ".loss",
    "poft_loss": ".loss",
    "poft_weight": ".loss",
    "sequence_logprob_sums": ".loss",
}
__all__ = [
    "ChatFormat",
    "ChatTemplateError",
    "PoFTConfig",
    "PoFTDPOConfig",
    "PoFTDPOTrainer",
    "PoFTTrainer",
    "RowError",
    "ScoreConfig",
    "score_dataset",
    "normalize_scores",
    "poft_loss",
    "poft_weight",
    "sequence_logprob_sums",
]

if TYPE_CHECKING:
    from .chat import ChatFormat, ChatTemplateError
    from .configs import ScoreConfig
    from .dpo import PoFTDPOTrainer
    from .loss import normalize_scores, poft_loss, poft_weight, sequence_logprob_sums
    from .readers import RowError
    from .scoring import score_dataset
    from .trainer import PoFTTrainer
    from .training_configs import PoFTConfig, PoFTDPOConfig


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'poft' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name], __name__), name)
    globals()[name] = value  # the next access does not come back here
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])
