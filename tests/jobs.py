"""Handlers the tests register (PENDING_JOBS_TASKS=tests.jobs in subprocesses)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from pending_jobs import Context, Fail, Retry, task

LEDGER_DDL = "CREATE TABLE IF NOT EXISTS ledger (job_id BIGINT PRIMARY KEY, note VARCHAR(64))"


@task("noop")
def noop(payload: dict[str, Any], ctx: Context) -> None:
    return None


@task("echo")
def echo(payload: dict[str, Any], ctx: Context) -> dict[str, Any]:
    return {"payload": payload, "attempt": ctx.attempt, "job_id": ctx.job_id}


@task("boom")
def boom(payload: dict[str, Any], ctx: Context) -> None:
    raise RuntimeError(payload.get("message", "boom"))


@task("flaky")
def flaky(payload: dict[str, Any], ctx: Context) -> str:
    """Fails until attempt `succeed_on`."""
    if ctx.attempt < int(payload.get("succeed_on", 2)):
        raise ValueError(f"attempt {ctx.attempt} fails")
    return "ok"


@task("retry_later")
def retry_later(payload: dict[str, Any], ctx: Context) -> None:
    raise Retry(delay=float(payload.get("delay", 3600)), reason="not yet")


@task("fail_now")
def fail_now(payload: dict[str, Any], ctx: Context) -> None:
    raise Fail("the input can never work")


@task("sleep")
def sleep(payload: dict[str, Any], ctx: Context) -> float:
    seconds = float(payload.get("seconds", 1))
    time.sleep(seconds)
    return seconds


@task("short_timeout", timeout=0.5)
def short_timeout(payload: dict[str, Any], ctx: Context) -> None:
    time.sleep(float(payload.get("seconds", 5)))


@task("ledger")
def ledger(payload: dict[str, Any], ctx: Context) -> int:
    """Records its job id through ctx's connection: a unique key turns a double run into an error."""
    ctx.connection.execute(sa.text("INSERT INTO ledger (job_id, note) VALUES (:id, :note)"),
                           {"id": ctx.job_id, "note": str(os.getpid())})
    if payload.get("sleep"):
        time.sleep(float(payload["sleep"]))
    return ctx.job_id


@task("ledger_then_raise")
def ledger_then_raise(payload: dict[str, Any], ctx: Context) -> None:
    ctx.connection.execute(sa.text("INSERT INTO ledger (job_id, note) VALUES (:id, 'raised')"), {"id": ctx.job_id})
    raise RuntimeError("after the write")


@task("record_attempt")
def record_attempt(payload: dict[str, Any], ctx: Context) -> dict[str, Any]:
    return {"attempt": ctx.attempt, "deadline": ctx.deadline is not None}


# -- fault-suite handlers (tests/faults) -----------------------------------------------------------


@task("stall_first")
def stall_first(payload: dict[str, Any], ctx: Context) -> dict[str, Any]:
    """Sleeps `seconds` on attempt 1 only, then (with `ledger`) records its job id through ctx.connection."""
    if ctx.attempt == 1:
        time.sleep(float(payload.get("seconds", 5)))
    if payload.get("ledger"):
        ctx.connection.execute(sa.text("INSERT INTO ledger (job_id, note) VALUES (:id, :note)"),
                               {"id": ctx.job_id, "note": str(os.getpid())})
    return {"attempt": ctx.attempt, "pid": os.getpid()}


@task("wait_for_go")
def wait_for_go(payload: dict[str, Any], ctx: Context) -> None:
    """Returns once the file `go` exists (60 s at most), so several jobs finish together when the test says
    (a wall-clock time fixed in advance could pass before a loaded machine had the test ready)."""
    deadline = time.monotonic() + 60
    while not os.path.exists(payload["go"]) and time.monotonic() < deadline:
        time.sleep(0.01)
    if payload.get("raise"):
        raise RuntimeError("asked to fail")


