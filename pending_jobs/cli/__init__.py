"""The `pending-jobs` command: parse, dispatch, and turn failures into cron-friendly exit codes."""

from __future__ import annotations

import argparse
import contextlib
import errno
import faulthandler
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence

from .. import __version__
from ..declared import process
from ..errors import EXIT_CONFIG, CommandFailed, ConfigError, DatabaseUnavailable, exit_code_of
from ..store import ours
from . import callbacks, common, core, ops, run, schedules, web

log = logging.getLogger(__name__)

WRITE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO)
"""Errors of writing the output (a full disk or quota, a file too large, a device gone): said in one line."""

# Each module adds its subcommands; a subcommand's `func(args) -> exit code` does the work.
MODULES: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = [
    core.register,
    run.register,
    callbacks.register,
    ops.register,
    schedules.register,
    web.register,
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
    # ValueError, OSError: stderr without a file descriptor (embedded, captured); RuntimeError: no stderr at
    # all (`2>&-`: Python sets sys.stderr to None), where every command would otherwise stop here, exit 1.
    with contextlib.suppress(ValueError, OSError, RuntimeError):
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:
        return int(stop.code or 0) and EXIT_CONFIG
    try:
        common.configure_logs(args.verbose, args.log_format or "text", args.log_file or "")
        code: int = args.func(args)
        if sys.stdout is not None:  # None: started with stdout closed (`>&-`); print() then writes nothing
            sys.stdout.flush()  # a closed pipe or a full disk shows here, inside the handler below
        return code
    except BaseException as raised:
        return _failed(raised)


def entry() -> None:
    """The `pending-jobs` command: run it, then leave, even if a handler left a thread or a process behind.

    A run ends when its work is recorded. A thread a handler started and never ended (a non-daemon
    thread, a ThreadPoolExecutor) would keep the interpreter alive at exit, and a process-isolated child
    that ignores SIGTERM would hang multiprocessing's exit hook; under `flock` that would stop every later
    tick. So children and commands' process groups still alive are killed, and with foreign threads left
    the process exits at once.
    """
    code = main()
    # Commands still running (a worker waits on one after the grace was spent) are killed here, not
    # only by process.kill_leftovers's atexit hook: when threads remain we leave by os._exit below,
    # which runs no atexit hook, and an orphaned command would run on beside its rescued job.
    process.kill_leftovers()
    isolated = sys.modules.get("pending_jobs.isolation")  # imported only by a run that isolated a task in a process
    if isolated is not None:
        isolated.kill_leftovers()  # each child's process group: what its handler started dies with it
    started = sys.modules.get("multiprocessing")  # children a handler started itself, not through isolation
    for child in started.active_children() if started is not None else ():
        child.kill()
    others = [t for t in threading.enumerate() if t is not threading.current_thread()]
    if not others:
        sys.exit(code)
    # Any thread counts, daemon or not: ThreadPoolExecutor's workers are daemon threads (Python 3.9+)
    # that its exit hook joins all the same, so only leaving without exit hooks is sure to end the run.
    left = [t.name for t in others if not t.name.startswith("pending-jobs")]  # ours need no mention
    if left:
        log.warning("leaving while %d thread(s) started by handlers still run: %s", len(left), ", ".join(left[:5]))
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:  # None: started with it closed
            stream.flush()
    logging.shutdown()
    os._exit(code)


def _failed(raised: BaseException) -> int:
    """Say in one line why the command ended, and return its exit code (errors.exit_code_of)."""
    error = ours(raised)
    code = exit_code_of(error)
    if isinstance(error, BrokenPipeError):
        # The reader went away (`list | head -1`): stop quietly, as Unix tools do.
        _drop_output()
    elif isinstance(error, ConfigError | CommandFailed):
        common.eprint(str(error))
    elif isinstance(error, DatabaseUnavailable):
        common.eprint(f"database unavailable: {error}")
    elif isinstance(error, OSError) and error.errno in WRITE_ERRORS:  # `list > /dev/full`: not a bug of ours
        common.eprint(f"cannot write: {error}")
        _drop_output()
    elif isinstance(error, KeyboardInterrupt):
        common.eprint("interrupted")
    elif isinstance(error, Exception):  # a bug: say so in one line, with the traceback for the log
        log.error("unexpected error", exc_info=error)
        common.eprint(f"unexpected error: {type(error).__name__}: {_first_line(error)}")
    else:
        raise raised  # SystemExit and the like
    return code


def _drop_output() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush of what it holds does not fail again."""
    with contextlib.suppress(OSError, ValueError, AttributeError):  # AttributeError: stdout is None
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _first_line(value: object) -> str:
    try:
        return " ".join(str(value).split())[:300]
    except Exception:
        return f"<unprintable {type(value).__name__}>"


if __name__ == "__main__":
    entry()
