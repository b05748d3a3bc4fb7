"""What poft tells the user: one main-process print, and one way to name the rows it refuses or leaves out.

Every process of a multi-process run (torchrun, accelerate launch) reads the data and makes the same
decisions; only the main process (RANK 0) says so. Bad rows are named the same way everywhere (reading,
encoding, training, preference pairs): where the row is (`line 12` / `row 3` / `pair 4`), its id when
there is one, and the problem; at most five, then how many more.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TypedDict


class BadRow(TypedDict):
    """A row left out or refused: `row` says where ("line 12", "row 3", "pair 4"), `id` is the row's id (or
    None), `problem` what is wrong with it."""

    row: str
    id: str | None
    problem: str


def is_main_process() -> bool:
    """True in a single-process run and on rank 0 of a multi-process one."""
    return os.environ.get("RANK", "0") == "0"


def say(text: str) -> None:
    """Print `poft: text` once per run (on the main process only)."""
    if is_main_process():
        print(f"poft: {text}", flush=True)


_SAID: set[str] = set()


def say_once(text: str | None) -> None:
    """`say`, but each distinct text only once per process (decisions repeated per model or per epoch)."""
    if text and text not in _SAID:
        _SAID.add(text)
        say(text)


def input_order(bad: Sequence[BadRow]) -> list[BadRow]:
    """Bad rows in input order: by kind of place ("line", "row", "pair"), then by number."""
    return sorted(bad, key=lambda b: (b["row"].split()[0], int(b["row"].split()[1])))


def name_bad_rows(bad: Sequence[BadRow], shown: int = 5) -> str:
    """`line 3 (id=a): problem; row 7: problem; ... 4 more`: the first `shown` rows, then a count."""
    named = "; ".join(
        f"{b['row']}" + (f" (id={b['id']})" if b["id"] is not None else "") + f": {b['problem']}"
        for b in bad[:shown]
    )
    return named + (f"; ... {len(bad) - shown} more" if len(bad) > shown else "")


def refuse_or_skip(
    bad: Sequence[BadRow],
    what: str,
    on_bad_row: str,
    error: type[Exception],
    hint: str = "pass --on-bad-row skip to leave them out",
) -> None:
    """The one rule for bad rows. `what` says which rows and why, e.g. "data.jsonl: 2 of 10 rows cannot be
    read as alpaca". With on_bad_row="error" raise `error` naming the first rows and how to go on; with
    "skip" say which rows are left out. Nothing happens when `bad` is empty."""
    if not bad:
        return
    if on_bad_row == "error":
        raise error(f"{what}: {name_bad_rows(bad)}. Fix them, or {hint}")
    say(f"{what}, left out: {name_bad_rows(bad)}")
