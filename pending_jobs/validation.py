"""Rules for what a job may hold. The enqueue API raises on a broken rule; the runner fails the row
with the same words, so producers writing plain SQL get the same reasons."""

from __future__ import annotations

import json
import os
import re
import sysconfig
import traceback
from typing import Any
from urllib.parse import urlsplit

from . import config
from .states import TERMINAL_VALUES

PRIORITY_MIN, PRIORITY_MAX = -1000, 1000
MAX_ATTEMPTS_LIMIT = 1000
ERROR_LIMIT = 4000
NAME_LIMIT = 191
QUEUE_LIMIT = 64  # the queue columns are VARCHAR(64)
URL_LIMIT = 2048  # callback_url is VARCHAR(2048): MariaDB and PostgreSQL refused a longer one in SQL, SQLite kept it
JOB_ID_MAX = 2**63 - 1  # BIGINT: a larger id can exist on no database
LONGEST_TIMEOUT = 7 * 86400.0  # a task's timeout, at most: a week, far past any job cron serves; past about
# 9.2e9 s a lock's or a socket's timeout overflows and every attempt failed
JSON_DEPTH_MAX = 31  # levels of nesting a payload or result may have: MariaDB's JSON check refuses a deeper one
AGE = config.Setting("age", None, config.duration, "how long ago", 0, 3650 * config.DAY)
"""The range of an age an operator filters or purges by (`list --since`, `purge --older-than`, the console's
since, until and older_than): `now - age` must stay a time every database can compute (PostgreSQL's
interval overflows long before a float does). Ten years, as the longest retention setting."""
# A NUL as json.dumps writes it: `\u0000` at the end of an odd run of backslashes. In an even run the last
# backslash is itself escaped, and the string holds the six characters `\u0000` (a Windows path, a regex).
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


# An escaped UTF-16 surrogate (\ud800-\udfff): half of a pair, or alone, which no UTF-8 text can hold.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


# Python's json reads NaN and ±Infinity, which are not JSON (a command's stdin, `show --json`, a receiver's
# parser refuse them); MariaDB's and PostgreSQL's JSON types refuse them when stored, SQLite does not.
_DECODER = json.JSONDecoder(parse_constant=_not_json)


def loads(text: str) -> Any:
    """JSON text that every database, receiver and strict parser takes: json.loads, but ValueError for NaN,
    ±Infinity and a lone surrogate escape (`"\\ud800"`), which SQLite alone stores when written by hand."""
    value = _DECODER.decode(text)
    if "\\u" in text and _SURROGATE_ESCAPE.search(text):  # a pair is fine: only then is the value encoded
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("a lone surrogate escape (\\ud800 to \\udfff) is not valid UTF-8") from None
    return value


def payload_problem(payload: Any) -> str | None:
    """Why a payload (already parsed) cannot be run, or None."""
    if not isinstance(payload, dict):
        return f"payload must be a JSON object, got {_json_kind(payload)}"
    return None


STORED_INFLATION = 6
"""How much longer than its compact form a stored payload may be (an emoji as two \\uXXXX escapes is 12
bytes for 4; ", " and ": " add one each); text longer than this many times the limit is not parsed."""


def parse_payload(text: str | None, limit: int) -> tuple[Any, str | None]:
    """Parse a payload as stored; return (payload, problem)."""
    if text is None:
        return None, "payload is NULL; it must be a JSON object"
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > STORED_INFLATION * limit:
        return None, _over(size, limit)
    try:
        payload = loads(text)
    except ValueError as exc:
        return None, _over(size, limit) if size > limit else f"payload is not valid JSON: {exc}"
    except RecursionError:
        return None, _over(size, limit) if size > limit else "payload is nested too deeply to be read (more " \
                                                            "levels than Python's recursion limit)"
    if size > limit:
        # Measured as enqueue measured it (compact UTF-8 JSON): the stored text may be longer, by SQLAlchemy's
        # default json.dumps (", ", ": " and \\uXXXX escapes) or PostgreSQL's jsonb text (", ", ": "), and a
        # job enqueued at the limit failed at its first claim.
        size = len(json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass"))
        if size > limit:
            return None, _over(size, limit)
    return payload, payload_problem(payload)


def _over(size: int, limit: int) -> str:
    return f"payload is {size} bytes, over the {limit}-byte limit (setting payload_limit)"


def lenient_json(text: Any) -> Any:
    """JSON text parsed; text that is not JSON is returned as it is (shown, not an error)."""
    if not isinstance(text, str):
        return text
    try:
        return loads(text)
    except (ValueError, RecursionError):
        return text


def shown_json(text: Any) -> Any:
    """`lenient_json` for what is shown (pages, `list`, `show`): a value nested deeper than this package
    writes (PostgreSQL and SQLite store any depth written by hand) is shown as its text, since pages and
    `show --json` failed on one past Python's recursion limit. Callbacks keep the value as stored."""
    value = lenient_json(text)
    return text if isinstance(text, str) and value is not text and too_deep(text, value) else value


def dump_json(value: Any, what: str, limit: int, allow_nul: bool = True) -> str:
    """Serialise a payload or result, or raise ValueError saying why it cannot be stored."""
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} is not JSON-serialisable: {exc}") from None
    except RecursionError:  # past Python's recursion limit: measured without recursion, refused as any too deep
        raise ValueError(_too_deep(what, value)) from None
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > limit:
        raise ValueError(f"{what} is {size} bytes, over the {limit}-byte limit")
    if too_deep(text, value):
        raise ValueError(_too_deep(what, value))
    if not allow_nul and _NUL_ESCAPE.search(text):
        raise ValueError(f"{what} contains a NUL character, which PostgreSQL jsonb cannot store")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} contains a lone surrogate, which is not valid UTF-8") from None
    return text


