"""The `pending-jobs` command: parse, dispatch, and turn failures into cron-friendly exit codes."""

from __future__ import annotations

import argparse
import faulthandler
import logging
import signal
import sys
from collections.abc import Callable, Sequence

from sqlalchemy import exc

from .. import __version__, db, logs
from ..errors import ConfigError, DatabaseUnavailable
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
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:
        return int(stop.code or 0) and common.EXIT_CONFIG
    try:
        logs.configure(args.verbose, args.log_format or "text", args.log_file or "")
        code: int = args.func(args)
        return code
    except ConfigError as error:
        common.eprint(str(error))
        return common.EXIT_CONFIG
    except DatabaseUnavailable as error:
        common.eprint(f"database unavailable: {error}")
        return common.EXIT_TEMPFAIL
    except exc.DBAPIError as error:
        if db.is_unavailable(error):
            common.eprint(f"database unavailable: {type(error.orig).__name__}: {_first_line(error.orig)}")
            return common.EXIT_TEMPFAIL
        raise
    except LookupError as error:
        common.eprint(str(error.args[0] if error.args else error))
        return common.EXIT_FAILURE
    except KeyboardInterrupt:
        common.eprint("interrupted")
        return 130
    except Exception as error:  # a bug: say so in one line, with the traceback for the log
        log.error("unexpected error", exc_info=True)
        common.eprint(f"unexpected error: {type(error).__name__}: {_first_line(error)}")
        return common.EXIT_FAILURE


def _first_line(value: object) -> str:
    return " ".join(str(value).split())[:300]


if __name__ == "__main__":
    sys.exit(main())
