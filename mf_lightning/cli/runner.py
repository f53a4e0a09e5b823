"""One behaviour for bad input across every command-line tool (see :mod:`mf_lightning.errors`).

``cli_main(main, prog)`` wraps a tool's ``main(argv) -> int``: user errors become one line on
stderr (``<prog>: error: <what and where>``) and exit code :data:`~mf_lightning.errors.EXIT_INPUT`;
``--debug`` (or ``MF_DEBUG=1``) lets the traceback through. Anything else is a bug and keeps its
traceback. :func:`parser` gives every tool the same ``--debug`` flag in its ``--help``.
"""

from __future__ import annotations

import argparse
import errno
import functools
import os
import sys
from typing import Callable, Optional, Sequence, Tuple

from mf_lightning.errors import EXIT_FAILED, EXIT_INPUT, InputError, RunFailedError

DEBUG_FLAG = "--debug"


def parser(prog: str, description: str = "", **kwargs) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description, **kwargs)
    p.add_argument(DEBUG_FLAG, action="store_true", help="show the full traceback of an error")
    return p


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def classify(exc: BaseException) -> Optional[Tuple[int, str]]:
    """(exit code, one-line message) for an error the user can act on; None for a bug."""
    if isinstance(exc, InputError):
        return EXIT_INPUT, one_line(exc)
    if isinstance(exc, RunFailedError):
        return EXIT_FAILED, one_line(exc)
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return EXIT_FAILED, (f"disk full while writing {exc.filename or 'output'}: free space and run again "
                             "(resumable runs continue)")
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)):
        what = {FileNotFoundError: "no such file", IsADirectoryError: "is a folder, not a file",
                NotADirectoryError: "not a folder", PermissionError: "permission denied"}[type(exc)]
        return EXIT_INPUT, f"{exc.filename}: {what}" if exc.filename else one_line(exc)
    return None


def debug_requested(argv: Sequence[str]) -> bool:
    return DEBUG_FLAG in argv or os.environ.get("MF_DEBUG", "") not in ("", "0")


def report(exc: BaseException, prog: str) -> Optional[int]:
    """Print a user error's one line and return its exit code; None if it is a bug."""
    known = classify(exc)
    if known is None:
        return None
    code, message = known
    print(f"{prog}: error: {message}", file=sys.stderr)
    return code


def cli_main(prog: str):
    """Decorator for a tool's ``main(argv) -> int`` (see the module docstring)."""

    def wrap(main: Callable[[Sequence[str]], int]) -> Callable[[Optional[Sequence[str]]], int]:
        @functools.wraps(main)
        def run(argv: Optional[Sequence[str]] = None) -> int:
            argv = list(sys.argv[1:] if argv is None else argv)
            try:
                return main(argv)
            except Exception as exc:  # noqa: BLE001 - sorted into user errors and bugs below
                if debug_requested(argv):
                    raise
                code = report(exc, prog)
                if code is None:
                    raise
                return code

        return run

    return wrap


def run_hydra_job(job, cfg, prog: str):
    """Run a Hydra entry point's body with the CLIs' bad-input policy: a user error is one line
    on stderr and exit code 2 (``debug=true`` shows the traceback), a run whose result cannot be
    trusted exits 3; bugs keep their traceback (Hydra prints it)."""
    try:
        return job(cfg)
    except Exception as exc:  # noqa: BLE001 - sorted into user errors and bugs
        if bool(cfg.get("debug", False)) or debug_requested([]):
            raise
        code = report(exc, prog)
        if code is None:
            raise
        sys.stdout.flush()
        sys.exit(code)
