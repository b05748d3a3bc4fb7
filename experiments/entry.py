"""How an experiment's `main(argv)` reads its options and ends, the way `poft <command>` does.

Options: one dataclass, every field with `metadata={"help": ...}`, read by the library's parser
(`poft.options.OptionParser`): `--config options.yaml` plus `--key value` overrides, `--max-length` or
`--max_length`. Endings: options that cannot be used are one line, `<prog>: error: ... (see `<prog> --help`)`,
exit 2; a failure that names what is wrong (a missing file, a bad value, ...) is one line too, exit 1; Ctrl-C
says what was kept and how to resume, exit 130. POFT_DEBUG=1 shows the traceback instead; an error nobody
expected always does (these are research scripts: the traceback is what to look at).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from poft.cli import usage_exit
from poft.exits import error_line, quiet_libraries
from poft.options import OptionParser

# Errors that say what is wrong in their message; NotImplementedError: a setting the experiment does not support
USER_ERRORS = (ValueError, OSError, ImportError, NotImplementedError)


def parse_options(options: type, argv: Sequence[str] | None, prog: str, description: str = "") -> Any:
    """One `options` instance from `--config FILE.yaml` and the command line (`argv`; None: sys.argv[1:])."""
    parser = OptionParser([options], prog=prog, description=description)
    parser.error = usage_exit(prog)
    parser.add_argument("--config", default=argparse.SUPPRESS, metavar="YAML",
                        help="Options from a YAML file (keys are the option names); the command line overrides it.")  # fmt: skip
    try:
        (parsed,) = parser.parse_args_and_config(sys.argv[1:] if argv is None else argv)
    except (ValueError, OSError) as e:  # an unreadable --config, unknown keys in it, a refused combination
        parser.error(" ".join(str(e).split()))
    return parsed


def run_main(
    prog: str,
    options: type,
    run: Callable[[Any], object],
    argv: Sequence[str] | None,
    interrupted: Callable[[Any], str],
    description: str = "",
) -> int:
    """Parse `options`, call `run(parsed)`; 0 when it returns, 1 after a user error, 130 after Ctrl-C
    (`interrupted(parsed)`: what is kept and how to resume)."""
    parsed = parse_options(options, argv, prog, description)
    debug = os.environ.get("POFT_DEBUG", "") not in ("", "0")
    if not debug:
        quiet_libraries()
    failed, stopped = None, False
    try:
        run(parsed)
    except KeyboardInterrupt:
        if debug:
            raise
        stopped = True  # said below: leaving this block frees the interrupted frames (progress bars close)
    except USER_ERRORS as e:
        if debug:
            raise
        failed = " ".join(str(e).split()) if isinstance(e, NotImplementedError) else error_line(e)
    if stopped:
        print(f"\n{prog}: {interrupted(parsed)}", file=sys.stderr)
        return 130
    if failed:  # after the progress bars of the failed frames closed, so that it is the last line
        print(f"{prog}: error: {failed}", file=sys.stderr)
        return 1
    return 0
