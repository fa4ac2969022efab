"""Scenario 2: PostgreSQL primary + streaming standby, started by the suite; the standby is promoted mid-drain.

Runners reach the database through libpq's multi-host URL with `target_session_attrs=read-write`
(`?host=primary:port&host=standby:port&target_session_attrs=read-write`): each new connection goes
to whichever of the two accepts writes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from pending_jobs.store import create_engine
from tests.faults.conftest import wait_for

from .conftest import (
    RunnerProcess,
    check_exactly_once,
    cron_until_done,
    executions,
    insert_jobs,
    report,
    scaled,
    statuses,
)
from .servers import PgPair

pytestmark = pytest.mark.slow
DB = "pj_failover"


@pytest.fixture
def engine_of() -> Iterator[Callable[[str], sa.Engine]]:
    made: list[sa.Engine] = []

    def make(url: str) -> sa.Engine:
        engine = create_engine(url, pool_size=2)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.dispose()


def _ids(engine: sa.Engine, status: str) -> set[int]:
    with engine.connect() as conn:
        return {int(row[0]) for row in conn.execute(sa.text("SELECT id FROM pending_jobs WHERE status = :s"),
                                                    {"s": status})}


def _token(engine: sa.Engine, job_id: int) -> str | None:
    with engine.connect() as conn:
        token = conn.execute(sa.text("SELECT lease_token FROM pending_jobs WHERE id = :id"), {"id": job_id}).scalar()
        return None if token is None else str(token)


@pytest.mark.parametrize("pg_pair", [True], indirect=True, ids=["synchronous"])
@pytest.mark.parametrize("fault", ["vanishes", "turns read-only"])
def test_promote_the_synchronous_standby_mid_drain(
    pg_pair: PgPair, engine_of: Callable[[str], sa.Engine], runners: Callable[..., RunnerProcess],
    runlog: Any, fault: str,
) -> None:
    """The primary crashes (or is made read-only, then stopped) and the standby is promoted. Runners exit
    75 or carry on through the multi-host URL; no job is lost, and only jobs in flight at the failover
    run twice (their leases expire and they are rescued)."""
    jobs = scaled(200)
    url = pg_pair.hosts_url(DB)
    old = engine_of(pg_pair.primary.url(DB, "runner"))
    insert_jobs(old, jobs, sleep=0.02)
    args = ("--poll", "0", "--lease", "5", "--batch-size", "10", "--concurrency", "4")
    procs = [runners(url, *args) for _ in range(2)]
    wait_for(lambda: statuses(old).get("succeeded", 0) >= jobs // 4, 120, "a quarter of the jobs done")
    old.dispose()

    if fault == "turns read-only":
        pg_pair.primary.sql("ALTER SYSTEM SET default_transaction_read_only = on")
        pg_pair.primary.sql("SELECT pg_reload_conf()")
        codes = [proc.wait(120) for proc in procs]
        assert codes == [75, 75], [proc.stderr()[-2000:] for proc in procs]
        pg_pair.primary.stop("fast")
    else:
        pg_pair.primary.stop("immediate")
    # Read on the standby before it is promoted (nothing can write there yet): the claims that reached it
    # and no outcome did, i.e. the jobs in flight at the failover. Once it has replayed all it received:
    # synchronous commit waits for the standby's flush, not its replay.
    wait_for(lambda: pg_pair.standby.sql("SELECT pg_last_wal_replay_lsn() >= pg_last_wal_receive_lsn()")[0][0],
             30, "the standby to replay what it received")
    new = engine_of(pg_pair.standby.url(DB, "runner"))
    in_flight = _ids(new, "running")
    started = time.monotonic()
    pg_pair.standby.promote()
    promoted_in = time.monotonic() - started

    codes = [proc.wait(180) for proc in procs]
    for code, proc in zip(codes, procs, strict=True):
        assert code in (0, 75), proc.stderr()[-3000:]
        if code == 75:
            assert "database unavailable" in proc.stderr()
    cron_until_done(url, new, runlog)  # the next cron runs, same URL: the new primary
    result = check_exactly_once(new, runlog)
    assert result["jobs"] == jobs  # nothing lost: every job the old primary had is there, and done
    assert set(result["ran_twice"]) <= in_flight, "a job ran twice that was not in flight at the failover"
    report(f"postgresql synchronous, primary {fault}, standby promoted in {promoted_in:.1f}s: runner exits "
           f"{sorted(codes)}; {jobs} jobs, 0 lost, ledger exactly once; {len(in_flight)} in flight at the "
           f"failover, {len(result['ran_twice'])} of them ran twice (rescued after their lease), no other job")


@pytest.mark.parametrize("pg_pair", [False], indirect=True, ids=["asynchronous"])
def test_promote_a_lagging_asynchronous_standby(
    pg_pair: PgPair, engine_of: Callable[[str], sa.Engine], runners: Callable[..., RunnerProcess],
    runlog: Any,
) -> None:
    """The standby stops receiving WAL (lag, or a cut link), runner A keeps working on the primary, then
    the standby is promoted and the old primary killed. What A committed after the cut — claims and
    outcomes — is lost with the old primary: those jobs run again on the new one. A, failed over
    through the multi-host URL, finishes its slow job late: its fencing token is unknown to the new
    primary, so the outcome is refused and its ctx.connection write rolled back; the run under a claim
    made on the new primary stands."""
    fast = scaled(40)
    old = engine_of(pg_pair.primary.url(DB, "runner"))
    # Long enough to outlast the promotion on a loaded machine: finished before the old primary stopped,
    # its outcome would be committed there (and lost with it), not refused late.
    [slow] = insert_jobs(old, 1, priority=10, stall=12)
    insert_jobs(old, fast, sleep=0.05)
    wait_for(pg_pair.caught_up, 30, "the standby to replay every INSERT")
    pg_pair.detach_standby()

    url = pg_pair.hosts_url(DB)
    args = ("--poll", "0", "--lease", "30", "--batch-size", "1", "--concurrency", "2")
    a = runners(url, *args)
    wait_for(lambda: statuses(old).get("succeeded", 0) >= 5, 60, "runner A to finish 5 jobs on the old primary")
    new = engine_of(pg_pair.standby.url(DB, "runner"))
    done_at_promotion = _ids(new, "succeeded")  # read on the standby: what the new primary will start from
    assert slow in _ids(old, "running"), ("the slow job must still run on the old primary when it is cut off",
                                          statuses(old))
    pg_pair.standby.promote()  # for a moment two primaries: A still writes to the old one
    pg_pair.primary.stop("immediate")
    old.dispose()
    b = runners(url, *args)

    codes = {"A": a.wait(180), "B": b.wait(180)}
    assert codes == {"A": 0, "B": 0}, (a.stderr()[-3000:], b.stderr()[-3000:])
    cron_until_done(url, new, runlog)

    # What the old primary had committed, read back once it is up again, fenced read-only.
    pg_pair.primary.start("default_transaction_read_only=on")
    fenced = engine_of(pg_pair.primary.url(DB, "runner"))
    old_done, old_running = _ids(fenced, "succeeded"), _ids(fenced, "running")
    old_token = _token(fenced, slow)
    fenced.dispose()
    pg_pair.primary.stop("fast")
    # Claims made after the cut were lost with their attempt: such a job runs once more than it counts.
    result = check_exactly_once(new, runlog, lost_claims=frozenset(old_done | old_running) - done_at_promotion)

    lost = old_done - done_at_promotion  # outcomes committed on the old primary, never shipped
    ran = executions(runlog)
    assert lost and all(ran[job_id] == 2 for job_id in lost), (sorted(lost), {j: ran[j] for j in lost})
    assert set(result["ran_twice"]) <= lost | old_running | {slow}
    assert max(ran.values()) == 2
    # The slow job ran under A's claim on the old primary and again under a claim made on the new one;
    # A's late outcome, under the old token, was refused: the row and its one ledger row are the new run's.
    assert ran[slow] == 2 and old_token is not None and _token(new, slow) != old_token
    assert "not recorded: their lease had been taken over" in a.stderr()
    report(f"postgresql asynchronous, standby cut off then promoted: {len(lost)} outcome(s) committed on the "
           f"old primary after the cut were lost with it and their jobs ran again; {len(old_running)} job(s) in "
           f"flight there ran again too; the stale runner's late outcome for job {slow} was refused by its "
           f"fencing token (ledger row from the new primary's run only); {result['jobs']} jobs, ledger exactly "
           f"once, no job ran more than twice")
