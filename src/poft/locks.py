"""One writer per output folder: an advisory lock that `poft train`, `poft dpo`, `poft filter` and the
finishing step of `poft score` take on the folder they write.

    with output_lock("runs/a", command="poft train"):
        ...  # write into runs/a

The lock is `fcntl.flock` on a file in the folder (`.poft.lock`), taken without waiting: when another
process holds it, `OutputLockedError` names that process (pid, host, command, start time, which the holder
wrote into the file) and says to wait for it or to choose another folder. The kernel releases a flock when
the process that holds it ends, however it ends (SIGKILL, out of memory), so a killed run never leaves a
lock that blocks the next one (on NFS, the lock of a machine that was lost is released when the server's
lease for it expires: about 90 s with NFSv4): the file stays, and its content is only informative (the last
holder; it records only the pid, host name, command and start time). Processes forked by the holder
(data-loader workers) share its lock until they end too.

In a multi-process run (torchrun, accelerate launch) only the main process takes the lock (`RANK` 0): the
other processes write into the same folder by design, and must not be refused by their own run.

A folder that `poft filter` replaces as a whole (it writes a temporary sibling and renames it into place)
is locked by a sibling file instead (`.NAME.poft.lock` beside `NAME`: `replacement_lock`), which is removed
when the run ends.

Network filesystems: the lock only stops a second run where the filesystem honours `flock`. Local disks do;
on Linux, NFS emulates `flock` with byte-range locks, which reach the server with NFSv4 or NFSv3 with the
lock daemon (`lockd`), but only the local machine with the `nolock` mount option (and some FUSE or object
store mounts, such as s3fs and gcsfuse, keep locks local or do not have them). There, two runs on two
machines are *not* stopped, and write into one folder. Where `flock` fails outright (ENOLCK, EOPNOTSUPP),
poft warns and goes on without the lock. On such filesystems, give each run its own output folder.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from .console import is_main_process

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not locked there
    fcntl = None

LOCK_FILE = ".poft.lock"
# flock failing this way means the filesystem has no locks (NFS without lockd, some FUSE mounts)
NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


class OutputLockedError(ValueError):
    """Another process holds the lock of an output folder: this run stops before writing anything there."""


def holder_text(path: Path) -> str:
    """Who holds the lock, from what the holder wrote into the lock file."""
    try:
        holder = json.loads(path.read_text())
        return f"`{holder['command']}` (pid {holder['pid']} on {holder['host']}, started {holder['started']})"
    except (OSError, ValueError, KeyError, TypeError):  # written a moment later, or not by poft
        return f"another process (its details are not in {path} yet)"


def holder_record(command: str) -> str:
    """What the holder writes into the lock file: enough for the refused run to name it."""
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    record = {"pid": os.getpid(), "host": socket.gethostname(), "command": command, "started": started}
    return json.dumps(record) + "\n"


def flock(fd: int, path: Path, what: Path, wait: bool) -> None:
    """Lock the open file `fd` at once, or raise OutputLockedError naming its holder; with `wait`, say who
    holds it and wait for it instead."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        if not wait:
            raise OutputLockedError(
                f"{what} is in use by {holder_text(path)}: wait for that run to end, or choose another output "
                "folder"
            ) from None
        print(f"poft: waiting for {holder_text(path)} to finish writing {what}", file=sys.stderr, flush=True)
        fcntl.flock(fd, fcntl.LOCK_EX)


def acquire(path: Path, what: Path, wait: bool = False) -> int | None:
    """Open and lock `path` (refused at once unless `wait`); the open file's descriptor, or None where the
    filesystem has no locks.

    Retries when the file it locked was removed or replaced meanwhile (a `replacement_lock` released by
    another run), so two runs never hold locks on two different files of one name."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            flock(fd, path, what, wait)
        except OSError as e:
            os.close(fd)
            if e.errno not in NO_LOCKS:
                raise
            print(
                f"poft: warning: cannot lock {what} ({e.strerror}; a network filesystem without locks?): "
                "nothing stops another run from writing there at the same time",
                file=sys.stderr,
            )
            return None
        except BaseException:  # refused (OutputLockedError), or Ctrl-C while waiting
            os.close(fd)
            raise
        with contextlib.suppress(FileNotFoundError):
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        os.close(fd)  # locked a file that is no longer at `path`: lock the one that is


@contextlib.contextmanager
def locked_file(path: Path, what: Path, command: str, *, remove: bool, wait: bool = False) -> Iterator[bool]:
    """Hold the flock of `path` (naming `what` when refused) for the block; `remove` it at the end.
    Yields whether this process holds a lock (False: not the main process, or no locks here)."""
    if fcntl is None or not is_main_process():
        yield False
        return
    fd = acquire(path, what, wait)
    if fd is None:
        yield False
        return
    try:
        os.ftruncate(fd, 0)
        os.write(fd, holder_record(command).encode())
        yield True
    finally:
        if remove:  # while still holding it: a run waiting on this file retries on the new one
            with contextlib.suppress(OSError):
                path.unlink()
        os.close(fd)  # releases the flock


@contextlib.contextmanager
def output_lock(folder: str | Path, *, command: str, wait: bool = False) -> Iterator[bool]:
    """Hold the lock of an output folder (created if missing) for the block; refuse at once with
    `OutputLockedError` when another run holds it, or with `wait` wait for it (for a short step that
    several runs may do in turn). A no-op on processes other than the main one.
    Yields whether the lock is held (False: not the main process, or a filesystem without locks)."""
    folder = Path(folder)
    if is_main_process():
        folder.mkdir(parents=True, exist_ok=True)
    with locked_file(folder / LOCK_FILE, folder, command, remove=False, wait=wait) as held:
        yield held


@contextlib.contextmanager
def replacement_lock(folder: str | Path, *, command: str) -> Iterator[bool]:
    """Hold the lock of a folder that is written elsewhere and renamed into place (`poft filter`): a sibling
    file `.NAME.poft.lock`, removed at the end. The parent folder is created if missing."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with locked_file(folder.parent / f".{folder.name}.poft.lock", folder, command, remove=True) as held:
        yield held
