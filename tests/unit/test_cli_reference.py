"""docs/cli.md is what scripts/cli_reference.py writes from the option dataclasses now: every command's
`--help`, at a fixed width. A changed option, help text or command makes this fail until the page is regenerated.
The generator runs in a fresh process, as `make cli-docs` runs it."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "cli_reference.py"


def test_docs_cli_md_is_what_the_generator_writes():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "40"}  # the script fixes the width itself
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, (
        "docs/cli.md is stale: run `make cli-docs` (= .venv/bin/python scripts/cli_reference.py) and commit it\n"
        + done.stderr[-2000:]
    )


def test_the_reference_has_every_command_and_its_options():
    from poft.cli import COMMANDS

    page = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    for name in COMMANDS:
        assert f"## poft {name}\n" in page and f"usage: poft {name} " in page, name
    assert "--max_length MAX_LENGTH" in page and "--chat_template_path" in page
