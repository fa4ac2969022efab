"""Scenario 12: rows written with plain SQL that cannot run each fail with a clear reason, alone.

Where the database itself refuses a row (MariaDB's JSON CHECK and PostgreSQL's jsonb reject text that
is not JSON; jsonb and PostgreSQL text reject NUL), the producer gets the error at INSERT instead.
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa

from pending_jobs import enqueue_many

from .conftest import check_invariant

ROWS: list[tuple[str, dict[str, Any], str]] = [
    # (label, columns, the reason recorded in last_error; "" = succeeds)
    ("not json", {"payload": "{not json"}, "payload is not valid JSON"),
    ("array", {"payload": "[1, 2]"}, "payload must be a JSON object, got an array"),
    ("string", {"payload": '"text"'}, "payload must be a JSON object, got a string"),
    ("oversized", {"payload": json.dumps({"s": "x" * 2000})}, "over the 1000-byte limit"),
    ("escaped nul", {"payload": '{"s": "a\\u0000b"}'}, ""),
    ("raw nul", {"payload": '{"s": "a\x00b"}'}, "payload is not valid JSON"),
    ("emoji", {"payload": '{"s": "\U0001f600 \u00e9"}'}, ""),
    # An unknown task is tried again (a deploy may be under way): with one attempt it fails at once.
    ("unknown task", {"task": "no_such_task", "max_attempts": 1}, "unknown task 'no_such_task'"),
    ("emoji task", {"task": "nope\U0001f600", "max_attempts": 1}, "unknown task 'nope\U0001f600'"),
    ("callback scheme", {"callback_url": "ftp://example.com/x"}, "invalid callback_url: scheme must be http"),
    ("callback host", {"callback_url": "http://"}, "invalid callback_url: no host"),
    ("callback port", {"callback_url": "http://example.com:99999/"}, "invalid callback_url"),
    ("zero attempts", {"max_attempts": 0}, "max_attempts is 0; it must be at least 1"),
    ("negative attempts", {"max_attempts": -3}, "max_attempts is -3"),
    ("absurd priority", {"priority": 1_000_000_000}, "priority 1000000000 is outside -1000..1000"),
    ("absurd low priority", {"priority": -2_000_000_000}, "priority -2000000000 is outside"),
    ("nasty error", {"task": "nasty_error", "max_attempts": 1}, "RuntimeError: nul\\0 surrogate? xxx"),
    ("good 1", {}, ""),
    ("good 2", {"payload": '{"n": 2}'}, ""),
]

# What the database itself refuses at INSERT, per backend.
REFUSED = {
    "sqlite": set(),
    "mysql": {"not json", "raw nul"},
    "postgresql": {"not json", "raw nul", "escaped nul"},
}


def test_each_bad_input_fails_alone_with_a_clear_reason(backend: str, engine: sa.Engine, run: Any) -> None:
    """Scenario 12, on every backend."""
    ids: dict[str, int] = {}
    refused: set[str] = set()
    for label, columns, _ in ROWS:
        values = {"task": "echo", "payload": "{}", **columns}
        names = ", ".join(values)
        try:
            with engine.begin() as conn:
                result = conn.execute(sa.text(f"INSERT INTO pending_jobs ({names}) VALUES ("
                                              + ", ".join(f":{n}" for n in values) + ")"), values)
                ids[label] = int(result.lastrowid) if backend != "postgresql" else int(conn.execute(
                    sa.text("SELECT currval(pg_get_serial_sequence('pending_jobs', 'id'))")).scalar_one())
        except sa.exc.DBAPIError:
            refused.add(label)
    assert refused == REFUSED[backend]

    report = run(payload_limit=1000)

    assert report.claimed == len(ids)
    with engine.connect() as conn:
        found = conn.execute(sa.text("SELECT id, status, attempts, last_error, result FROM pending_jobs"))
        rows = {r.id: r for r in found}
    for label, _, reason in ROWS:
        if label in refused:
            continue
        row = rows[ids[label]]
        if reason:
            assert row.status == "failed" and reason in row.last_error, (label, row.last_error)
            assert row.attempts == 1  # failed at once: bad input is never retried
        else:
            assert row.status == "succeeded", (label, row.last_error)
    nasty = rows[ids["nasty error"]].last_error
    assert len(nasty) <= 4000 and "\x00" not in nasty and "characters cut" in nasty
    echoed = {label: _result(rows[ids[label]].result)["payload"] for label in ("emoji", "escaped nul") if label in ids}
    assert echoed["emoji"] == {"s": "\U0001f600 \u00e9"}
    if "escaped nul" in echoed:
        assert echoed["escaped nul"] == {"s": "a\x00b"}
    check_invariant(engine)


def _result(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


SPOILERS = {"mysql": "LOCK TABLES pending_job_runs READ",
            "postgresql": "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
            "sqlite": "PRAGMA query_only = ON"}


def test_a_handler_that_changes_its_connection_s_session_fails_alone(backend: str, engine: sa.Engine,
                                                                      run: Any) -> None:
    """The handler's connection went back to the pool: a session left locking tables or read-only made the
    run's next claim or completion on it fail, and the run stop (exit 1) with innocent jobs left behind.
    Now a connection whose error shows a changed session is discarded, and a store transaction meeting one
    retries once on a fresh connection. A handler that meets it first loses that attempt and is retried
    (the second run), never run twice."""
    spoilers = enqueue_many(engine, [{"task": "spoils_session", "payload": {"statement": SPOILERS[backend],
                                                                            "fail": fail}, "max_attempts": 1}
                                     for fail in (False, True)])
    good = enqueue_many(engine, [{"task": task, "payload": {"n": n}} for n in range(10) for task in ("echo", "ledger")])
    run()
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE pending_jobs SET run_at = created_at WHERE status = 'pending'"))
    run()
    with engine.connect() as conn:
        found = dict(conn.execute(sa.text("SELECT id, status FROM pending_jobs")).all())
    assert [found[job_id] for job_id in good] == ["succeeded"] * 20
    assert {found[job_id] for job_id in spoilers} <= {"succeeded", "failed"}
    check_invariant(engine)
