"""The README's quickstart, run as written: the one ```bash block under its "Quickstart" heading.

The commands run in order in one bash process (so `source` and variables carry over, as in the user's shell),
in a copy of the repository's files (git's tracked and untracked-but-not-ignored files) with the real .venv
linked in, so that the outputs land in a temporary folder and not in the checkout. The real models come from
the real-model cache (`make real-models`, run by the quickstart itself: instant when the cache is complete,
which the `real_models` fixture requires). Each command must exit 0; then the outputs each stage should leave
are checked, and the time of each command is printed (pytest -s shows it).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import time
from pathlib import Path

from conftest import ENV

ROOT = Path(__file__).resolve().parents[2]
HEADING = "## Quickstart"
STEP = "@@quickstart-step"


def quickstart_commands(readme: str) -> list[str]:
    """The commands of the first ```bash block after HEADING: comments dropped, `\\` continuations joined."""
    section = readme.split(f"\n{HEADING}", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    commands, current = [], ""
    for line in block.splitlines():
        line = re.sub(r"\s+#.*$", "", line) if not line.lstrip().startswith("#") else ""
        current += line.strip() if current else line
        if current.endswith("\\"):
            current = current[:-1].rstrip() + " "
        elif current.strip():
            commands.append(current.strip())
            current = ""
    return commands


def copy_checkout(target: Path) -> None:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split("\0")  # fmt: skip
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():  # a file deleted but not yet committed is listed and absent
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)  # mtimes kept: make sees .venv's stamp as up to date
    (target / ".venv").symlink_to(ROOT / ".venv")


def script(commands: list[str]) -> str:
    """Each command as written, then a marker line with its exit status and the time; stop at a failure."""
    lines = ["set -o pipefail"]
    for i, command in enumerate(commands):
        lines += [command, f'rc=$?; echo "{STEP} {i} $rc $(date +%s.%N)"; [ $rc -eq 0 ] || exit $rc']
    return "\n".join(lines) + "\n"


def test_readme_quickstart_runs_as_written(real_models, tmp_path):
    commands = quickstart_commands((ROOT / "README.md").read_text(encoding="utf-8"))
    assert commands and commands[0].startswith("source .venv/bin/activate"), commands
    work = tmp_path / "poft"
    copy_checkout(work)
    start = time.time()
    # the user's defaults: the tier's POFT_CPU_BF16=0 (float32 training) left out
    env = {k: v for k, v in ENV.items() if k != "POFT_CPU_BF16"}
    done = subprocess.run(["bash", "-c", script(commands)], cwd=work, env=env, capture_output=True, text=True)
    output = done.stdout + done.stderr
    finished, last = {}, start
    for line in done.stdout.splitlines():
        if line.startswith(STEP):
            _, i, rc, at = line.split()
            finished[int(i)] = int(rc)
            print(f"[{float(at) - last:6.0f} s] exit {rc}: {commands[int(i)]}")
            last = float(at)
    failed = next((i for i, rc in finished.items() if rc != 0), len(finished))
    assert done.returncode == 0 and len(finished) == len(commands), (
        f"quickstart command {failed + 1} failed: {commands[min(failed, len(commands) - 1)]}\n{output[-6000:]}"
    )
    print(f"quickstart: {len(commands)} commands in {time.time() - start:.0f} s")

    out = work / "runs" / "quickstart"
    manifest = json.loads((out / "scored" / "manifest.json").read_text())
    assert [m["alias"] for m in manifest["models"]] == ["smol", "qwen"], manifest  # poft score
    assert manifest["dataset"]["n_rows_out"] == 24 and manifest["counts"]["ref_score_nan"] == 0, manifest
    assert (out / "scored" / "inspect" / "summary.json").exists()  # poft inspect
    from datasets import load_from_disk  # poft filter: the README says no corrupted row is kept

    kept = load_from_disk(str(out / "top"))["noise"]
    assert len(kept) == 18 and "corrupted" not in kept and kept.count("clean") >= 16, kept
    steps = [json.loads(s) for s in (out / "poft" / "log.jsonl").read_text().splitlines()]
    losses = [s["loss"] for s in steps if "loss" in s]
    assert losses and all(math.isfinite(x) for x in losses), steps  # poft train
    assert all(0 < s["poft/weight"] <= 1 for s in steps if "poft/weight" in s), steps
    assert (out / "poft" / "model.safetensors").exists() and (out / "dpo" / "model.safetensors").exists()
    history = json.loads((out / "dpo" / "trainer_state.json").read_text())["log_history"]
    assert any(math.isfinite(h["loss"]) for h in history if "loss" in h), history  # poft dpo
    results = json.loads((out / "eval" / "results.json").read_text())  # poft eval
    assert 0 <= results["tasks"]["quickstart_qa"]["metrics"]["acc,none"] <= 1, results
