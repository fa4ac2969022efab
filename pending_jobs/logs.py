"""Logging for the CLI: quiet by default (cron mails anything printed), text or JSON lines."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import sys

_STANDARD = set(vars(logging.makeLogRecord({})))


def printable(text: str, newlines: bool = True) -> str:
    """Text a producer wrote, safe to show in a terminal: control characters (an escape sequence in a task
    name could retitle the window or clear the screen) are shown as escapes; newlines kept when asked."""
    if text.isprintable() or (newlines and text.replace("\n", "").replace("\t", "").isprintable()):
        return text  # most text: checked in C, not a character at a time
    return "".join(ch if ch.isprintable() or (newlines and ch in "\n\t") else _escape(ch) for ch in text)


def _escape(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message`, the message's control characters escaped, newlines too: a log line names
    tasks, queues and errors a producer wrote, the cron log is read in a terminal, and a task name holding a
    newline must not forge a line of its own. (A traceback, formatted apart, keeps its lines.)"""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return printable(super().formatMessage(record), newlines=False)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with any `extra` fields (job_id, task) kept."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class _Reported:
    """A handler that says once, in one line on stderr, that it cannot write (a full disk, a removed mount)
    and drops the lines it cannot write: logging's default printed a 20-line traceback per line, which cron
    mails, while the run went on."""

    where = "stderr"
    failed = False

    def handleError(self, record: logging.LogRecord) -> None:
        if self.failed:
            return
        self.failed = True
        error = sys.exc_info()[1]
        with contextlib.suppress(OSError, ValueError, AttributeError):  # stderr itself may be what fails
            print(f"pending-jobs: cannot write the log to {self.where}: {error}; its lines are dropped while it "
                  "cannot (reported once)", file=sys.stderr, flush=True)


class _File(_Reported, logging.FileHandler):
    pass


class _Stream(_Reported, logging.StreamHandler):  # type: ignore[type-arg]
    pass


def configure(verbosity: int, log_format: str = "text", log_file: str = "") -> None:
    """WARNING by default, INFO with -v, DEBUG with -vv."""
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler: _File | _Stream = _File(log_file) if log_file else _Stream(sys.stderr)
    handler.where = log_file or "stderr"
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    # SQLAlchemy's pool logs reconnects at WARNING; they are expected after a database restart.
    logging.getLogger("sqlalchemy.pool").setLevel(logging.ERROR)
    logging.getLogger("alembic").setLevel(logging.INFO if verbosity >= 2 else logging.WARNING)
