"""An output folder written as a unit: claimed first, written to a hidden sibling, renamed into place.

`poft filter` and `poft merge` write whole folders that later commands read as results. Here:
- `claim_output` refuses an `--output` whose files would be mixed with the new ones (a non-empty folder,
  unless `overwrite`), a file, the input itself, or an `overwrite` that would delete the input; locks the
  folder against other writers (`poft.locks`: another filter or merge, a training run into it); and removes
  the hidden siblings a killed run into it left;
- `new_folder` gives the hidden temporary sibling (`.NAME.poft-tmp-*`) to write into; `finish_folder`
  renames it into place, moving an old folder aside first and removing it only after;
- a failed write removes the temporary folder and raises `OutputWriteError` naming `--output` and the
  cause: nothing is left at `--output` that a later command could take for a result.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from .locks import LOCK_FILE, output_lock, replacement_lock


class OutputWriteError(OSError):
    """An output folder could not be written (disk full, permission): nothing was left at its place."""


def check_output(output: str | Path, source: str | Path, *, overwrite: bool) -> None:
    """Refuse an `--output` whose files would be mixed with the new ones or whose loss would lose the input: the input itself, a file, a non-empty folder without `overwrite`, a folder holding the input."""
    output, source = Path(output), Path(source)
    if output.resolve() == source.resolve():
        raise ValueError("--output must differ from the input")
    if output.exists() and not output.is_dir():
        raise ValueError(f"--output {output} is a file, not a folder")
    held = sorted(p.name for p in output.iterdir() if p.name != LOCK_FILE) if output.is_dir() else []
    if held and not overwrite:
        names = ", ".join(held[:4]) + (f" and {len(held) - 4} more" if len(held) > 4 else "")
        raise ValueError(
            f"--output {output} is not empty (it holds {names}): choose a new folder, or pass --overwrite to "
            "replace it once the new one is written"
        )
    if held and source.resolve().is_relative_to(output.resolve()):
        raise ValueError(f"--overwrite {output} would delete the input {source}, which is inside it")


def siblings(output: Path, kind: str) -> list[Path]:
    """Hidden siblings of `output` a run into it writes: temporary ("tmp") or replaced ("old")."""
    return sorted(output.parent.glob(f".{output.name}.poft-{kind}-*"))


def sibling(output: Path, kind: str) -> Path:
    return output.parent / f".{output.name}.poft-{kind}-{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def claim_output(output: str | Path, source: str | Path, *, command: str, overwrite: bool) -> Iterator[None]:
    """Claim `--output` for one run before its input is read: refuse what `check_output` refuses, lock the
    folder against other writers (another run of a command that writes whole folders, a training run into
    it), and remove the hidden siblings that a killed run into it left."""
    output = Path(output)
    check_output(output, source, overwrite=overwrite)
    with contextlib.ExitStack() as stack:
        held = stack.enter_context(replacement_lock(output, command=command))
        if output.is_dir():  # a run writing into it now (poft train, poft score) must end first
            stack.enter_context(output_lock(output, command=command))
        if held:  # no live run owns them (on a filesystem without locks that cannot be known)
            for stale in siblings(output, "tmp") + siblings(output, "old"):
                shutil.rmtree(stale, ignore_errors=True)
        yield


def write_error(output: Path, e: OSError, what: str) -> OutputWriteError:
    """One line naming `--output`, what was written and the cause (`exits.error_line` prints it)."""
    cause = e.strerror or str(e)
    text = f"cannot write {what} to {output}: {cause}; nothing was left there"
    return OutputWriteError(e.errno, text) if e.errno is not None else OutputWriteError(text)


def new_folder(output: Path) -> Path:
    """The hidden temporary sibling of `output` to write the new folder into (its parent created)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    return sibling(output, "tmp")


@contextlib.contextmanager
def written_as_unit(output: str | Path, what: str) -> Iterator[Path]:
    """`with written_as_unit(out, "the merged model") as tmp:` write into `tmp`; on success it replaces
    `out`, on failure it is removed (an OSError becomes `OutputWriteError` naming `out` and `what`)."""
    output = Path(output)
    tmp = new_folder(output)
    try:
        yield tmp
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and not isinstance(e, OutputWriteError):
            raise write_error(output, e, what) from e
        raise
    finish_folder(tmp, output, what)


def finish_folder(new: Path, output: Path, what: str) -> None:
    """Rename `new` to `output`; an existing `output` is moved aside first and removed after."""
    old = sibling(output, "old") if output.exists() else None
    try:
        if old:
            os.rename(output, old)
        os.rename(new, output)
    except OSError as e:
        if old and old.exists() and not output.exists():
            os.rename(old, output)  # put the old folder back
        shutil.rmtree(new, ignore_errors=True)
        raise write_error(output, e, what) from e
    if old:
        shutil.rmtree(old, ignore_errors=True)
