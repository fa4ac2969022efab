"""What every command shares: settings from flags, the store, output, and exit codes."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import sqlalchemy as sa

from .. import config, logs, validation
from ..config import Settings
from ..errors import ConfigError
from ..logs import printable
from ..store import Store, create_engine, open_store

log = logging.getLogger("pending_jobs.cli")


def argument(parse: Callable[[Any], Any]) -> Callable[[str], Any]:
    """An argparse `type` from a settings parser: its ValueError becomes argparse's message (exit 2)."""

    def convert(value: str) -> Any:
        try:
            return parse(value)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    convert.__name__ = parse.__name__
    return convert


def _passing(rule: Callable[[str], str | None]) -> Callable[[str], str]:
    """A parser from a validation rule (why a value is refused, or None): the value, or ValueError saying why."""

    def check(value: str) -> str:
        problem = rule(value)
        if problem:
            raise ValueError(problem)
        return value

    check.__name__ = rule.__name__
    return check


DURATION = argument(config.duration)
AGE = argument(validation.age)  # how long ago, for a filter or a purge: bounded, see validation.AGE
JOB_ID = argument(validation.job_id)
QUEUE = argument(_passing(validation.queue_problem))  # the console's check, so both refuse the same names alike
TEXT = argument(_passing(validation.text_problem))  # invalid UTF-8 in argv reached the driver: UnicodeEncodeError
INTEGER = argument(config.integer)
LIST_LIMIT = 1_000_000  # rows a listing prints; beyond it a LIMIT overflows a database's integer or its memory


def _limit(value: str) -> int:
    number = config.integer(value)
    if not 1 <= number <= LIST_LIMIT:  # 0 and -5 printed one row; 10**20 was a driver's traceback
        raise ValueError(f"{number} is outside 1 to {LIST_LIMIT:,}")
    return number


LIMIT = argument(_limit)


def add_common(parser: argparse.ArgumentParser) -> None:
    """Flags every command takes."""
    parser.add_argument("--config", metavar="FILE", help="TOML settings file (env PENDING_JOBS_CONFIG)")
    parser.add_argument("--database-url", metavar="URL", help=config.env_help("database_url"))
    parser.add_argument("-v", "--verbose", action="count", default=0, help="say what happened (-vv: debug)")
    parser.add_argument("--log-format", choices=("text", "json"), help=config.env_help("log_format"))
    parser.add_argument("--log-file", metavar="PATH", help=config.env_help("log_file"))


def add_json(parser: argparse.ArgumentParser) -> None:
    """`--json` for read commands."""
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def settings_from(args: argparse.Namespace) -> Settings:
    """Flags that are set win over the environment, the config file and defaults."""
    flags = {name: getattr(args, name, None) for name in config.BY_NAME}
    settings = config.load(flags, config_file=getattr(args, "config", None))
    # `main` set logging up from the flags alone; the environment or the config file may name others.
    if (settings.log_format, settings.log_file) != (getattr(args, "log_format", None) or "text",
                                                     getattr(args, "log_file", None) or ""):
        configure_logs(getattr(args, "verbose", 0), settings.log_format, settings.log_file)
    return settings


def configure_logs(verbosity: int, log_format: str, log_file: str) -> None:
    """Logging as the flags or settings say; a log file that cannot be opened is a configuration error."""
    try:
        logs.configure(verbosity, log_format, log_file)
    except OSError as error:
        raise ConfigError(f"cannot open log file {log_file}: {error.strerror or error}") from None


def open_database(settings: Settings, pool_size: int = 5, create: bool = False) -> tuple[sa.Engine, Store]:
    """Engine and store for the configured database; only `migrate` creates it (an SQLite file)."""
    engine = create_engine(settings.database_url, pool_size=pool_size, create=create)
    return engine, open_store(engine)


def print_json(value: Any) -> None:
    """Machine-readable output: one JSON document (strict JSON: a number JSON cannot hold is given as text)."""
    try:
        text = json.dumps(value, indent=2, default=str, ensure_ascii=False, allow_nan=False)
    except ValueError:  # an infinity SQLite keeps in a number column: json.dumps wrote `Infinity`, which no
        text = json.dumps(_finite(value), indent=2, default=str, ensure_ascii=False)  # strict parser reads
    print(text)


def _finite(value: Any) -> Any:
    """`value` with every float that is not finite (inf, -inf, nan) as its text."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def out(text: str) -> None:
    """One line (or a block) for a person, on stdout, with control characters escaped."""
    print(printable(text))


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A plain, aligned text table."""
    cells = [[cell(value) for value in row] for row in rows]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def cell(value: Any) -> str:
    """One value as a table cell or a line shows it: a time to the second, control characters escaped."""
    if value is None:
        return "-"
    if hasattr(value, "isoformat"):
        return str(value.isoformat(sep=" ", timespec="seconds"))
    return printable(str(value), newlines=False)


def eprint(message: str) -> None:
    """One line for a person, on stderr (cron mails it); dropped when stderr cannot take it (`lossy`)."""
    lossy(sys.stderr, f"pending-jobs: {printable(message)}")


def note(text: str) -> None:
    """A line for a person on stdout that no outcome depends on (a run's summary); dropped as `lossy` says."""
    lossy(sys.stdout, printable(text))


def lossy(stream: TextIO | None, text: str) -> None:
    """Write a line that must not decide the command's fate. When the stream cannot take it (the disk under
    the crontab's `>> log 2>&1` is full, a terminal is gone) it is pointed at /dev/null: a run that failed
    here stopped before its first claim, or exited 1 after its work was recorded, for as long as the disk
    stayed full. (None: started with the stream closed.)"""
    if stream is None:
        return
    try:
        print(text, file=stream, flush=True)
    except OSError:
        with contextlib.suppress(OSError, ValueError):  # ValueError: a stream without a file descriptor
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, stream.fileno())
            os.close(devnull)
