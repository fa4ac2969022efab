"""Exceptions handlers raise to steer their job, and the ones the CLI maps to exit codes."""

from __future__ import annotations


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
    """A setting is missing or wrong; the CLI exits 2."""


class DatabaseUnavailable(Exception):
    """The database cannot be reached or refuses writes (read-only); the CLI exits 75."""


class SchemaNotCurrent(ConfigError):
    """The database is not migrated to the version this code needs."""
