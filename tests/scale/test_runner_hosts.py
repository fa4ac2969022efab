"""Scenario 3: runner hosts in network namespaces, talking to one MariaDB over a virtual network.

A runner whose link is cut mid-job is a runner that cannot know it lost its jobs: its jobs are rescued
after their lease by the others, and when the link returns its late outcomes are refused by the
fencing token and its `ctx.connection` writes never commit.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from pending_jobs.store import create_engine
from tests.faults.conftest import wait_for

from . import netlab
from .conftest import (
    SOAK,
    RunnerProcess,
    check_exactly_once,
    cron_until_done,
    drain_seconds,
    executions,
    insert_jobs,
    live_leases,
    new_database,
    pid_notes,
    report,
    scaled,
    statuses,
)
from .servers import NetMaria, proc_cpu_seconds

pytestmark = pytest.mark.slow
TRX_POLL = 0.25  # InnoDB refreshes INNODB_TRX at most every 0.1 s (see tests/faults/test_database.py)


@pytest.fixture
def database(net_maria: NetMaria) -> Iterator[tuple[str, sa.Engine]]:
    """A fresh database on the networked server: (runner URL, an engine from this host)."""
    name = new_database(net_maria)
    engine = create_engine(net_maria.url(name), pool_size=2)
    try:
        yield net_maria.url(name), engine
    finally:
        engine.dispose()
        net_maria.sql(f"DROP DATABASE IF EXISTS {name}")


def _transactions(server: NetMaria, state: str | None = None) -> int:
    """Open InnoDB transactions that changed a row (optionally: in this state, e.g. LOCK WAIT)."""
    where = " AND trx_state = :state" if state else ""
    return int(server.sql("SELECT COUNT(*) FROM information_schema.INNODB_TRX WHERE trx_rows_modified > 0"
                          + where, state=state)[0][0])


def _deadlock_victims(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT COUNT(*) FROM pending_jobs WHERE status = 'pending'"
                                        " AND last_error LIKE '%(1213%'")).scalar_one())


def _lock_waits(server: NetMaria) -> int:
    return int(server.sql("SELECT COUNT(*) FROM information_schema.INNODB_TRX WHERE trx_state = 'LOCK WAIT'")[0][0])


@pytest.mark.parametrize(("how", "idle_timeout"), [
    ("loss", 0),
    pytest.param("down", 0, marks=pytest.mark.skipif(not SOAK, reason="the link-down variant (about 40 s) runs "
                                                      "with PENDING_JOBS_SOAK=1")),
    ("loss", 3),
], ids=["100% loss", "link down", "100% loss, idle_transaction_timeout=3"])
def test_runner_cut_off_mid_job_is_rescued_and_fenced(
    lab: netlab.NetLab, net_maria: NetMaria, database: tuple[str, sa.Engine],
    runners: Callable[..., RunnerProcess], runlog: Any, how: str, idle_timeout: int,
) -> None:
    """Host 1's runner claims 4 jobs, writes each one's ledger row through ctx.connection (uncommitted)
    and stalls; its link is cut. Host 2's runner rescues the jobs after their 4 s lease and runs them.

    Without an idle-transaction timeout the server cannot tell the cut runner is gone, so its open
    transactions keep their row locks and the rescuer's ledger writes wait on them until the link
    returns; with MariaDB's idle_transaction_timeout the server ends them on its own. Either way, the
    cut runner's guarded UPDATEs change nothing and its ledger rows never commit."""
    url, engine = database
    net_maria.sql(f"SET GLOBAL idle_transaction_timeout = {idle_timeout}")  # read at connect
    try:
        ids = insert_jobs(engine, 4, stall=6, ledger_first=True)
        cut_host, other_host = lab.add_host(), lab.add_host()
        cut = runners(url, "--poll", "0", "--lease", "4", "--batch-size", "4", "--concurrency", "4", netns=cut_host)
        wait_for(lambda: _transactions(net_maria) == 4, 30, "4 open handler transactions", interval=TRX_POLL)

        lab.cut(cut_host, how)
        cut_at = time.monotonic()
        wait_for(lambda: live_leases(engine) == 0, 30, "the cut runner's leases to expire", interval=0.25)
        rescuer = runners(url, "--poll", "0", "--lease", "30", "--batch-size", "4", "--concurrency", "4",
                          netns=other_host)
        if idle_timeout:
            assert rescuer.wait(60) == 0, rescuer.stderr()  # nothing held it up
        else:
            # The rescuer's ledger writes wait on the cut runner's uncommitted rows.
            wait_for(lambda: _lock_waits(net_maria) == 4, 30, "the rescuer to wait on the cut runner's locks",
                     interval=TRX_POLL)
            assert statuses(engine) == {"running": 4}
        lab.restore(cut_host, how)
        codes = {"cut": cut.wait(120), "rescuer": rescuer.wait(120)}
        healed = time.monotonic() - cut_at
    finally:
        net_maria.sql("SET GLOBAL idle_transaction_timeout = 0")

    assert codes["rescuer"] == 0, rescuer.stderr()
    assert codes["cut"] in (0, 75), cut.stderr()  # 75 when a connection was found dead on its return
    if codes["cut"] == 0:
        assert "outcome(s) not recorded: their lease had been taken over" in cut.stderr()
    # When the cut runner's transactions roll back all at once, InnoDB may pick one of the rescuer's
    # waiting ledger INSERTs as a deadlock victim: that handler fails, and its job is retried later.
    victims = _deadlock_victims(engine)
    cron_until_done(url, engine, runlog)
    result = check_exactly_once(engine, runlog)
    notes = pid_notes(engine)
    assert all(notes[job_id] != str(cut.pid) for job_id in ids)  # the cut runner's writes never committed
    assert all(executions(runlog)[job_id] >= 2 for job_id in ids)  # each ran on both hosts
    waited = "the rescuer waited on the cut runner's row locks until the link returned; " if not idle_timeout else ""
    setting = ("100% packet loss" if how == "loss" else "link down") + (", idle timeout 3 s" if idle_timeout else "")
    report(f"runner hosts, link cut mid-job ({setting}): 4 jobs rescued after their 4 s lease by the other host; "
           f"{waited}late outcomes refused (cut runner exit {codes['cut']}), its ctx.connection writes never "
           f"committed; {victims} rescuer handler(s) deadlock victim(s) when those rolled back, retried; "
           f"{result['ledger_rows']} ledger rows, none the cut runner's; {healed:.1f}s from the cut to both done")