def _too_deep(what: str, value: Any) -> str:
    return f"{what} nests {depth(value)} levels deep; at most {JSON_DEPTH_MAX} can be stored on every database " \
           "(MariaDB's limit)"


def too_deep(text: str, value: Any) -> bool:
    """Whether `value` (parsed from, or dumped to, `text`) nests past JSON_DEPTH_MAX. The brackets are
    counted first, in C: most values have too few to be that deep."""
    return text.count("[") + text.count("{") > JSON_DEPTH_MAX and depth(value) > JSON_DEPTH_MAX


def depth(value: Any) -> int:
    """How deep arrays and objects nest in `value` (0 for a scalar), without recursion."""
    deepest, level = 0, [(value, 1)]
    while level:
        item, at = level.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list | tuple) else ()
        for child in children:
            if isinstance(child, dict | list | tuple):
                level.append((child, at + 1))
        if isinstance(item, dict | list | tuple):
            deepest = max(deepest, at)
    return deepest


def row_problem(task: str, max_attempts: int, priority: int, callback_url: str | None) -> str | None:
    """Why a claimed row cannot be run, apart from its payload and its task being registered."""
    if max_attempts < 1:
        return f"max_attempts is {max_attempts}; it must be at least 1"
    if not PRIORITY_MIN <= priority <= PRIORITY_MAX:
        return f"priority {priority} is outside {PRIORITY_MIN}..{PRIORITY_MAX}"
    if callback_url:
        problem = callback_url_problem(callback_url, stored=True)
        if problem:
            return problem
    return None


def task_name_problem(name: object) -> str | None:
    """Why a task name can name no handler, or None: the same rule at enqueue, in a schedule, a `[task.NAME]`
    table and `@task` (a name one of them took that another refused would fail every job of it)."""
    if not isinstance(name, str) or not name or len(name) > NAME_LIMIT:
        return f"must be a non-empty string of at most {NAME_LIMIT} characters"
    if name != name.strip():  # ' ' or 'mail ' names no handler, and is hard to see in a list of failures
        return "must not be blank or start or end with whitespace"
    return text_problem(name)


def text_problem(text: str) -> str | None:
    """Why text cannot be stored alike on every database, or None. PostgreSQL refuses NUL in text, PHP's
    pdo_pgsql cut a string there instead; a lone surrogate ('\\ud800') is no UTF-8, and the driver's
    UnicodeEncodeError named no argument."""
    if "\x00" in text:
        return "must not contain NUL"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return "must be valid UTF-8"
    return None


def key_problem(key: object, limit: int = NAME_LIMIT) -> str | None:
    """Why a producer's idempotency key, concurrency key or queue cannot be used, or None. Edge whitespace is
    refused because MariaDB compares 'k' and 'k ' as one (PAD SPACE) where PostgreSQL and SQLite see two."""
    if not isinstance(key, str) or not key or len(key) > limit:
        return f"must be a non-empty string of at most {limit} characters"
    if key != key.strip():
        return "must not start or end with whitespace (MariaDB takes 'k ' for 'k')"
    return text_problem(key)


def queue_problem(name: object) -> str | None:
    """Why an operator's queue name (pause, resume, [queue.NAME]) can be no queue, or None. MariaDB and
    PostgreSQL refuse a longer name (SQLite would store it), PostgreSQL refuses NUL in any text; edge
    whitespace as for a producer's queue (`key_problem`): `pause 'mail '` paused mail on MariaDB alone."""
    if not isinstance(name, str) or not 1 <= len(name) <= QUEUE_LIMIT:
        return f"a queue name of 1 to {QUEUE_LIMIT} characters"
    if name != name.strip():
        return "a queue name must not start or end with whitespace (MariaDB takes 'q ' for 'q')"
    problem = text_problem(name)
    return problem and f"a queue name {problem}"


def queue_names(value: Any) -> list[str]:
    """The `queues` setting: a TOML array of names or a comma-separated string, each name one `run --queue` takes
    (`queue_problem`). A blank name was dropped, so `,` served every queue; a 65-character one served nothing."""
    names = [config.text(item).strip() for item in value] if isinstance(value, list) else \
        [part.strip() for part in config.text(value).split(",")]
    for name in names:
        problem = queue_problem(name)
        if problem:
            raise ValueError(f"{problem}, not {name!r}")
    return names


