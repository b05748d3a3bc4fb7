"""What the demo prints: one progress bar over the whole run, and libraries kept quiet around it.

The bottom of the demo package (imports no other demo module): the parent process (run.py, tune.py)
and every worker process (parallel.py) set up their console from here.
"""

from __future__ import annotations

import os
import warnings

from tqdm.auto import tqdm


class Progress:
    """One bar over every optimizer step of the whole demo, so the ETA covers all remaining runs."""

    def __init__(self, total_steps: int, disable: bool = False):
        self.bar = tqdm(total=total_steps, unit="step", dynamic_ncols=True, disable=disable)

    def describe(self, text: str) -> None:
        self.bar.set_description(text)

    def write(self, text: str) -> None:
        self.bar.write(text)

    def close(self) -> None:
        self.bar.close()


def quiet_libraries() -> None:
    """No per-library progress bars, info logs or deprecation notices: the demo prints its own progress."""
    import datasets
    import huggingface_hub
    import torch
    import transformers

    datasets.disable_progress_bars()
    huggingface_hub.utils.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)  # TRL/transformers deprecation notices
    os.environ.setdefault("DS_ACCELERATOR", "cpu" if not torch.cuda.is_available() else "cuda")
