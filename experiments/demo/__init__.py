"""`poft demo`: an offline end-to-end PoFT experiment on noisy synthetic data (see run.py).

Why it lives inside the installed package and not beside it: `poft demo` (what `make demo` runs) is a
subcommand of the installed CLI and must work from `pip install poft` with no checkout, offline; it is
also the integration test that drives the library's real paths (PoFTTrainer, `poft score`'s
score_dataset, the scorer's log-prob sums) on real, tiny models. It costs nothing when unused: nothing
imports it until `poft demo` runs. Modules, bottom to top (no import cycles; tests/unit/test_import_graph.py):
console (progress bar, quiet libraries) -> methods -> config, tasks, noise -> train, evaluate -> parallel ->
assets -> report, plots -> run -> tune (`python -m poft.demo.tune`: the learning-rate choice behind config.py).
"""

from .config import FULL, MINI, DemoConfig
from .run import run_demo

__all__ = ["FULL", "MINI", "DemoConfig", "run_demo"]
