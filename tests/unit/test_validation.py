"""What a job may hold, at the exact edge of every limit (both sides) and for every rule's refusal."""

from __future__ import annotations

import json
import os
import re
import traceback
from typing import Any

import pytest

from pending_jobs import validation
from pending_jobs.enqueue import job_row
from pending_jobs.errors import Fail
from pending_jobs.validation import (
    NAME_LIMIT,
    PRIORITY_MAX,
    PRIORITY_MIN,
    callback_url_problem,
    clean_text,
    describe_exception,
    dump_json,
    parse_payload,
    payload_problem,
    row_problem,
    safe_str,
)


class Unprintable(Exception):
    """An exception whose `str()` itself raises, as a handler's may."""

    def __str__(self) -> str:
        raise RuntimeError("no str for you")


# -- the limits, as numbers --------------------------------------------------------------------


def test_the_limits_are_the_documented_ones() -> None:
    assert (PRIORITY_MIN, PRIORITY_MAX, NAME_LIMIT) == (-1000, 1000, 191)
    assert (validation.MAX_ATTEMPTS_LIMIT, validation.ERROR_LIMIT) == (1000, 4000)


# -- payloads ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("payload", "kind"), [
    ([], "an array"), ("x", "a string"), (True, "a boolean"), (False, "a boolean"), (1, "a number"),
    (1.5, "a number"), (None, "null"), ({1}, "set"), ((1,), "tuple"),
])
def test_a_payload_that_is_not_an_object_is_refused_naming_what_it_is(payload: object, kind: str) -> None:
    assert payload_problem(payload) == f"payload must be a JSON object, got {kind}"


def test_an_object_payload_is_taken() -> None:
    assert payload_problem({}) is None
    assert payload_problem({"a": [1]}) is None


def test_a_null_payload_column_is_refused() -> None:
    assert parse_payload(None, 100) == (None, "payload is NULL; it must be a JSON object")


def test_a_stored_payload_exactly_at_the_limit_is_taken_one_byte_over_is_refused() -> None:
    text = '{"k":"' + "é" * 7 + '"}'  # 8 ASCII characters and 7 two-byte ones: 22 bytes, 15 characters
    assert len(text.encode()) == 22
    assert parse_payload(text, 22) == ({"k": "é" * 7}, None)
    assert parse_payload(text, 21) == (None, "payload is 22 bytes, over the 21-byte limit (setting payload_limit)")


@pytest.mark.parametrize("stored", [
    '{"k": "\\u00e9\\u00e9\\u00e9", "n": [1, 2]}',  # SQLAlchemy's default json.dumps: escapes and spaces
    '{"k": "ééé", "n": [1, 2]}',  # PostgreSQL's jsonb text: spaces
])
def test_a_stored_payload_is_measured_as_enqueue_measured_it(stored: str) -> None:
    """enqueue() measures compact UTF-8 JSON; the stored text can be longer, and a job accepted at the limit
    failed at its first claim ("payload is 1000001 bytes, over the 1000000-byte limit")."""
    compact = len('{"k":"ééé","n":[1,2]}'.encode())  # 25 bytes
    assert len(stored.encode()) > compact
    assert parse_payload(stored, compact) == ({"k": "ééé", "n": [1, 2]}, None)
    assert parse_payload(stored, compact - 1) == \
        (None, f"payload is {compact} bytes, over the {compact - 1}-byte limit (setting payload_limit)")
    # Text that is not JSON keeps its own size; text over 6 times the limit is not parsed to be measured.
    assert parse_payload("x" * 30, 25) == (None, "payload is 30 bytes, over the 25-byte limit (setting payload_limit)")
    huge = '{"k": "' + " " * 200 + '"}'
    assert parse_payload(huge, 30) == (None, "payload is 209 bytes, over the 30-byte limit (setting payload_limit)")


