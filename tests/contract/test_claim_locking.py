"""The claim on a large table: served by the index (no filesort), and SKIP LOCKED lets claims run side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from pending_jobs import migrate
from pending_jobs.models import Completion
from pending_jobs.schema import pending_jobs as J
from pending_jobs.store import create_engine, open_store
from pending_jobs.store.columns import CLAIM_COLUMNS, claim_order, due_in
from tests.conftest import create_database

ROWS = 100_000


def claim_select(queue: str, limit: int, priority: int | None = None) -> sa.Select[Any]:
    """The claim's locking read of `queue`, written out from the parts the store's claim is built of; with
    `priority`, bounded to it as a caught-up run's claim is (store/due.py)."""
    bound = () if priority is None else (J.c.priority == priority,)
    return (sa.select(*CLAIM_COLUMNS).where(*due_in(queue), *bound).order_by(*claim_order()).limit(limit)
            .with_for_update(skip_locked=True))


@pytest.fixture(params=["mysql", "postgresql"])
def big(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """A migrated database holding 100,000 jobs: 90 % finished, 10 % pending, in two queues."""
    url, drop = create_database(str(request.param), tmp_path)
    engine = create_engine(url, pool_size=4)
    migrate.upgrade(engine)
    status = "CASE WHEN n % 10 = 0 THEN 'pending' ELSE 'succeeded' END"
    queue = "CASE WHEN n % 20 = 0 THEN 'mail' ELSE 'default' END"
    with engine.begin() as conn:
        if request.param == "mysql":
            source = f"SELECT seq AS n FROM seq_1_to_{ROWS}"
            run_at = "UTC_TIMESTAMP(6) - INTERVAL n SECOND"
        else:
            source = f"SELECT n FROM generate_series(1, {ROWS}) AS n"
            run_at = "now() - n * interval '1 second'"
        conn.execute(sa.text(
            f"INSERT INTO pending_jobs (task, payload, status, queue, priority, run_at) "
            f"SELECT 'noop', '{{}}', {status}, {queue}, n % 3, {run_at} FROM ({source}) AS s"))
    with engine.begin() as conn:
        conn.execute(sa.text("ANALYZE TABLE pending_jobs" if request.param == "mysql" else "ANALYZE pending_jobs"))
    yield engine
    engine.dispose()
    drop()


@pytest.mark.parametrize("priority", [None, 1], ids=["plain", "bounded to one priority"])
def test_explain_uses_claim_index_without_filesort(big: sa.Engine, priority: int | None) -> None:
    with big.connect() as conn:
        if big.dialect.name in ("mysql", "mariadb"):
            stmt = claim_select("default", 100, priority)
            sql = str(stmt.compile(dialect=big.dialect, compile_kwargs={"literal_binds": True}))
            plan = conn.execute(sa.text("EXPLAIN " + sql)).mappings().all()
            jobs = [row for row in plan if row["table"] == "pending_jobs"]
            assert len(jobs) == 1 and jobs[0]["key"] == "ix_pending_jobs_claim"
            assert "filesort" not in (jobs[0]["Extra"] or "").lower()
            # The only other step is the paused-queue check: a primary-key lookup, done once per claim.
            assert all(row["table"] in (None, "pending_job_paused_queues") and row["type"] in (None, "const")
                       for row in plan if row is not jobs[0])
        else:
            plan_text = "\n".join(conn.execute(sa.text(
                "EXPLAIN SELECT id FROM pending_jobs WHERE status = 'pending' AND queue = 'default' "
                f"AND run_at <= now() {'' if priority is None else f'AND priority = {priority} '}"
                "ORDER BY priority DESC, run_at, id LIMIT 100 FOR UPDATE SKIP LOCKED")).scalars())
            assert "ix_pending_jobs_claim" in plan_text
            assert "Sort" not in plan_text


def test_second_session_claims_other_rows_while_first_holds_its_claim(big: sa.Engine) -> None:
    store = open_store(big)
    locked_ids: list[int] = []
    holder = big.connect()
    try:
        holder.begin()
        locked = holder.execute(claim_select("default", 50)).all()  # the claim's locking read, held open
        locked_ids = [row[0] for row in locked]
        assert len(locked_ids) == 50

        claim = store.claim("default", 50, "second-session", 60)
        other = [job.id for job in claim.jobs]
        assert len(other) == 50
        assert not set(other) & set(locked_ids)

        producer = store.claim("mail", 10, "third-session", 60)  # another queue is not blocked either
        assert len(producer.jobs) == 10
    finally:
        holder.rollback()
        holder.close()


def test_a_claims_outcomes_are_written_by_primary_key(big: sa.Engine) -> None:
    """The finishing UPDATE names its rows by id: `running` being rare when the table was analyzed must not
    lead the planner to the claim index, whose `running` range fills with dead entries as a drain goes on
    (PostgreSQL: 3.4 ms a batch at the start of a 100,000-job drain, 11.5 ms at its end)."""
    store = open_store(big)
    claim = store.claim("default", 100, "test", 60)
    seen: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if statement.lstrip().upper().startswith("UPDATE PENDING_JOBS"):
            seen.append((statement, parameters))

    sa.event.listen(big, "before_cursor_execute", capture)
    try:
        store.finish_many([Completion(claim.token, succeeded=[(job.id, None) for job in claim.jobs])])
    finally:
        sa.event.remove(big, "before_cursor_execute", capture)
    [(statement, parameters)] = seen
    with big.connect() as conn:
        plan = conn.exec_driver_sql("EXPLAIN " + statement, parameters).all()
    if big.dialect.name in ("mysql", "mariadb"):
        [row] = [row._mapping for row in plan]
        assert row["key"] == "PRIMARY", row
    else:
        text = "\n".join(row[0] for row in plan)
        assert "pending_jobs_pkey" in text and "ix_pending_jobs_claim" not in text, text
