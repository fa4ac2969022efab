"""Logging for the CLI: quiet by default (cron mails anything printed), text or JSON lines."""

from __future__ import annotations

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


def configure(verbosity: int, log_format: str = "text", log_file: str = "") -> None:
    """WARNING by default, INFO with -v, DEBUG with -vv."""
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler: logging.Handler = logging.FileHandler(log_file) if log_file else logging.StreamHandler(sys.stderr)
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
