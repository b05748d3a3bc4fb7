"""The toy demo (`python -m experiments.demo`, `make demo`): an offline end-to-end PoFT experiment on noisy
synthetic data (see run.py).

It drives the library's real paths (PoFTTrainer, `poft score`'s score_dataset, the scorer's log-prob sums) on
real, tiny models built from configs (`poft.tiny`), so it is also an integration test of them
(tests/integration/test_demo.py). Modules, bottom to top (no import cycles; tests/unit/test_import_graph.py):
console (progress bar, quiet libraries) -> methods -> config, tasks, noise -> train, evaluate -> parallel ->
assets -> report, plots -> run; beside the package, experiments/tune.py (the learning-rate choice behind
config.py) and experiments/publish.py (its tables into docs/RESULTS.md).
"""

from .config import FULL, MINI, DemoArguments, DemoConfig
from .run import main, run_demo

__all__ = ["FULL", "MINI", "DemoArguments", "DemoConfig", "main", "run_demo"]