def test_a_stored_payload_at_each_edge_of_its_measures() -> None:
    # Exactly 6 times the limit is still parsed and measured compact ({"a":1}: 7 bytes); one byte more is not.
    padded = '{"a":1' + " " * 53 + "}"
    assert len(padded) == 60 and parse_payload(padded, 10) == ({"a": 1}, None)
    # At the limit the stored text is taken as it is, though its compact form may be longer (1e2: 100.0).
    assert parse_payload('{"a":1e2}', 9) == ({"a": 100.0}, None)
    assert parse_payload(padded + " ", 10) == (None, "payload is 61 bytes, over the 10-byte limit (setting "
                                                     "payload_limit)")
    # Text that is not JSON, or nested past Python's limit, at the limit is named for what it is; over it,
    # for its size.
    assert parse_payload("x" * 10, 10)[1].startswith("payload is not valid JSON: ")  # type: ignore[union-attr]
    deep = "[" * 100_000
    assert parse_payload(deep, 100_000) == (None, "payload is nested too deeply to be read (more levels than "
                                                  "Python's recursion limit)")
    assert parse_payload(deep, 50_000) == (None, "payload is 100000 bytes, over the 50000-byte limit (setting "
                                                 "payload_limit)")


def test_a_lone_surrogate_in_a_stored_payload_is_measured_not_raised() -> None:
    text = '{"k":"\ud800"}'  # SQLite hands back what a producer wrote, valid UTF-8 or not
    assert parse_payload(text, 10) == (None, "payload is 11 bytes, over the 10-byte limit (setting payload_limit)")
    payload, problem = parse_payload(text, 11)
    assert payload == {"k": "\ud800"} and problem is None


@pytest.mark.parametrize(("text", "problem"), [
    ('{"k": "\\ud800"}', "a lone surrogate escape (\\ud800 to \\udfff) is not valid UTF-8"),
    ('{"k": "\\uDFFF x"}', "a lone surrogate escape (\\ud800 to \\udfff) is not valid UTF-8"),
    ('{"k": NaN}', "NaN is not JSON"),
    ('{"k": [Infinity]}', "Infinity is not JSON"),
    ('{"k": -Infinity}', "-Infinity is not JSON"),
])
def test_what_only_pythons_json_reads_is_not_a_payload(text: str, problem: str) -> None:
    # SQLite stores it when written by hand; a command's stdin, `list --json` and receivers cannot take it.
    assert parse_payload(text, 100) == (None, f"payload is not valid JSON: {problem}")
    assert validation.lenient_json(text) == text  # shown as the text it is


@pytest.mark.parametrize(("text", "value"), [
    ('{"k": "\\ud83d\\ude00"}', {"k": "\U0001f600"}),  # a pair: one character
    ('{"k": "\\\\ud800"}', {"k": "\\ud800"}),  # an escaped backslash, then the text ud800
    ('{"k": "NaN", "n": 1.5e308}', {"k": "NaN", "n": 1.5e308}),
])
def test_surrogate_pairs_and_the_word_nan_are_payloads(text: str, value: dict[str, Any]) -> None:
    assert parse_payload(text, 100) == (value, None)