@task("exit_now", backoff=lambda attempt: 0.0)
def exit_now(payload: dict[str, Any], ctx: Context) -> None:
    """Kills the whole runner process (thread isolation): only rescue after lease expiry settles it."""
    time.sleep(float(payload.get("after", 0)))
    os._exit(3)


@task("exit_isolated", isolation="process", backoff=lambda attempt: 0.0)
def exit_isolated(payload: dict[str, Any], ctx: Any) -> None:
    os._exit(3)


@task("hog_isolated", isolation="process", memory_limit=512 * 2**20, backoff=lambda attempt: 0.0)
def hog_isolated(payload: dict[str, Any], ctx: Any) -> None:
    """Allocates until the address-space limit stops it."""
    chunks = []
    while True:
        chunks.append(bytearray(32 * 2**20))


@task("kill_isolated", isolation="process", backoff=lambda attempt: 0.0)
def kill_isolated(payload: dict[str, Any], ctx: Any) -> None:
    """What the OOM killer does to a process."""
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


@task("echo_isolated", isolation="process")
def echo_isolated(payload: dict[str, Any], ctx: Any) -> dict[str, Any]:
    return {"payload": payload, "attempt": ctx.attempt, "pid": os.getpid()}


@task("deep_isolated", isolation="process")
def deep_isolated(payload: dict[str, Any], ctx: Any) -> list[Any]:
    result: list[Any] = []
    for _ in range(payload["depth"]):
        result = [result]
    return result


@task("connection_isolated", isolation="process", backoff=lambda attempt: 0.0)
def connection_isolated(payload: dict[str, Any], ctx: Any) -> None:
    ctx.connection  # noqa: B018 - raises: not available in a child


@task("hang_isolated", isolation="process", timeout=1.0, backoff=lambda attempt: 0.0)
def hang_isolated(payload: dict[str, Any], ctx: Any) -> None:
    time.sleep(3600)


@task("nasty_error")
def nasty_error(payload: dict[str, Any], ctx: Context) -> None:
    """An exception message no database column would take as is: NUL, a lone surrogate, 200 kB."""
    raise RuntimeError("nul\x00 surrogate\ud800 " + "x" * 200_000)


@task("kill_own_connection_then_raise")
def kill_own_connection_then_raise(payload: dict[str, Any], ctx: Context) -> None:
    """Writes through ctx, has the server kill that connection, then fails: the rollback finds it dead."""
    conn = ctx.connection
    conn.execute(sa.text("INSERT INTO ledger (job_id, note) VALUES (:id, 'doomed')"), {"id": ctx.job_id})
    if conn.dialect.name in ("mysql", "mariadb"):
        kill = f"KILL {conn.execute(sa.text('SELECT CONNECTION_ID()')).scalar()}"
    else:
        kill = f"SELECT pg_terminate_backend({conn.execute(sa.text('SELECT pg_backend_pid()')).scalar()})"
    with conn.engine.connect() as other:
        other.execute(sa.text(kill))
    raise RuntimeError("failed after losing its connection")


# -- architecture defects (tests/contract/test_run_outcomes.py) --------------------------------------


def _mark_cancel_requested(url: str, job_id: int) -> None:
    """What `pending-jobs cancel` does to a running job, from outside the handler's transaction."""
    from pending_jobs.store import create_engine

    engine = create_engine(url, pool_size=1)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE pending_jobs SET cancel_requested = :t WHERE id = :id"),
                         {"t": True, "id": job_id})
    finally:
        engine.dispose()


@task("cancelled_then_raise")
def cancelled_then_raise(payload: dict[str, Any], ctx: Context) -> None:
    """An operator cancels the job while it runs; the handler sees it and gives up."""
    _mark_cancel_requested(payload["url"], ctx.job_id)
    if ctx.cancel_requested():
        raise RuntimeError("stopping: cancel requested")


@task("cancel_a_waiting_job")
def cancel_a_waiting_job(payload: dict[str, Any], ctx: Context) -> dict[str, str]:
    """Cancels, as `pending-jobs cancel` does, another job of its claim that waits for the run's one worker,
    then stays busy past the producer's next look; returns what the cancel said ('requested': running)."""
    from pending_jobs.store import OpsStore, create_engine, open_store

    engine = create_engine(payload["url"], pool_size=1)
    try:
        said = OpsStore(open_store(engine)).cancel(int(payload["job_id"]))
    finally:
        engine.dispose()
    time.sleep(float(payload.get("seconds", 1.5)))
    return {"cancel": said}


