"""Which checkpoints can be resumed from, and what `--resume_from_checkpoint last` means.

transformers writes a checkpoint folder in this order: weights, optimizer + scheduler + RNG states, and
`trainer_state.json` last. A run killed while saving, or stopped by a full disk, leaves a folder without a
readable trainer state for the step in its name; `get_last_checkpoint` still picks it and the resume fails
("Can't find a valid checkpoint") until the folder is deleted by hand. Here only complete checkpoints count:
- `last` (or `true`): the latest complete checkpoint of the output folder (incomplete ones named and skipped);
- a path: used when complete, refused naming what is missing otherwise.
The checkpoint chosen is then checked for files cut short or damaged after it was saved (a copy, a disk
error): each torch file (.pt, .pth, .bin) must be a whole zip archive and each safetensors file as long as
its header says. Such a checkpoint is refused naming the file and the previous checkpoint to resume from,
instead of torch's "PytorchStreamReader failed reading zip archive" with no file named. Only the structure is
checked (cheap for any size), not every byte.
"""

from __future__ import annotations

import json
import re
import zipfile
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


def latest_complete_checkpoint(
    output_dir: str | Path, before: Path | None = None
) -> tuple[Path | None, list[tuple[Path, str]]]:
    """(the latest complete checkpoint or None, [(incomplete checkpoint, why)] newer than it); `before`: only
    the checkpoints of lower steps than that one."""
    output_dir = Path(output_dir)
    found = []
    if output_dir.is_dir():
        found = sorted(
            (int(m.group(1)), p)
            for p in output_dir.iterdir()
            if p.is_dir() and (m := _CHECKPOINT_RE.match(p.name))
        )
    if before is not None and (limit := _CHECKPOINT_RE.match(before.name)):
        found = [(step, p) for step, p in found if step < int(limit.group(1))]
    skipped = []
    for _, path in reversed(found):
        problem = checkpoint_problem(path)
        if problem is None:
            return path, skipped
        skipped.append((path, problem))
    return None, skipped


def safetensors_problem(path: Path) -> str | None:
    """None when a safetensors file is as long as its header says; otherwise what is wrong with it."""
    size = path.stat().st_size
    with open(path, "rb") as file:
        head = file.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else None
        if length is None or 8 + length > size:
            return f"{size} bytes, shorter than its header"
        try:
            header = json.loads(file.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return "its header is not valid JSON"
    if not isinstance(header, dict):
        return "its header is not a JSON object"
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    needed = 8 + length + max(ends, default=0)
    return f"{size} bytes, its header needs {needed}" if needed > size else None


def damaged_file(folder: str | Path) -> tuple[Path, str] | None:
    """(the first file of a checkpoint that cannot be read whole, why), or None: a torch file (.pt, .pth,
    .bin: torch.save writes zip archives) without a whole zip directory, a safetensors file shorter than its
    header says."""
    for path in sorted(Path(folder).iterdir()):
        if not path.is_file():
            continue
        if path.suffix in (".pt", ".pth", ".bin") and not zipfile.is_zipfile(path):
            return path, f"{path.stat().st_size} bytes, not a whole zip archive as torch.save writes"
        if path.suffix == ".safetensors" and (problem := safetensors_problem(path)):
            return path, problem
    return None


def check_readable(path: Path, value: str | bool, output_dir: str | Path) -> None:
    """Refuse a checkpoint with a file cut short or damaged, naming it and saying how to go on."""
    damaged = damaged_file(path)
    if damaged is None:
        return
    file, why = damaged
    older, _ = latest_complete_checkpoint(output_dir, before=path)
    if older is not None and damaged_file(older) is None:
        go_on = f"resume from the previous checkpoint with --resume_from_checkpoint {older}, or delete {path}"
    else:
        go_on = f"delete {path} (no older complete checkpoint is readable) and start again without the option"
    raise CheckpointError(
        f"--resume_from_checkpoint {value}: {file} cannot be read: it looks cut short or damaged ({why}); "
        f"{go_on}"
    )


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
        check_readable(path, value, output_dir)
        say(f"resuming from {path}")
        return str(path)
    problem = checkpoint_problem(value)
    if problem:
        raise CheckpointError(
            f"--resume_from_checkpoint {value}: {problem}; use --resume_from_checkpoint last for the latest "
            "complete checkpoint"
        )
    check_readable(Path(value), value, Path(value).parent)
    return str(value)
