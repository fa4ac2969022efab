"""Declared `sql` jobs of one claim sharing one transaction (runner/shared.py, store/shared.py).

On SQLite, MariaDB and PostgreSQL: the jobs' writes and their `succeeded` commit together, a few
COMMITs for a whole claim instead of one per job; a job that errs fails alone with its own reason;
a job whose lease was taken over writes nothing; results are those of the job run alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from pending_jobs import enqueue
from pending_jobs.models import RunReport
from pending_jobs.store import Store, dialect_for, direct
from tests.conftest import rows, scalar

from .conftest import SAVE_USER, outcome

ALONE = {"timeout": 60}
"""A task with a timeout never shares a transaction: its jobs run one by one, as before."""


class Commits:
    """COMMITs made through the store's engine by a run, beyond those of the same run with nothing to do
    (rescue, the runs row, …): the claims' and the jobs' own."""

    def __init__(self, store: Store, run_declared: Any) -> None:
        self.store = store
        self.run_declared = run_declared
        self.made = 0
        self.idle = 0

    def count(self, conn: sa.Connection) -> None:
        self.made += 1

    def run(self, tables: dict[str, Any], **settings: Any) -> tuple[RunReport, int]:
        """Run, and count its COMMITs beyond those of an idle run (measured first: call before enqueueing)."""
        self.made = 0
        report = self.run_declared(tables, **settings)
        return report, self.made - self.idle

    def measure_idle(self, tables: dict[str, Any], **settings: Any) -> None:
        self.made = 0
        self.run_declared(tables, **settings)
        self.idle = self.made


@pytest.fixture
def commits(store: Store, run_declared: Any) -> Iterator[Commits]:
    counter = Commits(store, run_declared)
    event.listen(store.engine, "commit", counter.count)
    yield counter
    event.remove(store.engine, "commit", counter.count)


def save_users(engine: sa.Engine, count: int) -> list[int]:
    return [enqueue(engine, "save_user", {"name": f"user{n}", "email": f"user{n}@example.com"}) for n in range(count)]


def test_a_claim_of_sql_jobs_commits_together_not_once_per_job(users: sa.Engine, store: Store,
                                                               commits: Commits) -> None:
    commits.measure_idle({"save_user": SAVE_USER})
    ids = save_users(users, 40)

    report, committed = commits.run({"save_user": SAVE_USER})

    assert report.succeeded == 40
    assert scalar(users, "SELECT COUNT(*) FROM users") == 40
    assert all(outcome(store, job_id).status == "succeeded" for job_id in ids)
    assert committed <= 15, committed  # claims, one shared transaction per worker's group, the recorder's


def test_the_same_jobs_alone_commit_once_each(users: sa.Engine, commits: Commits) -> None:
    commits.measure_idle({"save_user": {**SAVE_USER, **ALONE}})
    save_users(users, 40)

    report, committed = commits.run({"save_user": {**SAVE_USER, **ALONE}})

    assert report.succeeded == 40
    assert committed >= 40  # the comparison the test above relies on


def test_a_duplicate_key_fails_its_job_alone_and_the_others_commit(users: sa.Engine, store: Store,
                                                                   commits: Commits) -> None:
    commits.measure_idle({"save_user": SAVE_USER})
    with users.begin() as conn:
        conn.exec_driver_sql("INSERT INTO users (name, email) VALUES ('Old', 'taken@example.com')")
    before = save_users(users, 10)
    duplicate = enqueue(users, "save_user", {"name": "New", "email": "taken@example.com"})
    after = [enqueue(users, "save_user", {"name": f"late{n}", "email": f"late{n}@example.com"}) for n in range(10)]

    report, committed = commits.run({"save_user": SAVE_USER})

    assert (report.succeeded, report.failed, report.retried, report.stale) == (20, 1, 0, 0)
    failed = outcome(store, duplicate)
    assert failed.status == "failed" and failed.attempts == 1
    expected = {"mysql": "constraint users_email_key", "postgresql": "constraint users_email_key",
                "sqlite": "UNIQUE constraint on users.email"}[dialect_for(users).name]
    assert failed.last_error.startswith(f"Fail: integrity error on {expected}: ")
    assert all(outcome(store, job_id).status == "succeeded" for job_id in before + after)
    assert scalar(users, "SELECT COUNT(*) FROM users") == 21  # 'Old' and the 20 others, not 'New'
    assert scalar(users, "SELECT COUNT(*) FROM users WHERE name = 'New'") == 0
    assert committed <= 15, committed  # the others still shared transactions; the duplicate's alone


def test_a_bad_payload_fails_alone_with_its_reason(users: sa.Engine, store: Store, commits: Commits) -> None:
    tables = {"save_user": SAVE_USER, "set_age": {"sql": "INSERT INTO users (name, age) VALUES (:name, :age)"}}
    commits.measure_idle(tables)
    good = save_users(users, 10)
    missing = enqueue(users, "save_user", {"name": "Ann"})
    wrong_type = enqueue(users, "set_age", {"name": "Bob", "age": "forty"})
    fine_age = enqueue(users, "set_age", {"name": "Cat", "age": 40})

    report, committed = commits.run(tables)

    assert outcome(store, missing).last_error == "Fail: payload has no parameter 'email' (needed by task save_user)"
    assert all(outcome(store, job_id).status == "succeeded" for job_id in [*good, fine_age])
    sqlite = dialect_for(users).name == "sqlite"
    if sqlite:  # SQLite's columns take any type
        assert report.failed == 1
    else:
        job = outcome(store, wrong_type)
        assert job.status == "failed" and job.last_error.startswith("Fail: data error: ")
        assert report.failed == 2
    assert scalar(users, "SELECT COUNT(*) FROM users WHERE name IN ('Ann', 'Bob')") == (1 if sqlite else 0)
    assert committed <= 10, committed  # 11 succeeded: most in shared transactions


def test_a_job_whose_lease_was_taken_over_writes_nothing_and_the_others_commit(
        users: sa.Engine, store: Store, commits: Commits, caplog: pytest.LogCaptureFixture) -> None:
    # The thief plays another runner rescuing the victim's job while the claim runs: the victim's
    # lease token is no longer ours. Run together, the guard then matches one job fewer than ran, so
    # nothing of the shared transaction is kept and each job runs alone: the victim's `succeeded`
    # cannot be written, and its insert goes with it; every other job commits once.
    tables = {"note": {"sql": "INSERT INTO audit (note) VALUES (:note)"},
              "thief": {"sql": ["INSERT INTO audit (note) VALUES (:note)",
                                "UPDATE pending_jobs SET lease_token = 'another-runner'"
                                " WHERE id = :victim AND status = 'running'"]}}
    victim = enqueue(users, "note", {"note": "victim"}, priority=-1)  # claimed after the thief
    thief = enqueue(users, "thief", {"note": "thief", "victim": victim})
    others = [enqueue(users, "note", {"note": f"other{n}"}) for n in range(8)]

    with caplog.at_level(logging.INFO, logger="pending_jobs.runner.shared"):
        report, _ = commits.run(tables, concurrency=1)

    assert "10 job(s) of a shared transaction run alone: 1 of 10 leases were taken over" in caplog.text
    assert (report.succeeded, report.stale) == (9, 1)
    notes = sorted(r[0] for r in rows(users, "SELECT note FROM audit"))
    assert notes == sorted(["thief", *(f"other{n}" for n in range(8))])  # each once; the victim's none
    victim_row = outcome(store, victim)
    assert victim_row.status == "running" and victim_row.result is None  # left to the lease's owner
    assert all(outcome(store, job_id).status == "succeeded" for job_id in [thief, *others])


def test_a_whole_claim_whose_leases_were_taken_over_changes_nothing(
        users: sa.Engine, store: Store, commits: Commits, caplog: pytest.LogCaptureFixture) -> None:
    tables = {"stolen": {"sql": ["INSERT INTO audit (note) VALUES (:note)",
                                 "UPDATE pending_jobs SET lease_token = 'another-runner' WHERE status = 'running'"]}}
    ids = [enqueue(users, "stolen", {"note": f"n{n}"}) for n in range(6)]

    with caplog.at_level(logging.INFO, logger="pending_jobs.runner.shared"):
        report, _ = commits.run(tables, concurrency=1)

    assert "6 job(s) of a shared transaction run alone: 6 of 6 leases were taken over" in caplog.text
    assert report.stale == 6 and report.succeeded == 0
    assert scalar(users, "SELECT COUNT(*) FROM audit") == 0
    assert all(outcome(store, job_id).status == "running" for job_id in ids)


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "alone"])
def test_results_are_those_of_a_job_run_alone(users: sa.Engine, store: Store, commits: Commits,
                                              shared: bool) -> None:
    extra = {} if shared else ALONE
    tables = {
        "save_user": {**SAVE_USER, **extra},
        "signup": {"sql": ["INSERT INTO audit (note) VALUES (:note)",
                           "INSERT INTO users (name, email) VALUES (:name, :email)"], **extra},
        "returning": {"sql": "INSERT INTO users (name) VALUES (:name) RETURNING name", **extra},
        "older": {"sql": "UPDATE users SET age = age + 1 WHERE age >= :age", **extra},
        "nobody": {"sql": "DELETE FROM users WHERE name = :name", **extra},
    }
    commits.measure_idle(tables)
    with users.begin() as conn:
        conn.exec_driver_sql("INSERT INTO users (name, age) VALUES ('Old1', 70), ('Old2', 80)")
    saved = [enqueue(users, "save_user", {"name": f"s{n}", "email": f"s{n}@example.com"}) for n in range(3)]
    signed = [enqueue(users, "signup", {"note": f"a{n}", "name": f"g{n}", "email": f"g{n}@example.com"})
              for n in range(3)]
    returned = enqueue(users, "returning", {"name": "r0"})
    older = enqueue(users, "older", {"age": 70}, priority=-1)  # after the inserts (they have no age)
    nobody = enqueue(users, "nobody", {"name": "no such user"})

    report, committed = commits.run(tables)

    assert report.succeeded == 9
    assert (committed < 9) if shared else (committed >= 9), committed  # shared: one group of 9 jobs
    postgres = dialect_for(users).name == "postgresql"

    def inserted(name: str) -> dict[str, Any]:
        user_id = scalar(users, "SELECT id FROM users WHERE name = :name", name=name)
        return {"rowcount": 1} if postgres else {"rowcount": 1, "inserted_id": user_id}

    for n, job_id in enumerate(saved):
        assert outcome(store, job_id).result == inserted(f"s{n}")
    for n, job_id in enumerate(signed):
        audit, user = outcome(store, job_id).result["statements"]
        assert audit["rowcount"] == 1 and ("inserted_id" not in audit or isinstance(audit["inserted_id"], int))
        assert user == inserted(f"g{n}")
    assert outcome(store, returned).result == {"rowcount": 1, "rows": [{"name": "r0"}]}
    assert outcome(store, older).result == {"rowcount": 2}
    assert outcome(store, nobody).result == {"rowcount": 0}
    assert [r[0] for r in rows(users, "SELECT age FROM users WHERE age IS NOT NULL ORDER BY age")] == [71, 81]


def test_a_result_the_driver_cannot_bind_rolls_the_group_back_and_does_not_raise(users: sa.Engine,
                                                                                  store: Store) -> None:
    # Not a database error: SQLAlchemy raises StatementError while binding the results for the UPDATE to
    # succeeded. It must end like a failed COMMIT (nothing kept, each job to run alone), not escape.
    ids = [enqueue(users, "note", {"note": f"n{n}"}) for n in range(3)]
    claim = store.claim("default", 10, "test-owner", 60)

    def work(conn: sa.Connection, jobs: Any) -> list[Any]:
        for job in jobs:
            conn.exec_driver_sql(f"INSERT INTO audit (note) VALUES ('written by {job.id}')")
        return [object() for _ in jobs]  # no JSON for them

    together = store.run_together(claim.jobs, work)

    assert (together.recorded, together.culprit) == (False, None)
    assert "is not JSON serializable" in together.reason
    assert scalar(users, "SELECT COUNT(*) FROM audit") == 0
    assert all(outcome(store, job_id).status == "running" for job_id in ids)


def inserts_sent(engine: sa.Engine) -> int:
    """INSERT statements the MariaDB server has run so far (all sessions: the tests run one at a time)."""
    return int(rows(engine, "SHOW GLOBAL STATUS LIKE 'Com_insert'")[0][1])


@pytest.mark.parametrize("statement_chars", [direct.STATEMENT_CHARS, 1], ids=["one insert", "cut at every row"])
def test_one_row_inserts_of_a_group_go_together_and_each_job_keeps_its_own_id(
        users: sa.Engine, store: Store, commits: Commits, statement_chars: int,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """On MariaDB a group's one-row INSERTs go as one INSERT of many rows, RETURNING the generated ids
    (store/direct.py): each job's result is still its own row's id, as when it runs alone, and a table
    that generates no id gives none. Elsewhere the same results, one statement (or pipeline) at a time."""
    monkeypatch.setattr(direct, "STATEMENT_CHARS", statement_chars)  # 1: every row past it, an INSERT each
    together: list[int] = []  # rows of each INSERT of many rows sent
    send = direct._Rows._insert
    monkeypatch.setattr(direct._Rows, "_insert", lambda rows, cursor, n, values: (together.append(n),
                                                                                 send(rows, cursor, n, values))[1])
    tables = {"save_user": SAVE_USER, "note": {"sql": "INSERT INTO audit (note) VALUES (:note)"}}
    commits.measure_idle(tables)
    saved = save_users(users, 40)
    noted = [enqueue(users, "note", {"note": f"n{n}"}) for n in range(10)]
    mariadb = bool(getattr(users.dialect, "is_mariadb", False))
    before = inserts_sent(users) if mariadb else 0

    report, _ = commits.run(tables)

    assert report.succeeded == 50
    postgres = dialect_for(users).name == "postgresql"
    for n, job_id in enumerate(saved):
        user_id = scalar(users, "SELECT id FROM users WHERE name = :name", name=f"user{n}")
        assert outcome(store, job_id).result == ({"rowcount": 1} if postgres else
                                                 {"rowcount": 1, "inserted_id": user_id})
    sqlite = dialect_for(users).name == "sqlite"  # there every table has a rowid, the id SQLite reports
    for job_id in noted:
        result = outcome(store, job_id).result
        assert result == ({"rowcount": 1, "inserted_id": result.get("inserted_id")} if sqlite else {"rowcount": 1})
    assert sorted(r[0] for r in rows(users, "SELECT note FROM audit")) == sorted(f"n{n}" for n in range(10))
    # Together on MariaDB and PostgreSQL (SQLite runs them one by one, in process: nothing to gain).
    many = dialect_for(users).name != "sqlite"
    assert sum(together) == (50 if many else 0), together
    if many:
        assert set(together) == {1} if statement_chars == 1 else max(together) > 1, together
    if mariadb:  # 50 one-row INSERTs, sent as a few: one per task and group (and the run's own row)
        sent = inserts_sent(users) - before
        assert sent < 20 if statement_chars > 1 else sent >= 50, sent


def test_the_workers_of_a_run_look_the_table_up_once(users: sa.Engine, run_declared: Any,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A run's workers get their first groups together: one of them asks the database how the table's rows
    go together (on MariaDB, information_schema), the others wait for its answer instead of asking too."""
    looked: list[str] = []
    ask = type(dialect_for(users)).insert_rows_suffix

    def slow(self: Any, conn: sa.Connection, table: str) -> str | None:
        looked.append(table)
        time.sleep(0.3)  # every worker reaches the lookup while the first is still in it
        return ask(self, conn, table)

    monkeypatch.setattr(type(dialect_for(users)), "insert_rows_suffix", slow)
    save_users(users, 40)

    report = run_declared({"save_user": SAVE_USER}, concurrency=4)

    assert report.succeeded == 40
    assert looked == ([] if dialect_for(users).name == "sqlite" else ["users"]), looked