@task("cancel_check_isolated", isolation="process")
def cancel_check_isolated(payload: dict[str, Any], ctx: Context) -> dict[str, bool]:
    before = ctx.cancel_requested()
    _mark_cancel_requested(payload["url"], ctx.job_id)
    return {"before": before, "after": ctx.cancel_requested()}


@task("duplicate_in_handler")
def duplicate_in_handler(payload: dict[str, Any], ctx: Context) -> None:
    """An IntegrityError raised deep inside SQLAlchemy and the driver, from a handler's own code."""
    for _ in range(2):
        ctx.connection.execute(sa.text("INSERT INTO ledger (job_id, note) VALUES (:id, 'dup')"), {"id": ctx.job_id})


# -- poison (tests/contract/test_poison.py): what a handler may do that must not stop a run ---------


@task("retry_with")
def retry_with(payload: dict[str, Any], ctx: Context) -> None:
    """Asks for a retry after whatever `delay` says: 1e12, "inf", "soon"."""
    delay = payload["delay"]
    raise Retry(delay=float(delay) if delay in ("inf", "-inf", "nan") else delay)


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ itself raises")


@task("unprintable")
def unprintable(payload: dict[str, Any], ctx: Context) -> None:
    raise Unprintable()


def _broken_backoff(attempt: int) -> float:
    raise ZeroDivisionError("the backoff function is broken")


@task("broken_backoff", backoff=_broken_backoff)
def broken_backoff(payload: dict[str, Any], ctx: Context) -> None:
    raise RuntimeError("fails, and its backoff fails too")


@task("closes_connection")
def closes_connection(payload: dict[str, Any], ctx: Context) -> str:
    ctx.connection.execute(sa.text("SELECT 1"))
    ctx.connection.close()
    return "closed my own connection"


@task("invalidates_connection")
def invalidates_connection(payload: dict[str, Any], ctx: Context) -> str:
    ctx.connection.execute(sa.text("SELECT 1"))
    ctx.connection.invalidate()
    return "invalidated my own connection"


@task("lone_surrogate_result")
def lone_surrogate_result(payload: dict[str, Any], ctx: Context) -> str:
    return "half a pair: \ud800"


@task("leaves_a_thread")
def leaves_a_thread(payload: dict[str, Any], ctx: Context) -> str:
    """Starts a non-daemon thread that outlives the run."""
    import threading

    threading.Thread(target=time.sleep, args=(3600,), name="left-behind", daemon=False).start()
    return "left a thread"


@task("leaves_an_executor_job")
def leaves_an_executor_job(payload: dict[str, Any], ctx: Context) -> str:
    """Leaves a job running on a ThreadPoolExecutor (its workers are daemon threads that exit joins)."""
    from concurrent.futures import ThreadPoolExecutor

    ThreadPoolExecutor(max_workers=1, thread_name_prefix="left-executor").submit(time.sleep, 3600)
    return "left an executor job"


@task("isolated_ignores_sigterm", isolation="process")
def isolated_ignores_sigterm(payload: dict[str, Any], ctx: Context) -> str:
    """Returns, but its process would not end: it ignores SIGTERM and keeps a non-daemon thread."""
    import signal
    import threading

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    threading.Thread(target=time.sleep, args=(3600,), daemon=False).start()
    print("a line on stdout, for the job's log")
    return "done"


@task("holds_connection_then_hangs", timeout=1.0)
def holds_connection_then_hangs(payload: dict[str, Any], ctx: Context) -> None:
    """Writes through ctx.connection (SQLite: takes the one write lock), then hangs past its timeout."""
    ctx.connection.execute(sa.text("INSERT INTO ledger (job_id, note) VALUES (:id, 'hung')"), {"id": ctx.job_id})
    time.sleep(float(payload.get("seconds", 30)))


