"""Limits and schedules with real `pending-jobs run` processes side by side, on MariaDB and PostgreSQL.

Each test writes a config file with the limits or schedules and starts several runners, as several
hosts would; handlers append start/end times to a ledger file (tests/flow_jobs.py), which is then
checked: never more than the limit at once per key, each key's jobs in order, every slot once.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from pending_jobs import enqueue_many, migrate
from pending_jobs.store import create_engine
from tests.conftest import ROOT, create_database, rows, scalar

pytestmark = [pytest.mark.slow, pytest.mark.parametrize("server", ["mysql", "postgresql"])]


@pytest.fixture
def database(server: str, tmp_path: Path) -> Iterator[tuple[str, sa.Engine]]:
    url, drop = create_database(server, tmp_path)
    engine = create_engine(url)
    migrate.upgrade(engine)
    yield url, engine
    engine.dispose()
    drop()


def runner(url: str, config: Path, *args: str, poll: str = "0") -> subprocess.Popen[str]:
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT),
           "PENDING_JOBS_TASKS": "tests.jobs,tests.flow_jobs", "PENDING_JOBS_POLL": poll,
           "PENDING_JOBS_DATABASE_URL": url, "PENDING_JOBS_LOCK_FILE": "none"}
    return subprocess.Popen([sys.executable, "-m", "pending_jobs", "run", "--config", str(config), "-v", *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_all(runners: list[subprocess.Popen[str]], timeout: float = 240) -> list[tuple[str, str]]:
    outputs = [process.communicate(timeout=timeout) for process in runners]
    assert [process.returncode for process in runners] == [0] * len(runners), outputs
    return outputs


def ledger(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def most_at_once(spans: list[dict[str, Any]]) -> int:
    """The largest number of spans open at the same moment (an end before a start at the same time)."""
    events = sorted([(s["start"], 1) for s in spans] + [(s["end"], -1) for s in spans], key=lambda e: (e[0], e[1]))
    open_now = highest = 0
    for _, step in events:
        open_now += step
        highest = max(highest, open_now)
    return highest


def test_four_runners_keep_two_per_key_over_2000_jobs(database: tuple[str, sa.Engine], tmp_path: Path) -> None:
    url, engine = database
    config = tmp_path / "jobs.toml"
    config.write_text("[task.span]\nconcurrency_limit = 2\n")
    path = tmp_path / "ledger.jsonl"
    enqueue_many(engine, [{"task": "span", "payload": {"ledger": str(path), "key": f"k{n % 20}", "seconds": 0.005},
                           "concurrency_key": f"k{n % 20}"} for n in range(2000)])
    # A small batch keeps each runner's claimed jobs (at most about two batches) well under the 40 slots of
    # the 20 keys: with batches of 20 the first runner to start could hold every slot, and a draining runner
    # that finds only held keys has nothing to do and ends, so the work was not shared.
    finish_all([runner(url, config, "--concurrency", "4", "--batch-size", "5") for _ in range(4)])

    spans = ledger(path)
    assert len(spans) == 2000 and len({s["id"] for s in spans}) == 2000  # each job ran once
    by_key: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for span in spans:
        by_key[span["key"]].append(span)
    assert {key: most_at_once(group) <= 2 for key, group in by_key.items()} == {f"k{n}": True for n in range(20)}
    assert len({s["pid"] for s in spans}) >= 2  # the runners shared the work
    assert dict(rows(engine, "SELECT status, COUNT(*) FROM pending_jobs GROUP BY status")) == {"succeeded": 2000}
    assert scalar(engine, "SELECT MAX(attempts) FROM pending_jobs") == 1  # waiting never cost an attempt


def test_four_runners_keep_a_queue_to_its_max_running(database: tuple[str, sa.Engine], tmp_path: Path) -> None:
    url, engine = database
    config = tmp_path / "jobs.toml"
    config.write_text("[queue.default]\nmax_running = 3\n")  # the cap alone: the plain claim, room counted in it
    path = tmp_path / "ledger.jsonl"
    enqueue_many(engine, [{"task": "span", "payload": {"ledger": str(path), "seconds": 0.05}} for _ in range(160)])
    # Two threads and a batch of one: no runner alone runs 3 jobs at once, so the cap binds across runners.
    # They serve (a poll, not `--poll 0`) until every job is done: a draining run that finds the cap full,
    # its slots held by another runner's jobs and unwritten outcomes, ends at once, so under load the first
    # runner to start could drain the queue alone and the test would prove nothing about sharing the cap.
    runners = [runner(url, config, "--concurrency", "2", "--batch-size", "1", poll="0.05") for _ in range(4)]
    deadline = time.monotonic() + 180
    while scalar(engine, "SELECT COUNT(*) FROM pending_jobs WHERE status <> 'succeeded'") > 0:
        assert time.monotonic() < deadline and all(process.poll() is None for process in runners)
        time.sleep(0.1)
    for process in runners:
        process.send_signal(signal.SIGTERM)
    finish_all(runners)

    spans = ledger(path)
    assert len(spans) == 160 and len({s["id"] for s in spans}) == 160  # each job ran once
    assert most_at_once(spans) <= 3
    assert len({s["pid"] for s in spans}) >= 2  # the runners shared the work
    assert dict(rows(engine, "SELECT status, COUNT(*) FROM pending_jobs GROUP BY status")) == {"succeeded": 160}
    assert scalar(engine, "SELECT MAX(attempts) FROM pending_jobs") == 1  # waiting never cost an attempt


def test_a_limit_of_one_per_key_runs_each_keys_jobs_in_order(database: tuple[str, sa.Engine], tmp_path: Path) -> None:
    url, engine = database
    config = tmp_path / "jobs.toml"
    config.write_text("[task.span]\nconcurrency_limit = 1\n")
    path = tmp_path / "ledger.jsonl"
    enqueue_many(engine, [{"task": "span", "payload": {"ledger": str(path), "key": f"user-{n % 10}", "seq": n // 10},
                           "concurrency_key": f"user-{n % 10}"} for n in range(300)])
    finish_all([runner(url, config, "--concurrency", "4", "--batch-size", "10") for _ in range(4)])

    by_key: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for span in ledger(path):
        by_key[span["key"]].append(span)
    for key, spans in by_key.items():
        spans.sort(key=lambda s: s["start"])
        assert [s["seq"] for s in spans] == list(range(30)), key  # in the order they were enqueued
        assert most_at_once(spans) == 1, key


def test_slots_held_by_a_killed_runner_come_back_with_the_rescue(database: tuple[str, sa.Engine],
                                                                tmp_path: Path) -> None:
    url, engine = database
    config = tmp_path / "jobs.toml"
    config.write_text("[task.stall_once]\nconcurrency_limit = 1\n")
    enqueue_many(engine, [{"task": "stall_once", "payload": {"stall": n < 2}, "concurrency_key": f"k{n % 2}"}
                          for n in range(6)])
    doomed = runner(url, config, "--lease", "2", "--concurrency", "4", poll="0.2")
    deadline = time.monotonic() + 60
    while scalar(engine, "SELECT COUNT(*) FROM pending_jobs WHERE status = 'running'") < 2:
        assert time.monotonic() < deadline and doomed.poll() is None
        time.sleep(0.1)
    # Another host finds both keys' slots taken: nothing to claim, although 4 jobs are due.
    busy = runner(url, config)
    out, err = busy.communicate(timeout=60)
    assert busy.returncode == 0 and "claimed 0," in out, (out, err)

    doomed.send_signal(signal.SIGKILL)
    doomed.wait(timeout=30)
    time.sleep(2.5)  # the lease (2 s) runs out with nobody renewing it
    [(out, _)] = finish_all([runner(url, config)])
    assert "rescued 2" in out
    assert dict(rows(engine, "SELECT status, COUNT(*) FROM pending_jobs GROUP BY status")) == {"succeeded": 6}
    assert sorted(r[0] for r in rows(engine, "SELECT attempts FROM pending_jobs")) == [1, 1, 1, 1, 2, 2]


SLACK = 2


def test_a_rate_limit_of_50_per_second_holds_across_four_runners(database: tuple[str, sa.Engine],
                                                                 tmp_path: Path) -> None:
    url, engine = database
    config = tmp_path / "jobs.toml"
    config.write_text('[queue.default]\nrate_limit = "50/s"\n')
    enqueue_many(engine, [{"task": "noop"} for _ in range(2500)])
    finish_all([runner(url, config, "--max-runtime", "30", "--concurrency", "2", poll="0.2") for _ in range(4)],
               timeout=120)

    with engine.connect() as conn:  # every start, by the database clock
        starts = sorted(s.timestamp() for s in conn.execute(sa.text(
            "SELECT started_at FROM pending_jobs WHERE started_at IS NOT NULL")).scalars())
    assert starts, "nothing started"
    # The limit itself: no 1-second window holds more than 50 plus the bucket's burst (5). Four runners keep
    # the bucket empty, so the starts reach that bound exactly; SLACK tokens allow for the stamps' microsecond
    # rounding (a limiter that did not hold, per runner or not at all, overshoots by hundreds).
    right = 0
    busiest = 0
    for left, start in enumerate(starts):
        while right < len(starts) and starts[right] < start + 1.0:
            right += 1
        busiest = max(busiest, right - left)
    assert busiest <= 55 + SLACK
    assert len(starts) <= 50 * (starts[-1] - starts[0]) + 5 + SLACK
    rate = (len(starts) - 1) / (starts[-1] - starts[0])
    print(f"\n{len(starts)} jobs started over {starts[-1] - starts[0]:.1f}s: {rate:.1f}/s (limit 50/s), "
          f"busiest second {busiest}")


def test_three_hosts_serving_enqueue_every_slot_once(database: tuple[str, sa.Engine], tmp_path: Path) -> None:
    url, engine = database
    config = tmp_path / "jobs.toml"
    config.write_text('[schedules.every_second]\nevery = "1s"\ntask = "tick"\n\n'
                      '[schedules.every_two]\nevery = "2s"\ntask = "tick"\ncatch_up = "all"\n')
    finish_all([runner(url, config, "--max-runtime", "12", poll="0.2") for _ in range(3)], timeout=90)

    keys = [r[0] for r in rows(engine, "SELECT idempotency_key FROM pending_jobs")]
    assert len(keys) == len(set(keys))  # exactly once
    for name, step in (("every_second", 1), ("every_two", 2)):
        slots = sorted(int(dt.datetime.fromisoformat(key.split(":", 2)[2].replace("Z", "+00:00")).timestamp())
                       for key in keys if key.startswith(f"schedule:{name}:"))
        assert len(slots) >= 3, keys
        assert slots == list(range(slots[0], slots[-1] + 1, step)), name  # no slot missed, none twice
    results = [r[0] for r in rows(engine, "SELECT result FROM pending_jobs WHERE status = 'succeeded'")]
    assert results and all("slot" in str(result) for result in results)
