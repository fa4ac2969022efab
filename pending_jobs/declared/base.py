"""What every declared kind shares: its backoff, its registry entry, and bounded results."""

from __future__ import annotations

import json
from typing import Any

from ..context import Handler
from ..errors import Retry
from ..registry import Backoff, Task, default_backoff
from ..validation import clean_text, dump_json
from .spec import Policy

TEXT_LIMIT = 64 * 1024  # characters of output kept when it is stored as text, not parsed as JSON
EXCERPT = 1024  # characters of a response body or stderr in an error message


def backoff_of(policy: Policy) -> Backoff:
    """The task's backoff: its list of delays (the last repeating), else the default doubling one."""
    delays = policy.backoff
    if delays is None:
        return default_backoff

    def backoff(attempt: int) -> float:
        return delays[min(max(attempt, 1), len(delays)) - 1]

    return backoff


def task_of(name: str, fn: Handler, policy: Policy, backstop: float | None) -> Task:
    """The registry entry, with the task's attempt limit and the runner's timeout as a backstop.

    Each kind enforces its own timeout (and kills what it started); the runner's, `backstop` seconds,
    only abandons a worker thread that somehow outlived it.
    """
    return Task(name, fn, backoff_of(policy), backstop, "thread", None, max_attempts=policy.max_attempts)


def retry(backoff: Backoff, ctx: Any, reason: str, delay: float | None = None) -> Retry:
    """A Retry after `delay` seconds (a Retry-After), else after the task's backoff."""
    return Retry(delay=backoff(ctx.attempt) if delay is None else delay, reason=reason)


def json_or_text(data: bytes, complete: bool, limit: int) -> Any:
    """Output as a result: parsed JSON when it is whole, valid and fits `limit`; else text, cut; None if empty.

    Text is decoded as UTF-8 with invalid bytes replaced, so any output can be stored.
    """
    if not data.strip():
        return None if complete else text_of(data, complete, limit)
    if complete and len(data) <= limit:
        try:
            value = json.loads(data)
            dump_json(value, "result", limit, allow_nul=False)  # storable on every database: size, depth, NUL
            return value
        except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested past Python's limit
            pass
    return text_of(data, complete, limit)


def text_of(data: bytes, complete: bool, limit: int) -> str:
    """At most TEXT_LIMIT (and `limit`) characters of output as storable text, saying when it was cut."""
    keep = min(TEXT_LIMIT, limit)
    decoded = data[: keep * 4].decode("utf-8", "replace")  # a character takes at most 4 bytes
    cut = not complete or len(data) > keep * 4 or len(decoded) > keep
    while True:
        text = clean_text(decoded[:keep], keep)
        if cut or len(text) < len(decoded):
            text = f"{text}\n[output cut at {len(text)} characters]"
        # Escapes (a control character is 6 bytes of JSON) may still make it too big: halve until it fits.
        if keep <= 16 or len(json.dumps(text, ensure_ascii=False).encode()) <= limit:
            return text
        keep //= 2


def excerpt(data: bytes, size: int = EXCERPT) -> str:
    """The start of a body or the end of stderr for an error message: one line of at most `size` characters."""
    text = " ".join(data.decode("utf-8", "replace").split())
    return clean_text(text[:size] + (" …" if len(text) > size else ""), size + 2)


def effective_limit(policy: Policy, payload_limit: int) -> int:
    """The most bytes a result may take: the task's result_limit within the runner's payload_limit."""
    return max(2, min(policy.result_limit, payload_limit))

