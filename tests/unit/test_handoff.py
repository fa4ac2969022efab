"""The host lock and the producer's hand-off: one serving run per host, the next tick's run taking over."""

from __future__ import annotations

import fcntl
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from pending_jobs import handoff
from pending_jobs.context import Context
from pending_jobs.handoff import HostLock, database_key, lock_path
from pending_jobs.registry import Task
from pending_jobs.runner import producer as producer_module
from tests.conftest import cli

from .memory_store import MemoryStore
from .test_producer import noop, producer, tasks, until


def test_one_serves_one_waits_a_third_leaves(tmp_path: Path) -> None:
    path = str(tmp_path / "serve.lock")
    first, second, third = HostLock(path), HostLock(path), HostLock(path)
    assert first.acquire(wait=lambda: True)
    assert not first.successor_waiting()

    took_over = threading.Event()
    waiting = threading.Thread(target=lambda: second.acquire(wait=lambda: True) and took_over.set())
    waiting.start()
    until(first.successor_waiting)  # the second run waits
    assert not third.acquire(wait=lambda: True)  # one serves, one waits: a third leaves at once
    assert not took_over.is_set()

    first.release()
    waiting.join(5)
    assert took_over.is_set()
    assert not second.successor_waiting()  # the waiting slot is free again for the next tick
    second.release()


def test_giving_up_the_wait_frees_the_waiting_slot(tmp_path: Path) -> None:
    path = str(tmp_path / "serve.lock")
    serving, impatient, next_one = HostLock(path), HostLock(path), HostLock(path)
    assert serving.acquire(wait=lambda: True)
    tries = iter(range(3))
    assert not impatient.acquire(wait=lambda: next(tries, None) is not None)
    assert not serving.successor_waiting()
    done = threading.Event()
    threading.Thread(target=lambda: next_one.acquire(wait=lambda: not done.is_set())).start()
    until(serving.successor_waiting)  # the next run waits
    done.set()


