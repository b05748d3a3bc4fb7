"""Which checkpoints can be resumed from, and what `--resume_from_checkpoint last` means.

transformers writes a checkpoint folder in this order: weights, optimizer + scheduler + RNG states, and
`trainer_state.json` last. A run killed while saving, or stopped by a full disk, leaves a folder without a
readable trainer state for the step in its name; `get_last_checkpoint` still picks it and the resume fails
("Can't find a valid checkpoint") until the folder is deleted by hand. Here only complete checkpoints count:
- `last` (or `true`): the latest complete checkpoint of the output folder (incomplete ones named and skipped);
- a path: used when complete, refused naming what is missing otherwise.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .console import say

_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "adapter_model.safetensors",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "adapter_model.bin",
)
LATEST = ("last", "latest", "true")


class CheckpointError(ValueError):
    """A checkpoint to resume from is missing or incomplete."""


def checkpoint_problem(folder: str | Path) -> str | None:
    """None when `folder` is a complete checkpoint; otherwise what is missing or unreadable."""
    folder = Path(folder)
    if not folder.is_dir():
        return "no such folder"
    state_file = folder / "trainer_state.json"
    if not state_file.exists():
        return "no trainer_state.json (the run stopped while saving it: killed, or the disk was full)"
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "trainer_state.json is cut short (the run stopped while writing it)"
    match = _CHECKPOINT_RE.match(folder.name)
    if match and state.get("global_step") != int(match.group(1)):
        return f"trainer_state.json is at step {state.get('global_step')}, not {match.group(1)}"
    has_weights = any((folder / name).exists() for name in _WEIGHTS) or any(folder.glob("global_step*"))
    if not has_weights:
        return "no model weights"
    return None


def latest_complete_checkpoint(output_dir: str | Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """(the latest complete checkpoint or None, [(incomplete checkpoint, why)] newer than it)."""
    output_dir = Path(output_dir)
    found = []
    if output_dir.is_dir():
        found = sorted(
            (int(m.group(1)), p)
            for p in output_dir.iterdir()
            if p.is_dir() and (m := _CHECKPOINT_RE.match(p.name))
        )
    skipped = []
    for _, path in reversed(found):
        problem = checkpoint_problem(path)
        if problem is None:
            return path, skipped
        skipped.append((path, problem))
    return None, skipped


def resolve_resume(value: str | bool | None, output_dir: str | Path) -> str | None:
    """What `trainer.train(resume_from_checkpoint=...)` should get for the user's value: None (start fresh),
    or the path of a complete checkpoint. Prints which one and what was skipped."""
    if value is None or value is False or (isinstance(value, str) and value.lower() in ("", "false", "none")):
        return None
    if value is True or (isinstance(value, str) and value.lower() in LATEST):
        path, skipped = latest_complete_checkpoint(output_dir)
        for folder, why in skipped:
            say(f"{folder} is incomplete ({why}); not resuming from it")
        if path is None:
            raise CheckpointError(
                f"--resume_from_checkpoint {value}: no complete checkpoint in {output_dir}"
                + (f" ({len(skipped)} incomplete)" if skipped else "")
                + "; drop the option to start from the beginning"
            )
        say(f"resuming from {path}")
        return str(path)
    problem = checkpoint_problem(value)
    if problem:
        raise CheckpointError(
            f"--resume_from_checkpoint {value}: {problem}; use --resume_from_checkpoint last for the latest "
            "complete checkpoint"
        )
    return str(value)