@pytest.mark.parametrize(("text", "problem"), [
    ("{", "payload is not valid JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
    ("", "payload is not valid JSON: Expecting value: line 1 column 1 (char 0)"),
    ("[1]", "payload must be a JSON object, got an array"),
    ("null", "payload must be a JSON object, got null"),
    ("[" * 100_000, "payload is nested too deeply to be read (more levels than Python's recursion limit)"),
])
def test_a_stored_payload_that_cannot_be_run_says_why(text: str, problem: str) -> None:
    assert parse_payload(text, 10**6) == (None if text != "[1]" and text != "null" else json.loads(text), problem)


# -- serialising payloads and results ------------------------------------------------------------


def test_json_is_compact_and_keeps_non_ascii_characters() -> None:
    assert dump_json({"a": 1, "b": ["é", None]}, "result", 100) == '{"a":1,"b":["é",null]}'


def test_a_value_exactly_at_the_limit_is_stored_one_byte_over_is_refused() -> None:
    value = {"a": 1, "b": "é"}  # '{"a":1,"b":"é"}': 16 bytes (é is two), 15 characters
    assert dump_json(value, "payload", 16) == '{"a":1,"b":"é"}'
    with pytest.raises(ValueError, match=r"^payload is 16 bytes, over the 15-byte limit$"):
        dump_json(value, "payload", 15)


@pytest.mark.parametrize(("value", "reason"), [
    (object(), "Object of type object is not JSON serializable"),
    ({"x": float("nan")}, "Out of range float values are not JSON compliant"),
    ({"x": float("inf")}, "Out of range float values are not JSON compliant"),
])
def test_a_value_json_cannot_hold_is_refused_saying_why(value: object, reason: str) -> None:
    with pytest.raises(ValueError) as refused:
        dump_json(value, "result", 100)
    assert str(refused.value) == f"result is not JSON-serialisable: {reason}"
    assert refused.value.__cause__ is None and refused.value.__suppress_context__


def test_a_nul_character_is_refused_only_where_the_database_cannot_store_it() -> None:
    with pytest.raises(ValueError) as refused:
        dump_json({"x": "a\x00b"}, "payload", 100, allow_nul=False)
    assert str(refused.value) == "payload contains a NUL character, which PostgreSQL jsonb cannot store"
    assert dump_json({"x": "a\x00b"}, "payload", 100) == '{"x":"a\\u0000b"}'
    assert dump_json({"x": "a\x00b"}, "payload", 100, allow_nul=True) == '{"x":"a\\u0000b"}'
    assert dump_json({"x": "a0b"}, "payload", 100, allow_nul=False) == '{"x":"a0b"}'


def test_a_value_over_the_limit_is_refused_for_its_size_before_its_nul() -> None:
    with pytest.raises(ValueError, match="over the 5-byte limit"):
        dump_json({"x": "\x00"}, "payload", 5, allow_nul=False)


def test_a_lone_surrogate_is_refused() -> None:
    with pytest.raises(ValueError) as refused:
        dump_json({"x": "\udc80"}, "result", 100)
    assert str(refused.value) == "result contains a lone surrogate, which is not valid UTF-8"
    assert refused.value.__cause__ is None and refused.value.__suppress_context__


def test_a_lone_surrogate_counts_its_three_bytes_against_the_limit() -> None:
    with pytest.raises(ValueError, match=r"^result is 11 bytes, over the 10-byte limit$"):
        dump_json({"x": "\udc80"}, "result", 10)


# -- a claimed row -----------------------------------------------------------------------------


@pytest.mark.parametrize("max_attempts", [1, 2, 1000, 1001])  # the runner runs what a producer wrote
def test_max_attempts_of_one_or_more_runs(max_attempts: int) -> None:
    assert row_problem("t", max_attempts, 0, None) is None


@pytest.mark.parametrize("max_attempts", [0, -1])
def test_max_attempts_under_one_is_refused(max_attempts: int) -> None:
    assert row_problem("t", max_attempts, 0, None) == f"max_attempts is {max_attempts}; it must be at least 1"


@pytest.mark.parametrize("priority", [-1000, -999, 0, 999, 1000])
def test_a_priority_within_the_range_runs(priority: int) -> None:
    assert row_problem("t", 1, priority, None) is None


@pytest.mark.parametrize("priority", [-1001, 1001])
def test_a_priority_one_past_either_end_is_refused(priority: int) -> None:
    assert row_problem("t", 1, priority, None) == f"priority {priority} is outside -1000..1000"


def test_the_first_broken_rule_is_the_one_named() -> None:
    assert row_problem("t", 0, 5000, "ftp://x/") == "max_attempts is 0; it must be at least 1"
    assert row_problem("t", 1, 5000, "ftp://x/") == "priority 5000 is outside -1000..1000"


def test_a_row_with_no_callback_url_has_none_to_check() -> None:
    assert row_problem("t", 1, 0, None) is None
    assert row_problem("t", 1, 0, "") is None
    assert row_problem("t", 1, 0, "https://example.com/hook") is None


def test_a_rows_malformed_callback_url_is_its_problem() -> None:
    assert row_problem("t", 1, 0, "ftp://example.com/") == (
        "invalid callback_url: scheme must be http or https, not 'ftp'")


# -- callback URLs -----------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["http://example.com/", "https://example.com/hook?x=1", "http://10.0.0.1:8080/",
                                 "https://[::1]:443/"])
