"""Scenarios 10 and 11: producers racing runners, and runners killed at random over 5,000 jobs."""

from __future__ import annotations

import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable

import pytest
import sqlalchemy as sa

from .conftest import RunnerProcess, check_invariant, drain, statuses, wait_for

Runners = Callable[..., RunnerProcess]


@pytest.mark.slow
def test_producers_at_full_speed_while_two_runners_claim(
    fresh: str, engine_on: Callable[[str], sa.Engine], runners: Runners
) -> None:
    """Scenario 10: producers use a plain engine (REPEATABLE READ, the MariaDB default); the runners
    claim under READ COMMITTED, so no gap lock of theirs can block or deadlock an INSERT."""
    engine = engine_on(fresh)
    producer = sa.create_engine(fresh, pool_size=4)
    per_producer, errors, inserted = 1200, [], []
    insert = sa.text("INSERT INTO pending_jobs (task, payload, priority) VALUES ('noop', '{}', :priority)")

    def produce(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(per_producer):
                with producer.begin() as conn:
                    inserted.append(conn.execute(insert, {"priority": rng.randint(-5, 5)}).lastrowid)
        except Exception as error:  # any error at all is a failure of this scenario
            errors.append(error)

    # No host lock: the two runners stand for two hosts, serving at once.
    workers = [runners(fresh, "--poll", "0.05", "--lease", "10", "--batch-size", "20", "--max-runtime", "120",
                       "--lock-file", "none") for _ in range(2)]
    # Produce only once both runners are up (each writes its pending_job_runs row at start).
    wait_for(lambda: _scalar(engine, "SELECT COUNT(*) FROM pending_job_runs") >= 2, 60, "both runners to start")
    threads = [threading.Thread(target=produce, args=(seed,)) for seed in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    done_while_producing = statuses(engine).get("succeeded", 0)
    # Both runners must be past start-up (claiming, signal handlers installed) before SIGTERM.
    owners = "SELECT COUNT(DISTINCT lease_owner) FROM pending_jobs WHERE lease_owner IS NOT NULL"
    wait_for(lambda: _scalar(engine, owners) >= 2, 60, "both runners to claim")
    for worker in workers:
        worker.signal(signal.SIGTERM)
    try:
        codes = [worker.wait(90) for worker in workers]
    except subprocess.TimeoutExpired:
        for worker in workers:
            worker.signal(signal.SIGUSR1)  # every thread's stack, to stderr
        time.sleep(1)
        pytest.fail("a runner did not stop within 90 s of SIGTERM: "
                    + repr([worker.stderr()[-6000:] for worker in workers]))
    producer.dispose()

    assert errors == []
    assert codes == [0, 0], [worker.stderr() for worker in workers]
    assert len(set(inserted)) == 3 * per_producer
    assert done_while_producing > 0  # the runners really claimed while producers inserted
    drain(fresh, engine)
    rows = check_invariant(engine)
    assert {row["id"] for row in rows} == set(inserted)
    assert all(row["status"] == "succeeded" and row["attempts"] == 1 for row in rows)


@pytest.mark.slow
def test_chaos_four_runners_killed_at_random_over_5000_jobs(
    fresh: str, engine_on: Callable[[str], sa.Engine], runners: Runners
) -> None:
    """Scenario 11: every job ends succeeded with exactly one ledger row; only jobs a killed runner
    held (at most two batches per kill: one running, one claimed ahead) ran more than once, and each
    says its lease expired."""
    engine = engine_on(fresh)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO pending_jobs (task, payload) VALUES ('ledger', '{}')"),
                     [{} for _ in range(5000)])
    batch = 20
    # Four runners serving at once, as on four hosts. A lease of 4 s: a live runner beats every 1.3 s, so one
    # that 2 cores and restarts leave behind by a second or two is not taken for dead (rescues beyond the kills').
    args = ("--poll", "0.2", "--lease", "4", "--batch-size", str(batch), "--concurrency", "4", "--max-runtime", "90",
            "--lock-file", "none")
    rng = random.Random(11)
    pool = [runners(fresh, *args) for _ in range(4)]
    kills = 0
    end = time.monotonic() + 30
    while time.monotonic() < end and statuses(engine).get("pending", 0) > 0:
        time.sleep(rng.uniform(1.0, 2.5))
        victim = rng.randrange(len(pool))
        pool[victim].kill()
        kills += 1
        pool[victim] = runners(fresh, *args)
    for runner in pool:
        runner.signal(signal.SIGTERM)
    codes = [runner.wait(60) for runner in pool]

    # -SIGTERM: a runner restarted an instant ago, still importing, had not installed its handler and
    # had claimed nothing (the handler is installed before the first claim).
    assert set(codes) <= {0, -signal.SIGTERM}, [runner.stderr() for runner in pool]
    assert kills >= 2
    drain(fresh, engine, "--batch-size", "200", "--concurrency", "4")
    rows = check_invariant(engine)
    assert all(row["status"] == "succeeded" for row in rows)
    repeated = [row for row in rows if row["attempts"] > 1]
    rescued = [row for row in repeated if "lease expired" in row["last_error"]]
    # A runner claims its next batch while the current one runs, so a kill strands up to two batches.
    assert len(rescued) <= kills * 2 * batch
    # Any other re-run is a handler whose own transaction InnoDB chose as a deadlock victim: rolled back
    # whole (ledger row included), recorded, and run again; never a second effect (checked above).
    others = [row["last_error"] for row in repeated if row not in rescued]
    assert all("could not commit the handler's transaction" in e and "1213" in e for e in others), others[:3]


def _scalar(engine: sa.Engine, sql: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text(sql)).scalar() or 0)
