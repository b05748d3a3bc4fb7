"""Put a finished demo run's tables into docs/RESULTS.md, between marker comments, so they are the command's own
output.

    python -m experiments.demo --output demo_output                                                # make demo
    python -m experiments.publish --output demo_output --results docs/RESULTS.md --block default   # make demo-results

A block in the markdown file is delimited by

    <!-- poft-demo:NAME begin -->
    ...
    <!-- poft-demo:NAME end -->

and everything between the two lines is replaced. Block NAME gets the results table (`report.results_table`,
the table the demo prints), block NAME-claims, where the file has one, the per-seed claims tables
(`report.claims_table`, as in report.md). The table is recomputed from OUTPUT/results.json by the function that
printed it, and checked against OUTPUT/report.md before anything is written, so a block can only hold what the
command wrote. Text outside the blocks (the discussion) is left as it is.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .demo.report import claims_table, results_table
from .entry import run_main

PROG = "python -m experiments.publish"


@dataclass
class PublishArguments:
    """`python -m experiments.publish`'s options."""

    output: str = field(
        default="demo_output", metadata={"help": "The finished `python -m experiments.demo --output` folder."}
    )
    results: str = field(
        default="docs/RESULTS.md", metadata={"help": "The markdown file holding the blocks."}
    )
    block: str = field(default="default", metadata={"help": "Block name (default: the default run's table)."})


def markers(name: str) -> tuple[str, str]:
    return f"<!-- poft-demo:{name} begin -->", f"<!-- poft-demo:{name} end -->"


def has_block(text: str, name: str) -> bool:
    begin, end = markers(name)
    return begin in text and end in text


def replace_block(text: str, name: str, content: str) -> str:
    """`text` with the lines between NAME's begin and end markers replaced by `content`.

    Raises ValueError if a marker is missing, appears more than once, or the end comes before the begin."""
    begin, end = markers(name)
    lines = text.split("\n")
    starts = [i for i, line in enumerate(lines) if line.strip() == begin]
    stops = [i for i, line in enumerate(lines) if line.strip() == end]
    if len(starts) != 1 or len(stops) != 1:
        raise ValueError(
            f"block {name!r}: expected one {begin!r} line and one {end!r} line, found {len(starts)} and {len(stops)}"
        )
    if stops[0] < starts[0]:
        raise ValueError(f"block {name!r}: the end marker comes before the begin marker")
    return "\n".join([*lines[: starts[0] + 1], content.rstrip("\n"), *lines[stops[0] :]])


def read_block(text: str, name: str) -> str:
    """The text between NAME's markers (without them)."""
    begin, end = markers(name)
    lines = text.split("\n")
    start = next(i for i, line in enumerate(lines) if line.strip() == begin)
    stop = next(i for i, line in enumerate(lines) if line.strip() == end)
    return "\n".join(lines[start + 1 : stop])


def tables(output: Path) -> tuple[str, str]:
    """(results table, claims tables) of the run in `output`, checked against its report.md."""
    runs = json.loads((output / "results.json").read_text())["runs"]
    table, claims = results_table(runs), "\n".join(claims_table(runs))
    report = (output / "report.md").read_text()
    for what, block in (("results table", table), ("claims tables", claims)):
        if block not in report:
            raise ValueError(f"{output}: the {what} from results.json is not the one in report.md")
    return table, claims


def publish(output: Path, results: Path, name: str) -> list[str]:
    """Write the run's tables into `results`' blocks NAME (required) and NAME-claims (if present)."""
    table, claims = tables(output)
    text = results.read_text()
    new = replace_block(text, name, table)
    written = [name]
    if has_block(new, f"{name}-claims"):
        new = replace_block(new, f"{name}-claims", claims)
        written.append(f"{name}-claims")
    results.write_text(new)
    return written


def main(argv: list[str] | None = None) -> int:
    return run_main(PROG, PublishArguments, write, argv, lambda args: "interrupted; nothing was written",
                    description=__doc__.split("\n")[0])  # fmt: skip


def write(args: PublishArguments) -> None:
    written = publish(Path(args.output), Path(args.results), args.block)
    print(f"{PROG}: {args.output}'s tables written into {args.results}, block(s) {', '.join(written)}")


if __name__ == "__main__":
    sys.exit(main())
