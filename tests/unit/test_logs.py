"""Log lines a person reads (the cron log, a terminal): what a producer wrote cannot drive the terminal."""

from __future__ import annotations

import logging
import sys

from pending_jobs.logs import TextFormatter, printable


def _line(message: str, *args: object) -> str:
    record = logging.makeLogRecord({"name": "pending_jobs.runner", "levelno": logging.WARNING,
                                    "levelname": "WARNING", "msg": message, "args": args})
    return TextFormatter("%(levelname)s %(name)s: %(message)s").format(record)


def test_a_task_name_with_an_escape_sequence_is_logged_escaped() -> None:
    line = _line("job %d (%s) failed on attempt 1: %s", 12, "t\x1b]0;pwned\x07", "Fail: \x1b[2Jno")
    assert line == "WARNING pending_jobs.runner: job 12 (t\\x1b]0;pwned\\x07) failed on attempt 1: Fail: \\x1b[2Jno"


def test_a_newline_in_a_message_cannot_forge_a_line_but_a_traceback_keeps_its_lines() -> None:
    line = _line("job %d (%s) failed", 1, "t\nERROR fake")
    assert line == "WARNING pending_jobs.runner: job 1 (t\\x0aERROR fake) failed"
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.makeLogRecord({"name": "x", "levelname": "ERROR", "msg": "oops", "exc_info": sys.exc_info()})
    lines = TextFormatter("%(levelname)s %(name)s: %(message)s").format(record).splitlines()
    assert lines[0] == "ERROR x: oops" and lines[1] == "Traceback (most recent call last):"
    assert lines[-1] == "ValueError: boom"
    assert printable("a\u202eb\x7f") == "a\\u202eb\\x7f"  # right-to-left override, DEL
