"""Rules for what a job may hold. The enqueue API raises on a broken rule; the runner fails the row
with the same words, so producers writing plain SQL get the same reasons."""

from __future__ import annotations

import json
import traceback
from typing import Any
from urllib.parse import urlsplit

PRIORITY_MIN, PRIORITY_MAX = -1000, 1000
MAX_ATTEMPTS_LIMIT = 1000
ERROR_LIMIT = 4000
NAME_LIMIT = 191


def payload_problem(payload: Any, limit: int) -> str | None:
    """Why a payload (already parsed) cannot be run, or None."""
    if not isinstance(payload, dict):
        return f"payload must be a JSON object, got {_json_kind(payload)}"
    return None


def parse_payload(text: str | None, limit: int) -> tuple[Any, str | None]:
    """Parse a payload as stored; return (payload, problem)."""
    if text is None:
        return None, "payload is NULL; it must be a JSON object"
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > limit:
        return None, f"payload is {size} bytes, over the {limit}-byte limit (setting payload_limit)"
    try:
        payload = json.loads(text)
    except ValueError as exc:
        return None, f"payload is not valid JSON: {exc}"
    return payload, payload_problem(payload, limit)


def dump_json(value: Any, what: str, limit: int, allow_nul: bool = True) -> str:
    """Serialise a payload or result, or raise ValueError saying why it cannot be stored."""
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} is not JSON-serialisable: {exc}") from None
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > limit:
        raise ValueError(f"{what} is {size} bytes, over the {limit}-byte limit")
    if not allow_nul and "\\u0000" in text:
        raise ValueError(f"{what} contains a NUL character, which PostgreSQL jsonb cannot store")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} contains a lone surrogate, which is not valid UTF-8") from None
    return text


def row_problem(task: str, max_attempts: int, priority: int, callback_url: str | None) -> str | None:
    """Why a claimed row cannot be run, apart from its payload and its task being registered."""
    if max_attempts < 1:
        return f"max_attempts is {max_attempts}; it must be at least 1"
    if not PRIORITY_MIN <= priority <= PRIORITY_MAX:
        return f"priority {priority} is outside {PRIORITY_MIN}..{PRIORITY_MAX}"
    if callback_url:
        problem = callback_url_problem(callback_url)
        if problem:
            return problem
    return None


def callback_url_problem(url: str) -> str | None:
    """Why a callback URL is malformed, or None (reachability is checked at delivery)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        return f"invalid callback_url: {exc}"
    if parts.scheme not in ("http", "https"):
        return f"invalid callback_url: scheme must be http or https, not {parts.scheme or 'missing'!r}"
    if not parts.hostname:
        return "invalid callback_url: no host"
    return None


def clean_text(text: str, limit: int = ERROR_LIMIT) -> str:
    """Make text safe to store anywhere: no NUL, valid UTF-8, at most `limit` characters."""
    text = text.replace("\x00", "\\0")
    text = text.encode("utf-8", "replace").decode("utf-8")
    if len(text) > limit:
        keep = limit - 40
        text = text[: keep // 2] + f"\n... [{len(text) - keep} characters cut] ...\n" + text[-keep // 2 :]
    return text


def describe_exception(exc: BaseException, limit: int = ERROR_LIMIT) -> str:
    """`Type: message` plus the last frames of the traceback, cleaned and trimmed for `last_error`."""
    head = f"{type(exc).__name__}: {exc}"
    frames = traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-8)
    return clean_text(head + "\n" + "".join(frames[1:]).rstrip(), limit)


def _json_kind(value: Any) -> str:
    kinds = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)
