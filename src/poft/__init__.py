"""poft: Preference-Oriented Supervised Fine-Tuning (arXiv 2412.12865) on top of TRL."""

from .chat import ChatFormat, ChatTemplateError, RowError
from .loss import normalize_scores, poft_loss, poft_weight, sequence_logprob_sums
from .trainer import PoFTConfig, PoFTTrainer

__all__ = [
    "ChatFormat",
    "ChatTemplateError",
    "PoFTConfig",
    "PoFTTrainer",
    "RowError",
    "normalize_scores",
    "poft_loss",
    "poft_weight",
    "sequence_logprob_sums",
]
__version__ = "0.1.0"
