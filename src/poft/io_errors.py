"""Which I/O errors were writes, and the file they were writing: for one error line that names the output.

A full disk fails `write()`, whose OSError names no file; torch.save reports it as a RuntimeError of its zip
writer and safetensors as a SafetensorError, text only. `write_failed` recognises all three, and `writing(path)`
puts the path into an OSError that lacks one. Standard library only: `poft inspect` and `poft filter` import
it without torch.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)  # errors only a write can meet
# how torch's zip writer and safetensors' Rust writer report a failed write (they raise no OSError)
WRITE_FAILURE_TEXTS = (
    "No space left",
    "os error 28",
    "Disk quota exceeded",
    "inline_container",
    "file write failed",
)


def write_failed(error: BaseException) -> bool:
    """Whether `error` is a write that failed for want of space (or a refused write): an OSError such as
    ENOSPC, or the same failure as torch.save and safetensors' save_file report it, as text only."""
    if isinstance(error, OSError) and error.errno in WRITE_ERRNOS:
        return True
    text = str(error)
    if type(error).__name__ == "SafetensorError":
        return "while serializing" in text or "os error 28" in text  # reading says "deserializing"
    return "PytorchStreamReader" not in text and any(s in text for s in WRITE_FAILURE_TEXTS)


@contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Name `path` in an OSError raised while writing it: a full disk fails `write()`, whose error names no
    file ("[Errno 28] No space left on device"), so the error line can say "cannot write PATH"."""
    try:
        yield
    except OSError as e:
        if e.filename or e.errno is None or type(e).__module__.startswith("poft."):
            raise
        raise OSError(e.errno, e.strerror, str(path)) from e  # OSError picks the subclass of the errno
