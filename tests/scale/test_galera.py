"""Scenario 1: a 3-node MariaDB Galera cluster (multi-primary, synchronous), started by the suite.

Row locks and SKIP LOCKED are local to a node, so two nodes can claim the same row; Galera lets the
first commit through and fails the other one's certification (error 1213), or aborts it outright when
the winner's write set reaches the node while the loser still holds the row ("brute-force abort", the
same 1213). Each place that can lose that race — the claim, the completion, the handler's own
`ctx.connection` transaction — must take it as "someone else has it": retry or drop, never record
twice, never lose the job.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from pending_jobs import enqueue
from pending_jobs.errors import DatabaseUnavailable
from pending_jobs.models import Completion, Rescued
from pending_jobs.store import Store, create_engine, open_store, ours
from tests.conftest import free_port
from tests.faults.conftest import wait_for

from .conftest import (
    RunnerProcess,
    check_exactly_once,
    cron_until_done,
    drain_seconds,
    insert_jobs,
    report,
    scaled,
    statuses,
)
from .servers import GaleraCluster

pytestmark = pytest.mark.slow
RUN = ("--poll", "0", "--batch-size", "10", "--concurrency", "4")


@pytest.fixture
def engines(galera: GaleraCluster, galera_db: str) -> Iterator[Callable[[int], sa.Engine]]:
    """`engines(n)`: an engine (as the runner makes them) on node n; disposed afterwards."""
    made: dict[int, sa.Engine] = {}

    def on(node: int) -> sa.Engine:
        if node not in made:
            made[node] = create_engine(galera.nodes[node - 1].url(galera_db), pool_size=4)
        return made[node]

    yield on
    for engine in made.values():
        engine.dispose()


def test_runners_on_three_nodes_drain_together_exactly_once(
    galera: GaleraCluster, galera_db: str, engines: Callable[[int], sa.Engine],
    runners: Callable[..., RunnerProcess], runlog: Any,
) -> None:
    """The same jobs drained by three runners on one node, then by three runners on three nodes."""
    jobs = scaled(300)
    engine = engines(1)
    done = 0
    for layout, nodes in (("3 runners on 1 node", (1, 1, 1)), ("3 runners on 3 nodes", (1, 2, 3))):
        ids = insert_jobs(engine, jobs)
        done += jobs
        before = galera.conflicts()
        procs = [runners(galera.nodes[n - 1].url(galera_db), *RUN, "--lease", "30") for n in nodes]
        codes = [proc.wait(300) for proc in procs]
        after = galera.conflicts()
        took = drain_seconds(engine, ids)

        assert codes == [0, 0, 0], [proc.stderr()[-3000:] for proc in procs]
        assert statuses(engine) == {"succeeded": done}
        lost_races = sum(proc.stderr().count("retrying after OperationalError: (1213") for proc in procs)
        conflicts = (after["cert_failures"] - before["cert_failures"]) + (after["bf_aborts"] - before["bf_aborts"])
        commits = after["commits"] - before["commits"]
        report(f"galera, {layout}: {jobs} ledger jobs in {took:.1f}s ({jobs / took:.0f} jobs/s); "
               f"{conflicts} certification conflicts in {commits} commits ({conflicts / max(commits, 1):.1%}), "
               f"{lost_races} transactions retried after 1213")

    result = check_exactly_once(engine, runlog)
    for node in (2, 3):  # every node holds the same outcome
        assert statuses(engines(node)) == {"succeeded": done}
        with engines(node).connect() as conn:
            assert conn.execute(sa.text("SELECT COUNT(*) FROM ledger")).scalar_one() == done
    report(f"galera: {result['jobs']} jobs, 0 lost, 0 recorded twice, {result['ledger_rows']} ledger rows "
           f"(exactly once each), {result['attempts_over_1']} needed a second attempt")


def test_a_runner_on_another_node_reads_what_was_just_committed(
    galera: GaleraCluster, galera_db: str, engines: Callable[[int], sa.Engine],
) -> None:
    """`run --job ID` on node 2 right after a producer's INSERT on node 1 finds the job: every runner
    session on a Galera node waits for causality before reads and UPDATE/DELETE (wsrep_sync_wait)."""
    producer, runner_engine = engines(1), engines(2)
    with runner_engine.connect() as conn:
        assert conn.execute(sa.text("SELECT @@session.wsrep_sync_wait")).scalar_one() & 3 == 3
    store = open_store(runner_engine)
    tries = scaled(100)
    missed = 0
    for _ in range(tries):
        job_id = enqueue(producer, "noop", {})
        if not store.claim_job(job_id, "probe", 30).jobs:
            missed += 1
    assert missed == 0

    # The same without the wait, for the figure only (how often a plain session reads stale rows).
    plain = create_engine(galera.nodes[1].url(galera_db), pool_size=1)

    @event.listens_for(plain, "connect")
    def _no_wait(dbapi_connection: Any, _record: Any) -> None:
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SET SESSION wsrep_sync_wait = 0")

    stale = 0
    try:
        plain_store = open_store(plain)
        for _ in range(tries):
            job_id = enqueue(producer, "noop", {})
            if not plain_store.claim_job(job_id, "probe", 30).jobs:
                stale += 1
    finally:
        plain.dispose()
    report(f"galera, claim on node 2 right after the INSERT on node 1: missed {missed}/{tries} with "
           f"wsrep_sync_wait=3, {stale}/{tries} with wsrep_sync_wait=0")


def _once_after(engine: sa.Engine, prefix: str, action: Callable[[], Any],
                on: Callable[[sa.Connection], bool] = lambda conn: True) -> list[Any]:
    """Run `action` (another node's write) once, right after `engine` executes a statement starting with
    `prefix`: the other node commits while this one still holds the row, uncommitted."""
    done: list[Any] = []

    @event.listens_for(engine, "after_cursor_execute")
    def _after(conn: sa.Connection, _cursor: Any, statement: str, *_: Any) -> None:
        if not done and statement.startswith(prefix) and on(conn):
            done.append(action())

    return done


def _held_by(engine: sa.Engine, pid: int) -> int:
    """Running jobs whose lease a runner process holds (lease_owner is host:pid)."""
    with engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT COUNT(*) FROM pending_jobs WHERE status = 'running'"
                                        " AND lease_owner LIKE :owner"), {"owner": f"%:{pid}"}).scalar_one())


def _expire(engine: sa.Engine, job_id: int) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE pending_jobs SET lease_expires_at = UTC_TIMESTAMP(6) - INTERVAL 1 SECOND"
                             " WHERE id = :id"), {"id": job_id})


def _token(engine: sa.Engine, job_id: int) -> Any:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT status, attempts, lease_token FROM pending_jobs WHERE id = :id"),
                            {"id": job_id}).one()


MARK = "UPDATE pending_jobs SET status="  # the claim's UPDATE and every completion start so


def test_claim_that_loses_the_race_is_retried_and_gets_nothing(
    engines: Callable[[int], sa.Engine], caplog: pytest.LogCaptureFixture,
) -> None:
    node1, node2 = open_store(engines(1)), open_store(engines(2))
    [job_id] = insert_jobs(engines(1), 1)
    other = _once_after(engines(2), MARK, lambda: node1.claim("default", 10, "runner-on-node1", 30))

    with caplog.at_level(logging.WARNING):
        lost = node2.claim("default", 10, "runner-on-node2", 30)

    [won] = other
    assert [job.id for job in won.jobs] == [job_id]
    assert lost.jobs == []  # lost the race: retried, found nothing left, claimed nothing twice
    assert "retrying after OperationalError: (1213" in caplog.text
    assert tuple(_token(engines(2), job_id)) == ("running", 1, won.token)  # one attempt counted, not two


def _taken_over(store: Store, engine: sa.Engine, job_id: int) -> Callable[[], Any]:
    """Another node's runner rescues the job (its lease was made to expire) and claims it."""
    def take() -> Any:
        _expire(engine, job_id)
        assert store.rescue_expired() == Rescued(pending=1)
        return store.claim("default", 10, "runner-on-node1", 30)
    return take


def test_completion_that_loses_the_race_records_nothing(
    engines: Callable[[int], sa.Engine], caplog: pytest.LogCaptureFixture,
) -> None:
    node1, node2 = open_store(engines(1)), open_store(engines(2))
    [job_id] = insert_jobs(engines(1), 1)
    held = node2.claim("default", 10, "runner-on-node2", 30)
    other = _once_after(engines(2), MARK, _taken_over(node1, engines(1), job_id))

    with caplog.at_level(logging.WARNING):
        [finished] = node2.finish_many([Completion(held.token, succeeded=[(job_id, None)])])

    [rival] = other
    assert finished.succeeded == 0  # the retry found the row under another token: dropped
    assert "retrying after OperationalError: (1213" in caplog.text
    assert tuple(_token(engines(2), job_id)) == ("running", 2, rival.token)


@pytest.mark.parametrize("when", ["before its update", "between its update and commit"])
def test_handler_transaction_that_loses_the_race_never_commits(
    engines: Callable[[int], sa.Engine], when: str,
) -> None:
    """ctx.connection on node 2 writes the ledger; meanwhile a runner on node 1 takes the job over.
    Before the guarded UPDATE: it changes no row ("stale"). Between UPDATE and COMMIT: the commit fails
    certification (1213), the row read back by token says it was not ours ("error": retried later,
    and that retry's guarded write is dropped too). Either way the ledger write is rolled back."""
    node1, node2 = open_store(engines(1)), open_store(engines(2))
    [job_id] = insert_jobs(engines(1), 1)
    [job] = node2.claim("default", 10, "runner-on-node2", 30).jobs
    session = node2.handler_transaction(job)
    conn = session.connection
    conn.execute(sa.text("INSERT INTO ledger (job_id, note) VALUES (:id, 'loser')"), {"id": job_id})
    take = _taken_over(node1, engines(1), job_id)
    if when == "before its update":
        rival = take()
    else:
        other = _once_after(engines(2), MARK, take, on=lambda c: c.connection.dbapi_connection
                            is conn.connection.dbapi_connection)

    verdict, _error = session.commit_success(None)

    if when != "before its update":
        [rival] = other
    assert verdict == ("stale" if when == "before its update" else "error")
    assert tuple(_token(engines(1), job_id)) == ("running", 2, rival.token)
    # The winner's transaction commits; the ledger holds its row only.
    [won] = rival.jobs
    winner = node1.handler_transaction(won)
    winner.connection.execute(sa.text("INSERT INTO ledger (job_id, note) VALUES (:id, 'winner')"), {"id": job_id})
    assert winner.commit_success(None) == ("recorded", "")
    with engines(2).connect() as check:
        assert check.execute(sa.text("SELECT note FROM ledger WHERE job_id = :id"), {"id": job_id}).all() == [
            ("winner",)]


def test_hosts_url_connects_to_the_first_usable_node(
    galera: GaleraCluster, galera_db: str, engines: Callable[[int], sa.Engine],
) -> None:
    """`?host=...&host=...`: a host that refuses the connection and a read-only node are passed over, in
    the URL's order; with no usable host the connection fails as "cannot connect" (2003: exit 75)."""
    node1, node2 = galera.nodes[0], galera.nodes[1]
    dead = free_port()
    node2.sql("SET GLOBAL read_only = 1")
    try:
        engine = create_engine(f"mysql+pymysql://runner@/{galera_db}?host=127.0.0.1:{dead}"
                                  f"&host=127.0.0.1:{node2.port}&host=127.0.0.1:{node1.port}")
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT @@port")).scalar_one() == node1.port
        engine.dispose()

        nowhere = create_engine(f"mysql+pymysql://runner@/{galera_db}?host=127.0.0.1:{dead}"
                                   f"&host=127.0.0.1:{node2.port}")
        with pytest.raises(sa.exc.OperationalError) as raised:
            nowhere.connect()
        nowhere.dispose()
    finally:
        node2.sql("SET GLOBAL read_only = 0")
    assert isinstance(ours(raised.value), DatabaseUnavailable)
    message = str(raised.value)
    assert "no usable database host" in message and f"127.0.0.1:{node2.port} is read-only" in message
    assert f"127.0.0.1:{dead} Can't connect" in message


@pytest.mark.parametrize("fault", ["killed", "cut off from the cluster"])
def test_node_lost_mid_drain(
    galera: GaleraCluster, galera_db: str, engines: Callable[[int], sa.Engine],
    runners: Callable[..., RunnerProcess], runlog: Any, fault: str,
) -> None:
    """Node 3 is killed (SIGKILL) or isolated (gmcast.isolate: alive, outside the primary component,
    answering 1047) mid-drain. Its single-host runner exits 75; a runner whose URL lists node 3 then
    node 2 carries on there; jobs held by the runner that exited are rescued after their lease."""
    jobs = scaled(200)
    engine = engines(1)
    insert_jobs(engine, jobs, sleep=0.02)
    node3 = galera.nodes[2]
    args = (*RUN, "--lease", "5")
    only3 = runners(node3.url(galera_db), *args)
    failover = runners(galera.hosts_url(galera_db, 3, 2), *args)
    on1 = runners(galera.nodes[0].url(galera_db), *args)
    wait_for(lambda: statuses(engine).get("succeeded", 0) >= jobs // 4, 120, "a quarter of the jobs done")
    try:
        lost_at = time.monotonic()
        if fault == "killed":
            node3.kill()
        else:
            node3.provider_option("gmcast.isolate=1")
        codes = {name: proc.wait(180) for name, proc in (("only3", only3), ("failover", failover), ("on1", on1))}
        drained = time.monotonic() - lost_at
        held = _held_by(engine, only3.pid)

        assert codes["only3"] == 75, only3.stderr()[-3000:]
        assert "database unavailable" in only3.stderr()
        assert codes["failover"] == 0, failover.stderr()[-3000:]
        assert codes["on1"] == 0, on1.stderr()[-3000:]
        ticks = cron_until_done(galera.nodes[0].url(galera_db), engine, runlog)
        result = check_exactly_once(engine, runlog)
        report(f"galera, node 3 {fault} mid-drain: its runner exited 75, the runner listing node 3 then node 2 "
               f"went on (exit 0); survivors finished {drained:.1f}s after the loss; {held} job(s) held by the "
               f"runner that exited, rescued after their lease in {ticks} cron tick(s); {result['jobs']} jobs, "
               f"0 lost, ledger exactly once; {len(result['ran_twice'])} handler(s) ran twice (their transaction "
               f"died uncommitted with node 3, or their runner did, and the job was retried)")
    finally:
        if fault == "killed":
            node3.start()  # rejoins by incremental state transfer
        else:
            node3.provider_option("gmcast.isolate=0")
            wait_for(node3.synced, 120, "node 3 to rejoin")
