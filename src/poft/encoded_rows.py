"""Encoded rows (input ids + response mask) kept on disk, read back a packed batch at a time.

`poft score` encodes every row of a process's share before scoring (every row is checked first, and
length-sorted packing needs every length), so at 10^6+ rows the encodings cannot stay in Python. Here each
row's ids (int32) and response mask (uint8) are appended to two flat files in a private working folder
(`arrow_rows.private_workdir`: TMPDIR, removed when the process exits); memory keeps only three numbers a row
(offset, length, truncated: 13 bytes). A batch reads its rows with `os.pread`, so the files pass through the
page cache and never count in the process's resident memory.
"""

from __future__ import annotations

import os
from array import array
from pathlib import Path

import numpy as np

from .arrow_rows import private_workdir


class EncodedRows:
    """Rows appended in order (`append`, then `close`), then read by position: `get(i)`, and the arrays
    `lengths` (tokens per row), `truncated` (bool) and `offsets` (first token of each row in the files)."""

    def __init__(self, folder: Path | None = None, name: str = "rows"):
        folder = folder or private_workdir("poft-encoded-")
        self.paths = (folder / f"{name}.ids", folder / f"{name}.mask")
        self._files = [path.open("wb") for path in self.paths]
        self._written_lengths, self._written_truncated = array("q"), array("b")
        self._fds: tuple[int, ...] = ()
        self.lengths = self.truncated = self.offsets = np.zeros(0, dtype=np.int64)

    def append(self, input_ids: list[int], response_mask: list[int], truncated: bool) -> None:
        self._files[0].write(np.asarray(input_ids, dtype=np.int32).tobytes())
        self._files[1].write(np.asarray(response_mask, dtype=np.uint8).tobytes())
        self._written_lengths.append(len(input_ids))
        self._written_truncated.append(bool(truncated))

    def close(self) -> EncodedRows:
        """Finish writing; from here on rows are read by position."""
        for f in self._files:
            f.close()
        self.lengths = np.frombuffer(self._written_lengths, dtype=np.int64).copy()
        self.truncated = np.frombuffer(self._written_truncated, dtype=np.int8).astype(bool)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)
        self._written_lengths = self._written_truncated = None
        self._fds = tuple(os.open(path, os.O_RDONLY) for path in self.paths)
        return self

    def __len__(self) -> int:
        return len(self.lengths)

    def select(self, positions: np.ndarray) -> EncodedRows:
        """The rows at `positions` (in that order), reading the same files (use it in place of this one)."""
        view = object.__new__(EncodedRows)
        view.paths, view._fds, view._files = self.paths, self._fds, []
        view.lengths = self.lengths[positions]
        view.truncated = self.truncated[positions]
        view.offsets = self.offsets[positions]
        return view

    def get(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Row i's input ids (int32) and response mask (uint8)."""
        start, n = int(self.offsets[i]), int(self.lengths[i])
        ids = np.frombuffer(os.pread(self._fds[0], 4 * n, 4 * start), dtype=np.int32)
        mask = np.frombuffer(os.pread(self._fds[1], n, start), dtype=np.uint8)
        return ids, mask

    def remove(self) -> None:
        """Close and delete the files (no row is read again)."""
        for fd in self._fds:
            os.close(fd)
        self._fds = ()
        for path in self.paths:
            path.unlink(missing_ok=True)
