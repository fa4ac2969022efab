"""The `pending-jobs` command: parse, dispatch, and turn failures into cron-friendly exit codes."""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence

from .. import __version__, logs
from ..errors import EXIT_CONFIG, CommandFailed, ConfigError, DatabaseUnavailable, exit_code_of
from ..store import is_unavailable
from . import callbacks, common, core, ops

log = logging.getLogger(__name__)

# Each module adds its subcommands; a subcommand's `func(args) -> exit code` does the work.
MODULES: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = [
    core.register,
    callbacks.register,
    ops.register,
]


def build_parser() -> argparse.ArgumentParser:
    """The whole command line."""
    parser = argparse.ArgumentParser(
        prog="pending-jobs",
        description="Run background jobs from a database table, one cron tick at a time.",
        epilog="Exit codes: 0 done, 1 command failed, 2 configuration error, 75 database unavailable.",
    )
    parser.add_argument("--version", action="version", version=f"pending-jobs {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in MODULES:
        register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    # `kill -USR1 <pid>` prints every thread's stack to stderr: how to see where a stuck run waits.
    with contextlib.suppress(ValueError, OSError):  # stderr without a file descriptor (embedded, captured)
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:
        return int(stop.code or 0) and EXIT_CONFIG
    try:
        logs.configure(args.verbose, args.log_format or "text", args.log_file or "")
        code: int = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler below
        return code
    except BaseException as raised:
        return _failed(raised)


def _failed(raised: BaseException) -> int:
    """Say in one line why the command ended, and return its exit code (errors.exit_code_of)."""
    error = _ours(raised)
    code = exit_code_of(error)
    if isinstance(error, BrokenPipeError):
        # The reader went away (`list | head -1`): stop quietly, as Unix tools do. Point stdout at
        # /dev/null so the interpreter's final flush does not complain either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    elif isinstance(error, ConfigError | CommandFailed):
        common.eprint(str(error))
    elif isinstance(error, DatabaseUnavailable):
        common.eprint(f"database unavailable: {error}")
    elif isinstance(error, KeyboardInterrupt):
        common.eprint("interrupted")
    elif isinstance(error, Exception):  # a bug: say so in one line, with the traceback for the log
        log.error("unexpected error", exc_info=error)
        common.eprint(f"unexpected error: {type(error).__name__}: {_first_line(error)}")
    else:
        raise raised  # SystemExit and the like
    return code


def _ours(error: BaseException) -> BaseException:
    """A driver error that means the database is unreachable or read-only becomes DatabaseUnavailable."""
    if is_unavailable(error):
        return DatabaseUnavailable(f"{type(getattr(error, 'orig', error)).__name__}: "
                                   f"{_first_line(getattr(error, 'orig', error))}")
    return error


def _first_line(value: object) -> str:
    try:
        return " ".join(str(value).split())[:300]
    except Exception:
        return f"<unprintable {type(value).__name__}>"


if __name__ == "__main__":
    sys.exit(main())