def test_a_well_formed_callback_url_is_taken(url: str) -> None:
    assert callback_url_problem(url) is None


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/hook\n", " http://a.example/", "http://a.example/ho ok",
                                 "http://a.example/\x00", "http://a.example/" + "x" * 3000])
def test_a_stored_rows_url_is_held_to_urlsplit_alone(url: str) -> None:
    """enqueue and the PHP client refuse these; a row written with SQL that ran before still runs (its job
    failed unrun when the runner applied the producers' new rules to it)."""
    assert callback_url_problem(url) is not None
    assert row_problem("t", 5, 0, url) is None


@pytest.mark.parametrize(("url", "problem"), [
    ("http://example.com:99999/", "invalid callback_url: Port out of range 0-65535"),
    ("http://example.com:x/", "invalid callback_url: Port could not be cast to integer value as 'x'"),
    ("http://[::1/", "invalid callback_url: Invalid IPv6 URL"),
    ("ftp://example.com/", "invalid callback_url: scheme must be http or https, not 'ftp'"),
    ("HTTPS://example.com/", None),  # urlsplit lowers the scheme
    ("//example.com/", "invalid callback_url: scheme must be http or https, not 'missing'"),
    ("example.com", "invalid callback_url: scheme must be http or https, not 'missing'"),
    ("http:///path", "invalid callback_url: no host"),
    ("https://", "invalid callback_url: no host"),
    ("http://example.com/\x00x", "invalid callback_url: it must not contain NUL"),
    ("http://example.com/\ud800", "invalid callback_url: it must be valid UTF-8"),
    ("http://example.com/é", None),
    (" http://example.com/", "invalid callback_url: a space or control character at position 0 (percent-encode it)"),
    ("http://exa\nmple.com/", "invalid callback_url: a space or control character at position 10 "
                              "(percent-encode it)"),  # urlsplit read it as example.com
    ("http://é.example/\x7f", "invalid callback_url: a space or control character at position 17 "
                              "(percent-encode it)"),  # in characters, not bytes
    ("http://example.com/" + "x" * (2048 - 19), None),
    ("http://example.com/" + "é" * (2048 - 19), None),  # characters, as VARCHAR counts them, not bytes
    ("http://example.com/" + "x" * (2049 - 19), "invalid callback_url: longer than 2048 characters"),
])
def test_a_malformed_callback_url_says_what_is_wrong(url: str, problem: str | None) -> None:
    assert callback_url_problem(url) == problem


# -- the producer API's checks, at their edges -------------------------------------------------


def test_a_task_name_of_191_characters_is_taken_192_is_refused() -> None:
    assert job_row("t" * 191)["task"] == "t" * 191
    with pytest.raises(ValueError, match="task must be a non-empty string of at most 191 characters"):
        job_row("t" * 192)


def test_an_idempotency_key_of_191_characters_is_taken_192_is_refused() -> None:
    assert job_row("t", idempotency_key="k" * 191)["idempotency_key"] == "k" * 191
    with pytest.raises(ValueError, match="idempotency_key must be a non-empty string of at most 191 characters"):
        job_row("t", idempotency_key="k" * 192)


