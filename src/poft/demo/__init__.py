"""`poft demo`: an offline end-to-end PoFT experiment on noisy synthetic data (see run.py)."""

from .config import FULL, MINI, DemoConfig
from .run import run_demo

__all__ = ["FULL", "MINI", "DemoConfig", "run_demo"]
