"""No bad row, handler or outcome stops a queue: a poison row of every kind, beside 1,000 good rows with
callbacks, and one ordinary `pending-jobs run` on each database. The 1,000 succeed and are announced;
each poison row ends failed with a reason a person can read (or, where it can never be found due, is
named by `status`); nothing is left running; a second run changes nothing."""

from __future__ import annotations

import json
from typing import Any

import pytest
import sqlalchemy as sa

from pending_jobs import enqueue_many
from tests.conftest import cli, rows
from tests.receivers import answer, receiver

GOOD = 1000

# (task, payload, extra columns) — every database takes these rows.
HANDLER_POISON: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("echo", {}, {"callback_url": "http://example.com:99999/hook"}),
    ("echo", {}, {"callback_url": "http://[::1/x"}),
    ("echo", {}, {"callback_url": "http://user:pa/ss@example.com/x"}),
    ("echo", {}, {"callback_url": "https:/alice:S3CRET@host/x"}),
    ("retry_with", {"delay": 1e12}, {"max_attempts": 1}),
    ("retry_with", {"delay": "inf"}, {"max_attempts": 1}),
    ("retry_with", {"delay": "soon"}, {"max_attempts": 1}),
    ("unprintable", {}, {"max_attempts": 1}),
    ("broken_backoff", {}, {"max_attempts": 1}),
    ("closes_connection", {}, {"max_attempts": 1}),
    ("invalidates_connection", {}, {"max_attempts": 1}),
    ("lone_surrogate_result", {}, {}),
    ("no_such_task", {}, {"max_attempts": 1}),  # tried again with more (a deploy may be under way)
]


def _raw_poison(backend: str) -> list[str]:
    """Rows only raw SQL can insert, as this database takes them (each a VALUES tuple for
    (task, payload, queue, priority, max_attempts, status, callback_url))."""
    deep = {"sqlite": 5000, "postgresql": 1100, "mysql": 30}[backend]  # MariaDB refuses deeper JSON
    nested = '{"a": ' + "[" * deep + "]" * deep + "}"
    found = [
        f"('echo', '{nested}', 'default', 0, 5, 'pending', NULL)",
        "('echo', '[1, 2]', 'default', 0, 5, 'pending', NULL)",  # JSON, but not an object
        "('echo', '{}', 'default', 5000, 5, 'pending', NULL)",  # priority out of range
        "('echo', '{}', 'default', 0, 0, 'pending', NULL)",  # max_attempts below 1
        "('echo', '{}', 'default', 0, 5, 'running', NULL)",  # running, no lease: rescued, then run
    ]
    if backend == "sqlite":  # SQLite stores whatever it is given
        found += [
            "(CAST(X'6563686fff' AS TEXT), '{}', 'default', 0, 5, 'pending', NULL)",  # task not UTF-8
            "('echo', CAST(X'7b2261223a2280ff227d' AS TEXT), 'default', 0, 5, 'pending', NULL)",  # payload
            # the same, with words an exit code was once chosen by ("connection lost": exit 75)
            "('echo', CAST(X'7b2261223a22636f6e6e656374696f6e206c6f737420ff227d' AS TEXT), 'default', 0, 5, "
            "'pending', NULL)",
            "('echo', '{}', CAST(X'6d61696cff' AS TEXT), 0, 5, 'pending', NULL)",  # queue not UTF-8
            "('echo', '{}', 'default', 0, 5, 'pending', CAST(X'687474703a2f2fff' AS TEXT))",  # callback_url
            "('echo', '{}', 'default', 'high', 5, 'pending', NULL)",  # text in priority
            "('echo', '{}', 'default', 0, X'00', 'pending', NULL)",  # a blob in max_attempts
            # REAL infinities (int() raises OverflowError, not ValueError: the claim raised, every run exited 1)
            "('echo', '{}', 'default', 0, 9e999, 'pending', NULL)",
            "('echo', '{}', 'default', -9e999, 5, 'pending', NULL)",
            "('echo', 'not json at all', 'default', 0, 5, 'pending', NULL)",
            # Python's json reads these; no other JSON reader does (list --json and a command's stdin failed)
            "('echo', '{\"a\": \"\\ud800\"}', 'default', 0, 5, 'pending', NULL)",
            "('echo', '{\"a\": NaN}', 'default', 0, 5, 'pending', NULL)",
        ]
    return found


def _text(value: Any) -> str:
    return bytes(value).decode("utf-8", "replace") if isinstance(value, bytes | memoryview) else str(value or "")


