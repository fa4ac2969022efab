"""What every command shares: settings from flags, the store, output, and exit codes."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from .. import config, logs
from ..config import Settings
from ..errors import ConfigError
from ..store import Store, create_engine, open_store

log = logging.getLogger("pending_jobs.cli")


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
        try:
            logs.configure(getattr(args, "verbose", 0), settings.log_format, settings.log_file)
        except OSError as error:
            raise ConfigError(f"cannot open log file {settings.log_file}: {error.strerror or error}") from None
    return settings


def open_database(settings: Settings, pool_size: int = 5) -> tuple[sa.Engine, Store]:
    """Engine and store for the configured database."""
    engine = create_engine(settings.database_url, pool_size=pool_size)
    return engine, open_store(engine)


def print_json(value: Any) -> None:
    """Machine-readable output: one JSON document."""
    print(json.dumps(value, indent=2, default=str, ensure_ascii=False))


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A plain, aligned text table."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if hasattr(value, "isoformat"):
        return str(value.isoformat(sep=" ", timespec="seconds"))
    return str(value)


def eprint(message: str) -> None:
    """One line for a person, on stderr (cron mails it)."""
    print(f"pending-jobs: {message}", file=sys.stderr)
