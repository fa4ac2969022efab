"""The console's job list stays bounded in time (store/joblist.py): a filter no index serves is cancelled by
the database after the budget and searched in windows of ids instead, and following the cursors still
finds every match, newest first. The budget and window are lowered here so that 20,000 rows show it."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from pending_jobs.store import Store, dialect_for, joblist
from pending_jobs.store.columns import JOB_COLUMNS, LIST_COLUMNS
from pending_jobs.store.console import ConsoleStore
from pending_jobs.store.ops import JobFilter
from tests.conftest import fill_needles, rows

ROWS = 20_000
NEEDLES = (7, 2_345, 9_999, 15_001)  # n of the rows whose payload holds the needle


@pytest.fixture
def filled(store: Store, engine: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> Store:
    monkeypatch.setattr(joblist, "BUDGET", 0.001)  # a LIKE over 20,000 rows takes longer on any machine
    monkeypatch.setattr(joblist, "WINDOW", 3_000)
    fill_needles(engine, ROWS, NEEDLES)
    return store


def _ids(engine: sa.Engine) -> list[int]:
    """The ids of the filled rows, in n order (inserted in that order)."""
    return [row[0] for row in rows(engine, "SELECT id FROM pending_jobs ORDER BY id")]


def test_a_slow_filter_is_searched_in_windows_and_the_cursors_find_every_match(filled: Store,
                                                                               engine: sa.Engine) -> None:
    console = ConsoleStore(filled)
    ids = _ids(engine)
    expected = sorted((ids[n - 1] for n in NEEDLES), reverse=True)
    found: list[int] = []
    windowed = 0
    before = None
    for _ in range(ROWS // 3_000 + 3):  # at most one page per window, and the last
        page = console.jobs(JobFilter(text="needle"), before=before, limit=2)
        found.extend(job.id for job in page.jobs)
        if page.searched_from is not None:
            windowed += 1
            assert page.next == page.searched_from  # the next page searches below this window
            assert all(page.searched_from <= job.id < (before or 10**9) for job in page.jobs)
        if page.next is None:
            break
        before = page.next
    assert found == expected  # each match once, newest first, none skipped
    assert windowed >= 2  # SQLite too: a progress handler interrupts its read at the budget


def test_a_full_page_from_a_window_is_the_exact_page(filled: Store, engine: sa.Engine) -> None:
    # Every row matches `hay` but the needles: the window's newest matches are the newest matches.
    page = ConsoleStore(filled).jobs(JobFilter(text="hay"), limit=10)
    ids = _ids(engine)
    newest = sorted((ids[n - 1] for n in range(1, ROWS + 1) if n not in NEEDLES), reverse=True)[:10]
    assert [job.id for job in page.jobs] == newest and page.next == newest[-1] and page.searched_from is None


@pytest.mark.parametrize("backend", ["mysql", "postgresql"], indirect=True)
def test_a_cancelled_read_leaves_no_time_limit_on_the_connection(store: Store, engine: sa.Engine) -> None:
    sql = dialect_for(engine)
    sleep = "SELECT SLEEP(2)" if sql.name == "mysql" else "SELECT pg_sleep(2)"
    show = "SELECT @@session.max_statement_time" if sql.name == "mysql" else "SHOW statement_timeout"
    with engine.connect() as conn:
        with pytest.raises(sa.exc.DBAPIError) as raised:
            with conn.begin(), sql.time_limit(conn, 0.05):
                conn.exec_driver_sql(sleep)
        assert sql.timed_out(raised.value)
        assert float(conn.exec_driver_sql(show).scalar()) == 0  # the server default: no limit


def test_the_list_page_reads_no_payload_or_result_but_the_api_does(filled: Store) -> None:
    """The console's list page shows neither (store/columns.py LIST_COLUMNS): not read, in a window neither."""
    console = ConsoleStore(filled)
    where = console.ops.where(JobFilter(text="hay"))
    pages = [(console.jobs(f, limit=3, bodies=False), console.jobs(f, limit=3)) for f in (JobFilter(),
                                                                                         JobFilter(text="hay"))]
    pages.append((joblist._windowed(filled, LIST_COLUMNS, where, [], 3, 3_000),
                  joblist._windowed(filled, JOB_COLUMNS, where, [], 3, 3_000)))
    for bare, full in pages:
        assert [job.id for job in bare.jobs] == [job.id for job in full.jobs] and len(bare.jobs) == 3
        assert all(job.payload is None and job.result is None for job in bare.jobs)
        assert all(job.payload["note"] == "hay" for job in full.jobs)
        assert [(job.task, job.status, job.created_at) for job in bare.jobs] == \
               [(job.task, job.status, job.created_at) for job in full.jobs]