@pytest.mark.slow
def test_poison_rows_beside_a_thousand_good_ones(backend: str, db_url: str, engine: sa.Engine) -> None:
    with receiver(answer(200)) as server:
        url = server.url("/done")
        enqueue_many(engine, [{"task": "echo", "payload": {"n": n}, "callback_url": url} for n in range(GOOD)])
        with engine.begin() as conn:
            for task, payload, extra in HANDLER_POISON:
                conn.execute(sa.insert(sa.table("pending_jobs", sa.column("task"), sa.column("payload"),
                                                *(sa.column(k) for k in extra))),
                             {"task": task, "payload": json.dumps(payload), **extra})
            for values in _raw_poison(backend):
                conn.execute(sa.text("INSERT INTO pending_jobs (task, payload, queue, priority, max_attempts, "
                                     f"status, callback_url) VALUES {values}"))
            if backend == "sqlite":
                conn.execute(sa.text("INSERT INTO pending_jobs (task, payload, run_at) VALUES ('echo', '{}', "
                                     "'tomorrow')"))
        env = {"PENDING_JOBS_DATABASE_URL": db_url, "PENDING_JOBS_CALLBACK_ALLOW": "127.0.0.1"}
        done = cli("run", env=env, timeout=300)
        assert done.returncode == 0, done.stderr

        good = rows(engine, "SELECT status, callback_status FROM pending_jobs WHERE callback_url = :u", u=url)
        assert good == [("succeeded", "delivered")] * GOOD
        assert len(server.received) == GOOD

        with engine.connect() as conn:  # text the driver cannot decode is read as bytes here
            poison = [(int(i), s, _text(e)) for i, s, e in conn.execute(sa.text(
                "SELECT id, status, CAST(last_error AS BLOB) FROM pending_jobs WHERE callback_url IS NULL "
                "OR callback_url != :u ORDER BY id" if backend == "sqlite" else
                "SELECT id, status, last_error FROM pending_jobs WHERE callback_url IS NULL OR callback_url != :u "
                "ORDER BY id"), {"u": url}).all()]
        statuses = [status for _, status, _ in poison]
        assert "running" not in statuses
        rescued = [error for _, status, error in poison if status == "succeeded"]
        assert rescued == ["lease expired while running: the runner was killed or lost the database"]
        never = [job_id for job_id, status, _ in poison if status == "pending"]
        assert len(never) == (1 if backend == "sqlite" else 0)  # run_at 'tomorrow': named by status
        for job_id, status, error in poison:
            if status == "failed":
                assert error.strip(), f"job {job_id} failed without a reason"
        history = {int(job): int(n) for job, n in rows(engine, "SELECT job_id, COUNT(*) FROM pending_job_errors "
                                                                "GROUP BY job_id")}
        unrecorded = [job_id for job_id, status, _ in poison if status == "failed" and not history.get(job_id)]
        assert unrecorded == [], "a failed job's reason is in its error history (the console's job page)"
        assert statuses.count("failed") == len(HANDLER_POISON) + len(_raw_poison(backend)) - 1

        listed = cli("list", "--json", "--limit", "100000", env=env)
        assert listed.returncode == 0, listed.stderr
        assert len(json.loads(listed.stdout)) == GOOD + len(poison)
        if backend == "sqlite":
            reasons = {e for _, s, e in poison if s == "failed"}
            assert ("payload is not valid JSON: a lone surrogate escape (\\ud800 to \\udfff) is not valid UTF-8"
                    in reasons)
            assert "payload is not valid JSON: NaN is not JSON" in reasons
        secret_free = cli("callbacks", "list", "--json", env=env)
        assert "S3CRET" not in secret_free.stdout and "pa/ss" not in secret_free.stdout
        assert "S3CRET" not in done.stderr
        if backend == "sqlite":
            status = cli("status", env=env)
            assert "will never run: run_at is not a time that will come" in status.stderr
            assert "'tomorrow'" in status.stderr
            checked = cli("check", "--no-callbacks", env=env)
            assert checked.returncode != 0  # `check` fails on it, naming the row
            assert f"1 pending job(s) no run will pick up (job {never[0]}: run_at 'tomorrow')" in checked.stdout

        before = rows(engine, "SELECT id, status, attempts, callback_status FROM pending_jobs ORDER BY id")
        again = cli("run", env=env, timeout=300)
        assert again.returncode == 0, again.stderr
        assert rows(engine, "SELECT id, status, attempts, callback_status FROM pending_jobs ORDER BY id") == before