def finished_statuses(value: Any) -> list[str]:
    """The statuses a purge deletes, from a comma-separated string or a list (the CLI's --status, the
    console's form and JSON body), else ValueError naming the allowed ones."""
    try:
        wanted = config.str_list(value)
    except ValueError:
        wanted = []
    if not wanted or any(status not in TERMINAL_VALUES for status in wanted):
        raise ValueError(f"finished statuses only ({', '.join(TERMINAL_VALUES)}), not {value!r}")
    return wanted


def job_id(value: Any) -> int:
    """A job id an operator gave (CLI, console action), or ValueError saying what one is."""
    number = config.integer(value)
    if not 1 <= number <= JOB_ID_MAX:
        raise ValueError(f"a job id is a whole number from 1 to {JOB_ID_MAX}, not {value}")
    return number


def age(value: Any) -> float:
    """An age in AGE's range (a duration: seconds or 30s, 15m, 2h, 7d), else ValueError naming the range."""
    seconds = config.duration(value)
    try:
        AGE.check(seconds)
    except ValueError:  # said with the operator's own text: 1e308d, not `inf s`
        raise ValueError(f"{value} is outside {AGE.range_text()}") from None
    return seconds


_URL_BLANK = re.compile(r"[\x00-\x20\x7f]")


def callback_url_problem(url: str, stored: bool = False) -> str | None:
    """Why a callback URL is malformed, or None (reachability is checked at delivery).

    A producer's URL (enqueue, the PHP client's same rules) is refused too for what a database or urlsplit
    would change: NUL and invalid UTF-8, over VARCHAR(2048), a space or control character (urlsplit drops
    edge blanks and \\t\\r\\n inside, so the URL checked was not the one stored). A `stored` row's URL,
    as the runner reads it, is held to urlsplit alone: rows written with SQL that always ran still run."""
    if not stored:
        problem = text_problem(url)
        if problem:
            return f"invalid callback_url: it {problem}"
        blank = _URL_BLANK.search(url)
        if blank:
            return f"invalid callback_url: a space or control character at position {blank.start()} " \
                   "(percent-encode it)"
        if len(url) > URL_LIMIT:
            return f"invalid callback_url: longer than {URL_LIMIT} characters"
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
    """`Type: message` and the frames that say where it happened, cleaned and trimmed for `last_error`.

    A handler's error usually surfaces deep in a library (SQLAlchemy, a driver, requests): the last
    frames alone show only library code, twice over through the exception's chain. Kept: every frame of
    the application's own code (up to USER_FRAMES), and the raising frame with its caller; the middle
    is dropped, and a chained cause is named in one line.
    """
    head = f"{_type_name(exc)}: {safe_str(exc)}"
    frames = traceback.extract_tb(exc.__traceback__)
    lines = [head.rstrip()]
    if frames:
        lines.append("Traceback (most recent call last; library frames between the application's and the "
                     "raising frame left out):")
        lines.extend(_frames(frames))
    cause = exc.__cause__ if exc.__cause__ is not None else (None if exc.__suppress_context__ else exc.__context__)
    if cause is not None:
        lines.append(f"caused by {_type_name(cause)}: {' '.join(safe_str(cause).split())[:500]}")
    return clean_text("\n".join(lines), limit)


USER_FRAMES = 6  # frames of the application's own code kept in a traceback
_OWN = os.path.dirname(os.path.abspath(__file__))
_LIBRARIES = tuple(os.path.abspath(path) for path in {sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"],
                                                      sysconfig.get_paths()["platlib"]})


def _is_application(filename: str) -> bool:
    path = os.path.abspath(filename)
    return not (path.startswith(_OWN) or path.startswith(_LIBRARIES) or "site-packages" in path
                or "dist-packages" in path or filename.startswith("<"))


def _frames(frames: traceback.StackSummary) -> list[str]:
    last = len(frames) - 1
    application = [i for i, frame in enumerate(frames) if _is_application(frame.filename)][:USER_FRAMES]
    keep = sorted({*application, last, max(0, last - 1)})
    lines: list[str] = []
    previous = -1
    for index in keep:
        if index > previous + 1:
            lines.append(f"  ... {index - previous - 1} frame(s) left out ...")
        frame = frames[index]
        lines.append(f'  File "{frame.filename}", line {frame.lineno}, in {frame.name}')
        if frame.line:
            lines.append(f"    {frame.line.strip()}")
        previous = index
    return lines


def _type_name(exc: BaseException) -> str:
    kind = type(exc)
    return kind.__name__ if kind.__module__ in ("builtins", "__main__") else f"{kind.__module__}.{kind.__qualname__}"


def safe_str(value: object) -> str:
    """`str(value)`, or a placeholder when its `__str__` raises (a handler's exception may)."""
    try:
        return str(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"


def _json_kind(value: Any) -> str:
    kinds = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)


def short_reason(last_error: str | None) -> str | None:
    """What is said of a failure outside the database (a callback, a browser's push message): the first line
    of `last_error` (type and message), not its traceback, which may hold SQL and the values bound to it
    (the whole text stays on the row for operators)."""
    if not last_error or not last_error.strip():
        return None
    return last_error.strip().splitlines()[0][:300]