SPIN = "WITH RECURSIVE spin(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM spin) SELECT COUNT(*) FROM spin"


@task("spins_in_sql", timeout=1.0)
def spins_in_sql(payload: dict[str, Any], ctx: Context) -> None:
    """Writes through ctx.connection, then runs a statement that never ends, and another whenever one fails:
    the thread is inside the database (SQLite: inside the library) when its timeout comes."""
    ctx.connection.execute(sa.text("INSERT INTO ledger (job_id, note) VALUES (:id, 'spun')"), {"id": ctx.job_id})
    ends = time.monotonic() + float(payload.get("seconds", 20))
    while time.monotonic() < ends:
        try:
            ctx.connection.execute(sa.text(SPIN)).scalar()
        except Exception:
            time.sleep(0.01)


@task("waits_in_the_server", timeout=1.0)
def waits_in_the_server(payload: dict[str, Any], ctx: Context) -> None:
    """Writes through ctx.connection, then waits in a statement the server runs for ten minutes: the thread is
    blocked in the driver, reading the answer, when its timeout comes."""
    ctx.connection.execute(sa.text("INSERT INTO ledger (job_id, note) VALUES (:id, 'waited')"), {"id": ctx.job_id})
    sleep = "SELECT pg_sleep(600)" if ctx.connection.dialect.name == "postgresql" else "SELECT SLEEP(600)"
    ctx.connection.execute(sa.text(sleep))


@task("opens_connection_after_timeout", timeout=1.0)
def opens_connection_after_timeout(payload: dict[str, Any], ctx: Context) -> None:
    """Sleeps past its timeout, then asks for ctx.connection (and would hold SQLite's write lock in a statement
    that never ends); what asking raised goes to the file `report`."""
    time.sleep(float(payload.get("before", 1.5)))
    try:
        ctx.connection.execute(sa.text("INSERT INTO ledger (job_id, note) VALUES (:id, 'late')"), {"id": ctx.job_id})
        ctx.connection.execute(sa.text(SPIN)).scalar()
    except Exception as error:
        Path(payload["report"]).write_text(f"{type(error).__name__}: {error}")
        raise


# -- scale-suite handlers (tests/scale) ------------------------------------------------------------

RUNLOG_ENV = "PENDING_JOBS_TEST_RUNLOG"


@task("scale_ledger")
def scale_ledger(payload: dict[str, Any], ctx: Context) -> None:
    """Every execution appends "job_id pid" to the file $PENDING_JOBS_TEST_RUNLOG (an effect outside the
    database, which a re-run repeats); the job id goes into the ledger through ctx.connection (exactly once).

    `stall`: seconds to sleep on attempt 1 only; `ledger_first`: write the ledger row before that sleep, so
    the handler's transaction is open (holding the row's lock) while it sleeps; `sleep`: seconds on every attempt.
    """
    path = os.environ.get(RUNLOG_ENV)
    if path:
        with open(path, "a") as log:
            log.write(f"{ctx.job_id} {os.getpid()}\n")
    write = sa.text("INSERT INTO ledger (job_id, note) VALUES (:id, :note)")
    if payload.get("ledger_first"):
        ctx.connection.execute(write, {"id": ctx.job_id, "note": str(os.getpid())})
    if ctx.attempt == 1 and payload.get("stall"):
        time.sleep(float(payload["stall"]))
    if payload.get("sleep"):
        time.sleep(float(payload["sleep"]))
    if not payload.get("ledger_first"):
        ctx.connection.execute(write, {"id": ctx.job_id, "note": str(os.getpid())})


@task("spoils_session")
def spoils_session(payload: dict[str, Any], ctx: Context) -> str:
    """Changes its connection's session as no handler should (LOCK TABLES, a read-only session), then
    succeeds or raises: the connection must not serve the run's next claim that way."""
    ctx.connection.execute(sa.text(payload["statement"]))
    if payload.get("fail"):
        raise RuntimeError("failed after changing its session")
    return "changed its session"
