"""A time column holding what is not a time (a producer's raw INSERT) never breaks an operator's read: `list`,
`show`, `status`, `check` and the console show the row, its unreadable time as the text stored (Job.unreadable),
and name the rows no run will pick up. SQLite stores any text; MariaDB (its default sql_mode) zero dates, which
PyMySQL hands over as text; PostgreSQL ±infinity and years Python cannot hold, which psycopg refuses to read."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from markupsafe import escape
from starlette.testclient import TestClient

from pending_jobs import config
from pending_jobs.models import Job
from pending_jobs.store import Store, create_engine, open_store
from pending_jobs.store.callbacks import CallbackStore
from pending_jobs.store.console import ConsoleStore
from pending_jobs.store.ops import JobFilter, OpsStore
from pending_jobs.store.runs import RunStore
from pending_jobs.web import views
from pending_jobs.web.app import create_app
from tests.conftest import cli

# Per database: (column, value stored, whether a run picks the job up) for each bad row, beside a good one.
BAD: dict[str, list[tuple[str, str, bool]]] = {
    # Text compares as text on SQLite: 'tomorrow' after every time (never due), "0 o'clock" before (due now).
    "sqlite": [("run_at", "tomorrow", False), ("run_at", "0 o'clock", True), ("created_at", "yesterday", True),
               ("updated_at", "0abc", True), ("run_at", "12", True)],  # '12': a day number to julianday()
    # A zero day compares by its digits on MariaDB: '2999-05-00' comes due just before May 2999 (COMES_DUE).
    "mysql": [("run_at", "0000-00-00 00:00:00", True), ("created_at", "2024-00-10 00:00:00", True),
              ("run_at", "2999-05-00 00:00:00", False), ("updated_at", "0000-00-00 00:00:00", True)],
    "postgresql": [("run_at", "infinity", False), ("run_at", "-infinity", True), ("created_at", "-infinity", True),
                   ("updated_at", "0044-03-15 00:00:00+00 BC", True), ("started_at", "10000-01-01 00:00:00+00",
                                                                         True), ("run_at", "10000-01-01 00:00:00+00",
                                                                                 False)],
}
COMES_DUE = {"2999-05-00 00:00:00"}
"""Stored values that are not due now but will be: pending, and not named as never due."""


def _add(conn: sa.Connection, column: str | None = None, value: str | None = None) -> int:
    names, values = ("", "") if column is None else (f", {column}", ", :v")
    conn.execute(sa.text(f"INSERT INTO pending_jobs (task, payload{names}) VALUES ('echo', '{{}}'{values})"),
                 {"v": value})
    return int(conn.execute(sa.text("SELECT MAX(id) FROM pending_jobs")).scalar_one())


def _insert(engine: sa.Engine, backend: str) -> tuple[int, dict[int, tuple[str, str, bool]]]:
    """The good row's id, and each bad row's id with its (column, value, runs)."""
    with engine.begin() as conn:
        return _add(conn), {_add(conn, column, value): (column, value, runs) for column, value, runs in BAD[backend]}


def _shown(job: Job, column: str, value: str) -> None:
    """The bad time reads as None, and the text stored is there to show instead."""
    assert getattr(job, column) is None
    assert set(job.unreadable) == {column}
    assert job.unreadable[column].startswith(value[:10])  # as the database prints it (MariaDB adds .000000)


@pytest.fixture
def bad_rows(backend: str, engine: sa.Engine) -> tuple[int, dict[int, tuple[str, str, bool]]]:
    return _insert(engine, backend)


def test_list_and_show_show_a_bad_time_as_its_text(store: Store, bad_rows: Any) -> None:
    good, bad = bad_rows
    listed = {job.id: job for job in OpsStore(store).list_jobs(JobFilter())}
    assert set(listed) == {good, *bad}
    assert listed[good].unreadable == {} and listed[good].run_at is not None and listed[good].created_at is not None
    for job_id, (column, value, _) in bad.items():
        _shown(listed[job_id], column, value)
        shown = store.get(job_id)
        assert shown == listed[job_id]


def test_status_and_check_name_the_rows_no_run_picks_up(backend: str, store: Store, bad_rows: Any) -> None:
    _, bad = bad_rows
    runs = RunStore(store)
    health = runs.health()
    assert sum(n for _, status, n in health.counts if status == "pending") == len(bad) + 1
    assert health.oldest_due_age is not None  # the good row's wait, whatever the bad ones hold
    never, examples = runs.never_due()
    expected = [(job_id, value) for job_id, (column, value, runs_) in bad.items()
                if column == "run_at" and not runs_ and value not in COMES_DUE]
    assert (never, examples) == (len(expected), expected)
    assert runs.expired_leases() == []


def test_the_console_reads_a_bad_time(store: Store, bad_rows: Any) -> None:
    good, bad = bad_rows
    console = ConsoleStore(store)
    assert {q.queue: q.counts["pending"] for q in console.overview()} == {"default": len(bad) + 1}
    assert console.throughput()  # read without raising (a bad time in the rows it samples broke it)
    counted = console.counters()
    assert counted.depth == {"default": len(bad) + 1} and counted.finished == []
    page = console.jobs(JobFilter())
    assert {job.id for job in page.jobs} == {good, *bad}
    data = views.jobs(store, JobFilter(), None, 50)  # what /jobs and /api/jobs render
    assert len(data["jobs"]) == len(bad) + 1
    for job_id, (column, _, _) in bad.items():
        one = views.job(store, job_id)  # /api/jobs/ID
        assert one is not None and one[column] is None and column in one["unreadable"]
    assert CallbackStore(store).recent() == []


def test_the_console_pages_show_the_text_stored(store: Store, bad_rows: Any) -> None:
    _, bad = bad_rows
    app = TestClient(create_app(config.load_web({}, environ={}), store), base_url="http://localhost",
                     client=("127.0.0.1", 40000))
    listed = app.get("/jobs")
    assert listed.status_code == 200
    for job_id, (column, value, _) in bad.items():
        page = app.get(f"/jobs/{job_id}")
        assert page.status_code == 200
        # every time the page shows, updated too (it showed "-" for an unreadable updated_at)
        assert str(escape(value[:10])) in page.text, (column, value)
        if column == "run_at":
            assert str(escape(value[:10])) in listed.text
    app.close()


def test_a_run_runs_what_is_due_and_the_rows_stay_readable(store: Store, run: Any, bad_rows: Any) -> None:
    good, bad = bad_rows
    report = run()
    assert report.claimed == 1 + sum(1 for _, _, runs_ in bad.values() if runs_)
    listed = {job.id: job for job in OpsStore(store).list_jobs(JobFilter())}
    assert listed[good].status == "succeeded"
    for job_id, (column, value, runs_) in bad.items():
        assert listed[job_id].status == ("succeeded" if runs_ else "pending")
        if column in ("created_at", "run_at") or not runs_:  # the run rewrites updated_at and started_at
            _shown(listed[job_id], column, value)
        assert OpsStore(store).cancel(job_id) == ("succeeded" if runs_ else "done")
    assert len(OpsStore(store).list_jobs(JobFilter())) == len(bad) + 1
    assert RunStore(store).never_due() == (0, [])


def test_the_commands_show_a_bad_time(db_url: str, bad_rows: Any) -> None:
    _, bad = bad_rows
    env = {"PENDING_JOBS_DATABASE_URL": db_url}
    listed = cli("list", env=env)
    assert listed.returncode == 0, listed.stderr
    for job_id, (column, _, _) in bad.items():
        shown = cli("show", str(job_id), "--json", env=env)
        assert shown.returncode == 0, shown.stderr
        assert '"unreadable"' in shown.stdout and f'"{column}"' in shown.stdout
    status = cli("status", env=env)
    assert status.returncode == 0, status.stderr
    never = [value for column, value, runs_ in bad.values()
             if column == "run_at" and not runs_ and value not in COMES_DUE]
    assert ("will never run: run_at is not a time that will come" in status.stderr) == bool(never)
    for value in never:
        assert repr(value) in status.stderr


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_the_drivers_own_time_loaders_are_back_after_a_persons_read(db_url: str, bad_rows: Any) -> None:
    # The tolerant loaders are for people's reads only: the runner's reads on the same pooled connection
    # keep psycopg's own (and its refusal of a time Python cannot hold).
    engine = create_engine(db_url, pool_size=1, max_overflow=0)
    try:
        listed = OpsStore(open_store(engine)).list_jobs(JobFilter())
        assert any(job.unreadable for job in listed)
        with engine.connect() as conn, pytest.raises(sa.exc.DataError, match=r"infinity|too large|year"):
            conn.execute(sa.text("SELECT 'infinity'::timestamptz")).scalar_one()
    finally:
        engine.dispose()
