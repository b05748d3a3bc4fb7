"""Put a finished demo run's tables into RESULTS.md, between marker comments, so they are the command's own output.

    poft demo --output demo_output                                     # make demo
    python -m poft.demo.publish --output demo_output --block default   # make demo-results

A block in the markdown file is delimited by

    <!-- poft-demo:NAME begin -->
    ...
    <!-- poft-demo:NAME end -->

and everything between the two lines is replaced. Block NAME gets the results table (`report.results_table`,
the table `poft demo` prints), block NAME-claims, where the file has one, the per-seed claims tables
(`report.claims_table`, as in report.md). The table is recomputed from OUTPUT/results.json by the function that
printed it, and checked against OUTPUT/report.md before anything is written, so a block can only hold what the
command wrote. Text outside the blocks (the discussion) is left as it is.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .report import claims_table, results_table


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
    parser = argparse.ArgumentParser(prog="python -m poft.demo.publish", description=__doc__.split("\n")[0])
    parser.add_argument("--output", default="demo_output", help="the finished `poft demo --output` folder")
    parser.add_argument("--results", default="RESULTS.md", help="the markdown file holding the blocks")
    parser.add_argument("--block", default="default", help="block name (default: the default run's table)")
    args = parser.parse_args(argv)
    written = publish(Path(args.output), Path(args.results), args.block)
    print(f"poft demo: {args.output}'s tables written into {args.results}, block(s) {', '.join(written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