def test_a_run_that_meets_the_serving_runs_probe_still_waits(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """`successor_waiting` holds `.next` for a moment; a tick that tried to wait just then gave up."""
    monkeypatch.setattr(handoff, "SLOT_RETRY", 0.5)  # the probe's moment, stretched to 0.05 s, fits in a retry
    path = str(tmp_path / "serve.lock")
    serving, next_one = HostLock(path), HostLock(path)
    assert serving.acquire(wait=lambda: True)
    probe = open(handoff._next_path(path), "ab")  # the probe, caught between its two flock calls
    fcntl.flock(probe, fcntl.LOCK_EX)
    took_over = threading.Event()
    waiting = threading.Thread(target=lambda: next_one.acquire(wait=lambda: True) and took_over.set())
    waiting.start()
    time.sleep(0.05)
    fcntl.flock(probe, fcntl.LOCK_UN)
    until(serving.successor_waiting)  # it did not give up: it waits
    serving.release()
    waiting.join(5)
    probe.close()
    assert took_over.is_set()
    next_one.release()


def test_each_database_and_set_of_queues_has_its_own_lock() -> None:
    assert lock_path("mysql://a/x", ["q"], "on") == lock_path("mysql://a/x", ["q"], "on")
    assert lock_path("mysql://a/x", ["q"], "on") != lock_path("mysql://a/y", ["q"], "on")
    assert lock_path("mysql://a/x", ["q1"], "on") != lock_path("mysql://a/x", ["q2"], "on")


def test_a_run_hands_over_when_the_next_one_is_ready() -> None:
    store = MemoryStore()
    ready = threading.Event()
    p, report = producer(store, tasks(noop=noop), poll=0.02, max_runtime=30)
    p.hand_off = ready.is_set
    threading.Timer(0.2, ready.set).start()
    started = time.monotonic()
    p.run()
    assert report.stopped_by == "handoff" and time.monotonic() - started < 5


def _beside_a_long_job(monkeypatch: Any, concurrency: int) -> tuple[MemoryStore, threading.Event, Any, Any]:
    """A producer (LONG_JOB 0.2 s) whose job 1 runs until the event is set; no-op jobs may be added."""
    monkeypatch.setattr(producer_module, "LONG_JOB", 0.2)
    store = MemoryStore()
    release = threading.Event()

    def long(payload: dict[str, Any], ctx: Context) -> str:
        release.wait(10)
        return "long one done"

    store.add("long")
    p, report = producer(store, {**tasks(noop=noop), "long": Task("long", long)}, poll=0.02, max_runtime=30,
                         concurrency=concurrency)
    return store, release, p, report


def test_a_run_busy_with_a_long_job_keeps_serving_short_ones_until_it_ends(monkeypatch: Any) -> None:
    store, release, p, report = _beside_a_long_job(monkeypatch, concurrency=2)
    tick = time.monotonic() + 0.3
    p.hand_off = lambda: time.monotonic() > tick  # the next tick's run is ready once the long job is long
    short: list[int] = []

    def produce_short_jobs() -> None:
        time.sleep(0.4)  # the long job is long by now
        for _ in range(5):
            short.append(store.add("noop"))
            time.sleep(0.05)
        release.set()

    threading.Thread(target=produce_short_jobs).start()
    p.run()
    assert report.stopped_by == "handoff"
    assert [store.status(job) for job in short] == ["succeeded"] * 5  # served while the long job ran
    assert store.status(1) == "succeeded"


def test_the_default_lock_path_is_the_users_own() -> None:
    # Another user's file in the shared temp directory cannot be opened: each user has a pair.
    name = os.path.basename(lock_path("mysql://a/x", ["q"], "on"))
    assert name.startswith(f"pending-jobs-{os.getuid()}-") and name.endswith(".lock")


def test_a_relative_sqlite_url_locks_the_file_it_reaches(tmp_path: Path, monkeypatch: Any) -> None:
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
    monkeypatch.chdir(tmp_path / "a")
    in_a = lock_path("sqlite:///jobs.sqlite3", [], "on")
    assert in_a == lock_path(f"sqlite:///{tmp_path}/a/jobs.sqlite3", [], "on")  # one file, two spellings
    assert in_a == lock_path("sqlite+pysqlite:///./jobs.sqlite3", [], "on")
    monkeypatch.chdir(tmp_path / "b")
    assert lock_path("sqlite:///jobs.sqlite3", [], "on") != in_a  # two apps, two databases
    assert database_key("sqlite:///:memory:") == "sqlite::memory:"
    assert database_key("sqlite://") == "sqlite:"


def test_spellings_of_one_server_database_share_a_lock() -> None:
    one = lock_path("mysql://root@127.0.0.1/db", [], "on")
    assert one == lock_path("mysql+pymysql://root:secret@127.0.0.1:3306/db", [], "on")
    assert one == lock_path("mariadb+pymysql://root@127.0.0.1/db?charset=utf8mb4", [], "on")
    assert one != lock_path("mysql://root@127.0.0.1/other", [], "on")
    assert one != lock_path("mysql://root@127.0.0.1:3307/db", [], "on")
    assert one != lock_path("postgresql://root@127.0.0.1/db", [], "on")
    assert database_key("postgresql+psycopg://u@DB.example/x") == database_key("postgresql://u@db.example:5432/x")
    assert database_key("mysql://u@/x?unix_socket=/a.sock") != database_key("mysql://u@/x?unix_socket=/b.sock")


@pytest.mark.parametrize("where", ["missing/folder/serve.lock", "/proc/pending-jobs.lock"])
def test_a_lock_file_that_cannot_be_opened_is_a_configuration_error(tmp_path: Path, where: str) -> None:
    path = where if where.startswith("/") else str(tmp_path / where)
    env = {"PENDING_JOBS_DATABASE_URL": f"sqlite:///{tmp_path}/j.sqlite3"}
    assert cli("migrate", env=env).returncode == 0
    done = cli("run", env={**env, "PENDING_JOBS_POLL": "1", "PENDING_JOBS_LOCK_FILE": path,
                           "PENDING_JOBS_MAX_RUNTIME": "5"})
    assert done.returncode == 2, done.stderr
    assert f"cannot open the lock file {path}" in done.stderr and "PENDING_JOBS_LOCK_FILE" in done.stderr
    assert "Traceback" not in done.stderr and "unexpected error" not in done.stderr


def test_acquire_opens_both_lock_files_before_serving(tmp_path: Path) -> None:
    (tmp_path / "serve.next").mkdir()  # the `.next` file cannot be opened: known before serving, not later
    with pytest.raises(IsADirectoryError):
        HostLock(str(tmp_path / "serve.lock")).acquire(wait=lambda: True)


@pytest.mark.parametrize("removed", [("lock",), ("lock", "next")])
def test_a_serving_run_whose_lock_file_was_removed_hands_over(tmp_path: Path, removed: tuple[str, ...]) -> None:
    """A /tmp cleaner (or a person) removes the lock files while a run serves: the next tick's run locks a
    new file and serves at once, so the old one must stop claiming, not serve beside it until max_runtime."""
    path = str(tmp_path / "serve.lock")
    serving = HostLock(path)
    assert serving.acquire(wait=lambda: True)
    assert not serving.successor_waiting()
    for name in removed:
        os.unlink(path if name == "lock" else str(tmp_path / "serve.next"))
    next_tick = HostLock(path)
    assert next_tick.acquire(wait=lambda: False)  # a new file: it serves without waiting
    assert serving.successor_waiting()  # so the old run hands over
    serving.release()
    assert not next_tick.successor_waiting()
    third = HostLock(path)
    took_over = threading.Event()
    threading.Thread(target=lambda: third.acquire(wait=lambda: True) and took_over.set(), daemon=True).start()
    until(next_tick.successor_waiting)  # and the new serving run still sees the next tick wait
    next_tick.release()
    until(took_over.is_set)
    third.release()


def test_the_default_lock_path_does_not_follow_tmpdir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # cron starts runs with no TMPDIR; a run started by hand from a shell that sets one (pam_tmpdir) locked
    # a file of its own and served beside cron's run on the same database.
    monkeypatch.delenv("TMPDIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", None)
    from_cron = lock_path("mysql://a/x", [], "on")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)
    assert lock_path("mysql://a/x", [], "on") == from_cron