@pytest.mark.parametrize(("arguments", "why"), [
    ({"task": "t\x00x"}, "task must not contain NUL"),
    ({"queue": "q\x00"}, "queue must not contain NUL"),
    ({"queue": "mail "}, "queue must not start or end with whitespace"),
    ({"idempotency_key": "k\x00"}, "idempotency_key must not contain NUL"),
    ({"concurrency_key": "\x00"}, "concurrency_key must not contain NUL"),
    ({"task": "t\ud800"}, "task must be valid UTF-8"),
    ({"queue": "q\udc80"}, "queue must be valid UTF-8"),
    ({"idempotency_key": "é\udfff"}, "idempotency_key must be valid UTF-8"),
    ({"concurrency_key": "\ud83d"}, "concurrency_key must be valid UTF-8"),
    ({"callback_url": "http://a.example/\x00"}, "invalid callback_url: it must not contain NUL"),
    ({"idempotency_key": "order-1 "}, "idempotency_key must not start or end with whitespace"),
    ({"concurrency_key": " user-7"}, "concurrency_key must not start or end with whitespace"),
    ({"payload": {"a": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}},
     "payload nests 32 levels deep; at most 31 can be stored on every database"),
])
def test_enqueue_refuses_what_a_database_would_cut_or_take_for_another_value(arguments: dict[str, Any],
                                                                             why: str) -> None:
    """NUL (PostgreSQL refuses it, PHP's pdo_pgsql cut the text there), a key's edge whitespace (MariaDB
    takes 'k ' for 'k'), a payload deeper than MariaDB's JSON check takes: refused alike everywhere."""
    arguments = {"task": "t", **arguments}
    with pytest.raises(ValueError, match=re.escape(why)):
        job_row(arguments.pop("task"), **arguments)


def test_a_payload_past_pythons_recursion_limit_is_refused_for_its_depth() -> None:
    payload: dict[str, Any] = {}
    for _ in range(3000):  # json.dumps raised RecursionError, which is no ValueError: enqueue_many did not say
        payload = {"a": payload}  # which job, and the CLI printed a traceback
    with pytest.raises(ValueError, match=r"^payload nests 3001 levels deep; at most 31 can be stored on every "):
        job_row("t", payload)


def test_a_payload_31_levels_deep_is_taken() -> None:
    payload: dict[str, Any] = {"a": []}
    for _ in range(29):
        payload = {"a": payload}
    assert validation.depth(payload) == 31 and job_row("t", payload)["payload"] == payload


@pytest.mark.parametrize("priority", [-1000, 1000])
def test_enqueue_takes_a_priority_at_either_end(priority: int) -> None:
    assert job_row("t", priority=priority)["priority"] == priority


@pytest.mark.parametrize("priority", [-1001, 1001])
def test_enqueue_refuses_a_priority_one_past_either_end(priority: int) -> None:
    with pytest.raises(ValueError, match=r"priority must be an integer in -1000\.\.1000"):
        job_row("t", priority=priority)


@pytest.mark.parametrize("max_attempts", [1, 1000])
def test_enqueue_takes_max_attempts_at_either_end(max_attempts: int) -> None:
    assert job_row("t", max_attempts=max_attempts)["max_attempts"] == max_attempts


@pytest.mark.parametrize("max_attempts", [0, 1001])
def test_enqueue_refuses_max_attempts_one_past_either_end(max_attempts: int) -> None:
    with pytest.raises(ValueError, match=r"^max_attempts must be an integer in 1\.\.1000, not "):
        job_row("t", max_attempts=max_attempts)


def test_enqueue_takes_a_payload_exactly_at_its_limit_and_refuses_one_byte_more() -> None:
    payload = {"k": "é"}  # '{"k":"é"}': 10 bytes
    assert job_row("t", payload, payload_limit=10)["payload"] == payload
    with pytest.raises(ValueError, match=r"^payload is 10 bytes, over the 9-byte limit$"):
        job_row("t", payload, payload_limit=9)


def test_enqueue_refuses_a_nul_character_which_postgresql_cannot_store() -> None:
    with pytest.raises(ValueError, match="NUL character"):
        job_row("t", {"k": "\x00"})


# -- text stored as a reason -------------------------------------------------------------------


