"""Rows built a chunk at a time and kept as memory-mapped Arrow, so reading 10^6+ rows holds one chunk in Python.

`ChunkedRows` takes the rows a reader builds (a dict of columns per chunk), keeps the first chunk in memory
and, as soon as a second one comes, writes every chunk to Arrow stream files in a private working folder
(`TMPDIR`: about the size of the data in Arrow; removed when the process exits, or by the next poft process
when it was killed) and returns a
`datasets.Dataset` memory-mapped from them. A column whose Arrow type changes between chunks (all nulls, then
text; integers, then floats) is unified the way Arrow promotes types; types that cannot be unified (text in
some rows, numbers in others) are refused naming the column and where each type was first seen.

`RowPlaces` says where each row is in the input ("line 12" / "row 3") as one integer array, not one string
per row.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, Features, concatenate_datasets


def arrow_column(dataset: Dataset, column: str) -> pa.ChunkedArray:
    """One column of the rows as Arrow (`select`ed rows honoured; no Python object per row)."""
    return dataset.with_format("arrow", columns=[column])[column]


def float_column(dataset: Dataset, column: str) -> np.ndarray:
    """A numeric column as one float64 array, nulls as NaN, read through Arrow."""
    return pc.cast(arrow_column(dataset, column), pa.float64()).to_numpy(zero_copy_only=False)


class RowPlaces(Sequence[str]):
    """Where each row is in the input: `places[i]` is "line N" (JSON lines) or "row N" (other sources)."""

    def __init__(self, numbers: np.ndarray | Sequence[int], unit: str = "row"):
        self.numbers = np.asarray(numbers, dtype=np.int64)
        self.unit = unit

    def __len__(self) -> int:
        return len(self.numbers)

    def __getitem__(self, i):  # noqa: ANN001 - an index or a slice, as a Sequence takes
        if isinstance(i, slice):
            return RowPlaces(self.numbers[i], self.unit)
        return f"{self.unit} {int(self.numbers[i])}"

    def select(self, indices: Sequence[int] | np.ndarray) -> RowPlaces:
        """The places of the rows at `indices` (in that order)."""
        return RowPlaces(self.numbers[np.asarray(indices, dtype=np.int64)], self.unit)


_WORKDIRS: list[Path] = []


def _remove_workdirs() -> None:
    for folder in _WORKDIRS:
        shutil.rmtree(folder, ignore_errors=True)


atexit.register(_remove_workdirs)


def private_workdir(prefix: str = "poft-rows-") -> Path:
    """A new folder under TMPDIR that this process removes when it exits. Its name carries the pid, so that
    the folders of a process that was killed (no exit handler ran) are removed by the next one."""
    _remove_orphans()
    folder = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-"))
    _WORKDIRS.append(folder)
    return folder


def _remove_orphans() -> None:
    """Remove `poft-*-PID-*` folders in TMPDIR whose process is gone (once per process)."""
    if _WORKDIRS:
        return
    for folder in Path(tempfile.gettempdir()).glob("poft-*-*-*"):
        pid = folder.name.split("-")[2]
        if folder.is_dir() and pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class ChunkedRows:
    """Chunks of rows in, one Dataset out (see the module docstring). `source` names the data in errors."""

    def __init__(self, source: str):
        self.source = source
        self.first: Dataset | None = None
        self.first_place = ""
        self.folder: Path | None = None
        self.files: list[tuple[Path, str]] = []  # (file, place of its first row)
        self._writer: pa.ipc.RecordBatchStreamWriter | None = None
        self._sink = None
        self._schema: pa.Schema | None = None

    def add(self, part: Dataset, first_place: str) -> None:
        """One chunk (in row order); `first_place` names its first row ("line 12") in errors."""
        if self.first is None and self.folder is None:
            self.first, self.first_place = part, first_place
            return
        if self.folder is None:
            self.folder = private_workdir()
            first, self.first = self.first, None
            self._write(first, self.first_place)
        self._write(part, first_place)

    def _write(self, part: Dataset, place: str) -> None:
        table = part.data.table
        if self._writer is None or not table.schema.equals(self._schema, check_metadata=True):
            self._close()
            path = self.folder / f"rows-{len(self.files):05d}.arrow"
            self._sink = pa.OSFile(str(path), "wb")
            self._writer = pa.ipc.new_stream(self._sink, table.schema)
            self._schema = table.schema
            self.files.append((path, place))
        self._writer.write_table(table)

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._sink.close()
            self._writer = self._sink = None

    def finish(self) -> Dataset | None:
        """Every chunk added, as one Dataset (None when no chunk came)."""
        if self.folder is None:
            return self.first
        self._close()
        parts = [Dataset.from_file(str(path)) for path, _ in self.files]
        if len(parts) > 1:
            parts = self._unified(parts)
        return parts[0] if len(parts) == 1 else concatenate_datasets(parts)

    def _unified(self, parts: list[Dataset]) -> list[Dataset]:
        """The parts cast to one schema: Arrow's permissive promotion (null -> any type, int -> float)."""
        schemas = [part.data.table.schema.remove_metadata() for part in parts]
        try:
            schema = pa.unify_schemas(schemas, promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise ValueError(self._type_clash(schemas) or f"{self.source}: {e}") from e
        features = Features.from_arrow_schema(schema)
        try:
            return [part if part.features == features else part.cast(features) for part in parts]
        except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError) as e:
            raise ValueError(self._type_clash(schemas) or f"{self.source}: {e}") from e

    def _type_clash(self, schemas: list[pa.Schema]) -> str | None:
        """'column x holds int64 from row 0 and string from line 9000 on' for the first column that changes
        between two non-null types that cannot be promoted to one."""
        for name in schemas[0].names:
            seen: dict[str, str] = {}
            for schema, (_, place) in zip(schemas, self.files, strict=True):
                kind = str(schema.field(name).type) if name in schema.names else "null"
                if kind != "null":
                    seen.setdefault(kind, place)
            if len(seen) > 1:
                (a, at_a), (b, at_b) = list(seen.items())[:2]
                if not _promotable(a, b):
                    return (
                        f"{self.source}: column {name!r} holds {a} values (in the rows from {at_a} on) and {b} "
                        f"values (in the rows from {at_b} on); a column needs one type"
                    )
        return None


def _promotable(a: str, b: str) -> bool:
    numbers = ("int", "uint", "float", "double", "halffloat")
    return a.startswith(numbers) and b.startswith(numbers)