def test_inserts_through_a_view_keep_the_id_a_job_alone_gets(users: sa.Engine, store: Store, commits: Commits,
                                                             backend: str) -> None:
    """A view shows no generated id in MariaDB's information_schema, yet an INSERT through it reports one:
    such INSERTs go one by one, so each job's result is still the one it would have alone."""
    if backend != "mysql":
        pytest.skip("the generated id is looked up on MariaDB alone (PostgreSQL reports none, SQLite one by one)")
    with users.begin() as conn:
        conn.exec_driver_sql("CREATE VIEW people AS SELECT id, name, email FROM users")
    tables = {"person": {"sql": "INSERT INTO people (name, email) VALUES (:name, :email)"}}
    commits.measure_idle(tables)
    ids = [enqueue(users, "person", {"name": f"p{n}", "email": f"p{n}@example.com"}) for n in range(12)]

    assert commits.run(tables)[0].succeeded == 12

    for n, job_id in enumerate(ids):
        user_id = scalar(users, "SELECT id FROM users WHERE name = :name", name=f"p{n}")
        assert outcome(store, job_id).result == {"rowcount": 1, "inserted_id": user_id}


@pytest.mark.parametrize("together", [True, False], ids=["together", "one-by-one"])
def test_a_group_that_stops_commits_the_jobs_it_ran_and_leaves_the_others_to_be_put_back(
        users: sa.Engine, store: Store, together: bool) -> None:
    """A run that stops makes a running group stop between its jobs (runner/shared.py): the jobs it ran commit
    with their `succeeded`, the others are untouched, still the run's to put back (pending, or cancelled when
    an operator asked meanwhile). `together`: all jobs asked of `work` at once, else (after that raised) one
    at a time."""
    for n in range(5):
        enqueue(users, "note", {"note": f"n{n}"})
    claim = store.claim("default", 10, "unit-test", 60)
    ran: list[int] = []

    def work(conn: sa.Connection, jobs: Any) -> list[Any]:
        if not together and len(jobs) > 1:
            raise RuntimeError("one at a time")
        results = []
        for job in jobs:
            if len(ran) == 2:  # the run stops here
                break
            conn.execute(sa.text("INSERT INTO audit (note) VALUES (:note)"), {"note": str(job.id)})
            ran.append(job.id)
            results.append({"rowcount": 1})
        return results

    done = store.run_together(claim.jobs, work)

    first, rest = [job.id for job in claim.jobs[:2]], [job.id for job in claim.jobs[2:]]
    assert (done.recorded, done.unstarted, ran) == (True, 3, first)
    assert sorted(int(r[0]) for r in rows(users, "SELECT note FROM audit")) == sorted(first)
    assert [outcome(store, job_id).status for job_id in first] == ["succeeded"] * 2
    assert [outcome(store, job_id).status for job_id in rest] == ["running"] * 3
    with users.begin() as conn:
        conn.execute(sa.text("UPDATE pending_jobs SET cancel_requested = TRUE WHERE id = :id"), {"id": rest[0]})
    assert store.release(claim.token, rest) == (2, 1)
    assert [(outcome(store, job_id).status, outcome(store, job_id).attempts) for job_id in rest] == [
        ("cancelled", 0), ("pending", 0), ("pending", 0)]