def test_clean_text_replaces_nul_and_lone_surrogates() -> None:
    assert clean_text("a\x00b\udc80c") == "a\\0b?c"
    assert clean_text("plain é") == "plain é"


def test_clean_text_keeps_text_exactly_at_the_limit_and_cuts_one_character_more() -> None:
    assert clean_text("x" * 50, 50) == "x" * 50
    cut = clean_text("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMN", 49)  # 50 characters
    assert cut == "abcd\n... [41 characters cut] ...\nJKLMN"  # keep 9: 4 from the start, 5 from the end


def test_clean_text_cuts_to_its_default_limit_of_4000() -> None:
    assert clean_text("y" * 4000) == "y" * 4000
    assert clean_text("a" * 2000 + "b" * 2001) == "a" * 1980 + "\n... [41 characters cut] ...\n" + "b" * 1980


# -- exceptions as reasons -----------------------------------------------------------------------


def raise_from_library(error: BaseException) -> None:
    """Raise `error` through two stdlib frames (json calls `default` for an object it cannot serialise)."""

    def default(value: object) -> object:
        raise error

    json.dumps(object(), default=default)


def test_an_exception_is_described_by_type_message_and_where() -> None:
    try:
        raise_from_library(ValueError("bad value  \n"))
    except ValueError as error:
        text = describe_exception(error)
    lines = text.splitlines()
    assert lines[0] == "ValueError: bad value"
    assert lines[1] == ("Traceback (most recent call last; library frames between the application's and the "
                        "raising frame left out):")
    assert lines[2].startswith(f'  File "{__file__}", line ') and lines[2].endswith(
        ", in test_an_exception_is_described_by_type_message_and_where")
    assert lines[3] == "    raise_from_library(ValueError(\"bad value  \\n\"))"
    assert lines[4].endswith(", in raise_from_library") and lines[5] == "    json.dumps(object(), default=default)"
    assert lines[6].startswith("  ... ") and lines[6].endswith(" frame(s) left out ...")  # json's own frames
    assert lines[-2].endswith(", in default") and lines[-1] == "    raise error"
    assert "caused by" not in text


def test_an_exception_never_raised_has_no_traceback() -> None:
    assert describe_exception(KeyError("k")) == "KeyError: 'k'"
    assert describe_exception(ValueError()) == "ValueError:"


def test_a_named_cause_is_described_in_one_line() -> None:
    cause = ConnectionError("server\n  closed   the connection " + "x" * 600)
    error = RuntimeError("query failed")
    error.__cause__ = cause
    assert describe_exception(error) == (
        "RuntimeError: query failed\ncaused by ConnectionError: "
        + ("server closed the connection " + "x" * 600)[:500])


def test_an_implicit_context_is_described_unless_suppressed() -> None:
    try:
        try:
            raise KeyError("inner")
        except KeyError:
            raise Fail("outer") from None
    except Fail as error:
        assert "caused by" not in describe_exception(error)
    try:
        try:
            raise KeyError("inner")
        except KeyError:
            raise ValueError("outer")  # noqa: B904 - the implicit context is what is tested
    except ValueError as error:
        assert describe_exception(error).splitlines()[-1] == "caused by KeyError: 'inner'"


def test_an_explicit_cause_wins_over_the_context() -> None:
    error = ValueError("outer")
    error.__context__ = KeyError("context")
    error.__cause__ = TypeError("cause")
    assert describe_exception(error).splitlines()[-1] == "caused by TypeError: cause"


def test_a_description_is_cut_to_its_limit() -> None:
    text = describe_exception(ValueError("z" * 5000))
    assert len(text) <= 4000 and "characters cut" in text
    assert describe_exception(ValueError("z" * 100), 60) == "ValueError\n... [92 characters cut] ...\nzzzzzzzzzz"


class Outer:
    class Nested(Exception):
        """An exception class of this module, named with its module and qualified name."""


MainError = type("MainError", (Exception,), {"__module__": "__main__"})