def _started(engine: sa.Engine, pids: list[int]) -> bool:
    """Every one of these runner processes has recorded its run's start (it is past its imports)."""
    with engine.connect() as conn:
        found = conn.execute(sa.text("SELECT COUNT(*) FROM pending_job_runs WHERE pid IN :pids")
                             .bindparams(sa.bindparam("pids", expanding=True)), {"pids": pids}).scalar_one()
    return int(found) == len(pids)


def test_drain_with_1_2_4_8_runner_hosts(
    lab: netlab.NetLab, net_maria: NetMaria, database: tuple[str, sa.Engine],
    runners: Callable[..., RunnerProcess], runlog: Any,
) -> None:
    """The same number of jobs drained by 1, 2, 4 and 8 runner hosts (one `run` process each, over the
    virtual network); where the rate flattens, and who spent the CPU: the database or the runners.

    The runners start first and poll an empty queue, so their start-up (imports, connections) is not
    part of the measure; the jobs then arrive in one INSERT, and SIGTERM ends the runs once they are done."""
    url, engine = database
    jobs = scaled(400)
    hosts = [lab.add_host() for _ in range(8)]
    rows = []
    for count in (1, 2, 4, 8):
        procs = [runners(url, "--poll", "0.1", "--max-runtime", "600", "--lease", "60", "--batch-size", "20",
                         "--concurrency", "4", netns=host) for host in hosts[:count]]
        pids = [proc.pid for proc in procs]
        wait_for(lambda: _started(engine, pids), 60, "the runners to start")  # noqa: B023 - used at once
        db_cpu, runner_cpu = net_maria.cpu_seconds(), sum(proc_cpu_seconds(proc.pid) for proc in procs)
        ids = insert_jobs(engine, jobs)
        done = len(ids) + sum(row[0] for row in rows)
        wait_for(lambda: statuses(engine).get("succeeded", 0) == done, 300,  # noqa: B023 - used at once
                 "the jobs to be done", interval=0.1)
        db_cpu = net_maria.cpu_seconds() - db_cpu
        runner_cpu = sum(proc_cpu_seconds(proc.pid) for proc in procs) - runner_cpu
        for proc in procs:
            proc.signal(signal.SIGTERM)
        codes = [proc.wait(60) for proc in procs]
        assert codes == [0] * count, [proc.stderr()[-2000:] for proc in procs]
        span = drain_seconds(engine, ids)
        rows.append((jobs, count, jobs / span, db_cpu, runner_cpu, span))
    result = check_exactly_once(engine, runlog)
    assert result["jobs"] == 4 * jobs and not result["ran_twice"]
    for jobs_, count, rate, db_cpu, runner_cpu, span in rows:
        report(f"runner hosts: {count} runner host(s), {jobs_} ledger jobs in {span:.2f}s = {rate:.0f} jobs/s; "
               f"CPU per 1000 jobs: database {1000 * db_cpu / jobs_:.2f}s, runners {1000 * runner_cpu / jobs_:.2f}s; "
               f"database busy {db_cpu / span:.0%} of one core, runners {runner_cpu / span:.0%}")
