"""Exceptions handlers raise to steer their job, the ones commands end with, and their exit codes."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

EXIT_OK = 0
EXIT_FAILURE = 1  # the command ran and something it was asked for did not happen, or a bug
EXIT_CONFIG = 2  # bad flags, settings, task modules or schema version
EXIT_TEMPFAIL = 75  # database unreachable or read-only: cron simply tries again (sysexits EX_TEMPFAIL)
EXIT_INTERRUPTED = 130  # a second SIGINT/SIGTERM stopped the command at once
EXIT_PIPE = 141  # the reader of our output went away (`list | head`), as a Unix tool killed by SIGPIPE


class Retry(Exception):
    """Raised by a handler to ask for another attempt after `delay` seconds (None: the backoff)."""

    def __init__(self, delay: float | None = None, reason: str = "retry requested") -> None:
        super().__init__(reason)
        self.delay = delay
        self.reason = reason


class Fail(Exception):
    """Raised by a handler to fail its job now, without further attempts."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ConfigError(Exception):
    """A setting is missing or wrong; the command exits 2."""


class SchemaNotCurrent(ConfigError):
    """The database is not migrated to the version this code needs."""


class DatabaseUnavailable(Exception):
    """The database cannot be reached or refuses writes (read-only); the command exits 75."""


class CommandFailed(Exception):
    """What the command was asked for cannot be done (e.g. `run --job` of a job that is not pending);
    the message is for a person, and the command exits 1 without a traceback."""


def exit_code_of(error: BaseException) -> int:
    """The one mapping from how a command ended to its exit code (also stored in the runs table)."""
    if isinstance(error, ConfigError):
        return EXIT_CONFIG
    if isinstance(error, DatabaseUnavailable):
        return EXIT_TEMPFAIL
    if isinstance(error, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(error, BrokenPipeError):
        return EXIT_PIPE
    return EXIT_FAILURE


def did_you_mean(word: str, known: Iterable[str]) -> str:
    """` (did you mean 'x'?)` when `word` is close to one of `known` (a typo, a plural for a singular), else ''."""
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""