@pytest.mark.parametrize(("error", "name"), [
    (ValueError("m"), "ValueError"),
    (MainError("m"), "MainError"),
    (Outer.Nested("m"), f"{__name__}.Outer.Nested"),
    (Fail("m"), "pending_jobs.errors.Fail"),
])
def test_a_type_outside_builtins_is_named_with_its_module(error: BaseException, name: str) -> None:
    assert describe_exception(error) == f"{name}: m"
    cause = ValueError("outer")
    cause.__cause__ = error
    assert describe_exception(cause) == f"ValueError: outer\ncaused by {name}: m"


def test_an_unprintable_exception_and_cause_get_a_placeholder() -> None:
    error = Unprintable()
    error.__cause__ = Unprintable()
    assert describe_exception(error) == (f"{__name__}.Unprintable: <unprintable Unprintable>\n"
                                         f"caused by {__name__}.Unprintable: <unprintable Unprintable>")
    assert safe_str(Unprintable()) == "<unprintable Unprintable>"
    assert safe_str(3) == "3"


@pytest.mark.parametrize(("filename", "application"), [
    ("/srv/app/jobs.py", True),
    ("relative/jobs.py", True),
    (os.path.join(validation._OWN, "runner", "executor.py"), False),
    (os.path.join(validation._LIBRARIES[0], "json", "encoder.py"), False),
    (os.path.join(validation._LIBRARIES[-1], "requests", "api.py"), False),
    ("/opt/env/lib/python3.11/site-packages/sqlalchemy/engine/base.py", False),
    ("/usr/lib/python3/dist-packages/pymysql/connections.py", False),
    ("<string>", False),
    ("<frozen importlib._bootstrap>", False),
])
def test_application_frames_are_told_from_library_frames(filename: str, application: bool) -> None:
    assert validation._is_application(filename) is application


def summary(*names: str) -> traceback.StackSummary:
    """Frames from (filename) names: `app` ones are the application's, `lib` ones a library's."""
    return traceback.StackSummary.from_list([
        traceback.FrameSummary(f"/srv/{name}.py" if name.startswith("app") else
                               f"/venv/site-packages/{name}.py", index + 1, f"fn{index}", lookup_line=False,
                               line=f"  call_{index}()  ")
        for index, name in enumerate(names)])


def test_a_single_frame_is_kept() -> None:
    assert validation._frames(summary("lib")) == ['  File "/venv/site-packages/lib.py", line 1, in fn0', "    call_0()"]


def test_application_frames_and_the_last_two_are_kept_with_the_gaps_counted() -> None:
    lines = validation._frames(summary("app0", "lib1", "lib2", "app3", "lib4", "lib5", "lib6", "lib7", "lib8"))
    assert lines == [
        '  File "/srv/app0.py", line 1, in fn0', "    call_0()",
        "  ... 2 frame(s) left out ...",
        '  File "/srv/app3.py", line 4, in fn3', "    call_3()",
        "  ... 3 frame(s) left out ...",
        '  File "/venv/site-packages/lib7.py", line 8, in fn7', "    call_7()",
        '  File "/venv/site-packages/lib8.py", line 9, in fn8', "    call_8()",
    ]


def test_a_gap_before_the_first_kept_frame_and_a_gap_of_one_are_counted() -> None:
    lines = validation._frames(summary("lib0", "lib1", "app2", "lib3", "lib4", "lib5"))
    assert [line for line in lines if not line.startswith("    ")] == [
        "  ... 2 frame(s) left out ...",
        '  File "/srv/app2.py", line 3, in fn2',
        "  ... 1 frame(s) left out ...",
        '  File "/venv/site-packages/lib4.py", line 5, in fn4',
        '  File "/venv/site-packages/lib5.py", line 6, in fn5',
    ]


def test_no_gap_line_between_neighbours() -> None:
    lines = validation._frames(summary("lib0", "lib1"))
    assert [line for line in lines if "left out" in line] == []
    assert len(lines) == 4