def test_jobs_are_not_held_behind_workers_all_busy_with_long_jobs(monkeypatch: Any) -> None:
    # Claimed ahead behind long jobs, due jobs stayed `running` (attempt counted) until a long job ended, out
    # of reach of another host's run and of `serve`'s own free moments: a 5-minute job held them 5 minutes.
    store, release, p, _ = _beside_a_long_job(monkeypatch, concurrency=1)
    serving = threading.Thread(target=p.run)
    serving.start()
    try:
        until(lambda: store.status(1) == "running")
        time.sleep(0.4)  # the long job is long now
        short = [store.add("noop") for _ in range(3)]
        time.sleep(0.5)
        assert [store.status(job) for job in short] == ["pending"] * 3  # free for any other run to claim
    finally:
        release.set()
        p.signal()
        serving.join(10)
    assert store.status(1) == "succeeded"


def test_a_run_of_another_database_does_not_take_over_a_shared_lock_file(tmp_path: Path) -> None:
    # One lock_file given to two databases' cron lines: each tick's second run made the first hand over, so
    # one database was served for a moment a minute, and nothing said so.
    path = str(tmp_path / "shared.lock")
    first = HostLock(path, handoff.lock_key("sqlite:////srv/a.db", [], "on"))
    assert first.acquire(wait=lambda: True)
    other = HostLock(path, handoff.lock_key("sqlite:////srv/b.db", [], "on"))
    with pytest.raises(handoff.SharedLock):
        other.acquire(wait=lambda: True)
    assert not first.successor_waiting()  # it did not wait to take over
    same = HostLock(path, handoff.lock_key("sqlite:////srv/a.db", [], "on"))
    took_over = threading.Event()
    waiting = threading.Thread(target=lambda: same.acquire(wait=lambda: True) and took_over.set())
    waiting.start()
    until(first.successor_waiting)  # the next tick of the same database waits as ever
    first.release()
    waiting.join(5)
    assert took_over.is_set()
    same.release()


def test_a_run_of_the_same_database_with_other_queues_takes_over_a_shared_lock_file(tmp_path: Path) -> None:
    # A crontab line changed (a --queue added): refused, the new run left the old one serving its old queues
    # until --max-runtime (an hour), and exited 2 every minute.
    from pending_jobs import config
    from pending_jobs.cli import run as run_cli
    path = str(tmp_path / "shared.lock")
    base = config.load({}, environ={}).replace(database_url="sqlite:////srv/a.db", lock_file=path)
    first = run_cli._lock(base.replace(queues=("a",)), None)
    changed = run_cli._lock(base.replace(queues=("a", "b"), callbacks="off"), None)
    assert first is not None and changed is not None
    assert first.acquire(wait=lambda: True)
    took_over = threading.Event()
    waiting = threading.Thread(target=lambda: changed.acquire(wait=lambda: True) and took_over.set())
    waiting.start()
    until(first.successor_waiting)
    first.release()
    waiting.join(5)
    assert took_over.is_set()
    changed.release()


def test_two_schemas_of_one_postgresql_database_have_two_locks() -> None:
    # The engine applies a URL's options (search_path): one lock for both schemas made their runs take turns.
    shop = lock_path("postgresql://app@db/shared?options=-csearch_path%3Dshop", [], "on")
    blog = lock_path("postgresql://app@db/shared?options=-csearch_path%3Dblog", [], "on")
    assert shop != blog
    assert lock_path("postgresql://app@db/shared", [], "on") == \
        lock_path("postgresql+psycopg://app:pw@DB/shared", [], "on")