def test_at_most_six_application_frames_are_kept() -> None:
    lines = validation._frames(summary(*(f"app{i}" for i in range(9)), "lib9", "lib10", "lib11"))
    kept = [line for line in lines if line.startswith("  File")]
    assert [line.split(", in ")[1] for line in kept] == ["fn0", "fn1", "fn2", "fn3", "fn4", "fn5", "fn10", "fn11"]
    assert "  ... 4 frame(s) left out ..." in lines


def test_a_frame_without_source_has_no_source_line() -> None:
    frames = traceback.StackSummary.from_list([traceback.FrameSummary("/nowhere/x.py", 7, "f", lookup_line=False)])
    assert validation._frames(frames) == ['  File "/nowhere/x.py", line 7, in f']


def test_a_value_nested_past_31_levels_is_shown_as_text_and_sent_as_stored() -> None:
    """Pages and `show` show it as its text (they failed past Python's recursion limit); a callback's body
    keeps the stored value, so a receiver gets what the job returned before the rule existed."""
    deep = "[" * 40 + "]" * 40
    assert validation.shown_json(deep) == deep
    assert validation.lenient_json(deep) == json.loads(deep)
    assert validation.shown_json('{"a": [1]}') == {"a": [1]} and validation.shown_json("not json") == "not json"


# -- operator input and the edges of the name rules ---------------------------------------------------


def test_too_deep_counts_nesting_not_brackets() -> None:
    def nested(levels: int) -> Any:
        value: Any = []
        for _ in range(levels - 1):
            value = [value]
        return value

    wide = [[] for _ in range(40)]  # 41 brackets, 2 levels
    assert not validation.too_deep(json.dumps(wide), wide)
    edge = [nested(30), []]  # 32 brackets, 31 levels: counted, then measured
    assert validation.depth(edge) == 31 and not validation.too_deep(json.dumps(edge), edge)
    assert not validation.too_deep(json.dumps(nested(31)), nested(31))
    assert validation.too_deep(json.dumps(nested(32)), nested(32))


def test_name_rules_at_their_edges() -> None:
    assert validation.task_name_problem("") == f"must be a non-empty string of at most {NAME_LIMIT} characters"
    assert validation.key_problem("k ") == "must not start or end with whitespace (MariaDB takes 'k ' for 'k')"
    assert validation.queue_problem("q" * 64) is None
    assert validation.queue_problem("q" * 65) == "a queue name of 1 to 64 characters"
    assert validation.queue_problem(" q") == ("a queue name must not start or end with whitespace "
                                              "(MariaDB takes 'q ' for 'q')")
    assert validation.queue_problem("q\x00") == "a queue name must not contain NUL"
    assert validation.queue_problem("q\ud800") == "a queue name must be valid UTF-8"
    assert validation.queue_problem("é-queue") is None
    assert validation.task_name_problem("tâche\U0001f600") is None  # a pair of code units is one character


def test_finished_statuses_takes_text_or_a_list_of_finished_ones_only() -> None:
    assert validation.finished_statuses("succeeded, failed") == ["succeeded", "failed"]
    assert validation.finished_statuses(["cancelled"]) == ["cancelled"]
    allowed = "finished statuses only (cancelled, failed, succeeded), not "
    for bad in ("pending", "succeeded,running", "", [], 5):
        with pytest.raises(ValueError, match=re.escape(allowed + repr(bad))):
            validation.finished_statuses(bad)


def test_job_id_is_a_bigint_from_one() -> None:
    top = validation.JOB_ID_MAX
    assert validation.job_id("1") == 1 and validation.job_id(str(top)) == top
    for bad in ("0", "-3", str(top + 1)):
        with pytest.raises(ValueError, match=rf"^a job id is a whole number from 1 to {top}, not {bad}$"):
            validation.job_id(bad)


def test_age_is_a_duration_within_ten_years() -> None:
    assert validation.age("15m") == 900.0 and validation.age("0") == 0.0 and validation.age("3650d") == 3650 * 86400
    with pytest.raises(ValueError, match=r"^3651d is outside "):
        validation.age("3651d")
