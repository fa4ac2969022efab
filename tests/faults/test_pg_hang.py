"""A PostgreSQL server that hangs while its host still answers (its processes SIGSTOPped, as a frozen VM whose
kernel still ACKs): the run ends with exit 75 within its bound (store/hang.py), so does the next tick's, and
after the server resumes a new run serves every job exactly once. A handler's own query longer than the bound,
and a claim waiting on a lock longer than it, are not cut: the server answers.

Each test starts a PostgreSQL cluster of its own (initdb in a temporary folder, as the postgres user when run
as root), so stopping it touches nothing else; it is killed in a `finally` whatever happens.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import ROOT, free_port
from tests.faults.conftest import wait_for

PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)), None)
BOUND = 2.0  # the runner's hang bound in these tests (hang.HUNG_AFTER, 120 s in production)
# The bound, the probe's wait, then the exit path: the run must be gone well before this.
EXIT_WITHIN = 30.0
TASKS = textwrap.dedent("""
    import os
    import time
    import sqlalchemy as sa
    from pending_jobs import task

    def _note(job_id):
        with open(os.environ["HANG_LEDGER"], "a") as ledger:
            ledger.write(f"{job_id}\\n")

    @task("note")
    def note(payload, ctx):
        _note(ctx.job_id)

    @task("first_long")
    def first_long(payload, ctx):
        if ctx.attempt == 1:
            time.sleep(120)  # still running when the server hangs: its run dies, its lease expires
        _note(ctx.job_id)

    @task("long_query")
    def long_query(payload, ctx):
        ctx.connection.execute(sa.text("SELECT pg_sleep(:s)"), {"s": payload["seconds"]})
        _note(ctx.job_id)
""")
# The runner with a bound of seconds instead of minutes, set in its own process before anything runs. (Without
# store/hang.py, a version with no bound, the runner runs as it is: it hangs, and the test fails on its wait.)
RUNNER = textwrap.dedent("""
    import sys
    bound = float(sys.argv.pop(1))
    try:
        from pending_jobs.store import hang
        hang.HUNG_AFTER = hang.PROBE_WAIT = bound
    except ImportError:
        pass
    from pending_jobs.cli import entry
    sys.argv[0] = "pending-jobs"
    entry()
""")

pytestmark = pytest.mark.skipif(PG_BIN is None, reason="no PostgreSQL server binaries")


class Cluster:
    """A throwaway PostgreSQL cluster on a free port."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.data = base / "data"
        self.port = free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _as_owner(self, *argv: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else list(argv)

    def start(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.base, "postgres")
        subprocess.run(self._as_owner(f"{PG_BIN}/initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres",
                                      "--no-sync"), check=True, capture_output=True, timeout=120)
        subprocess.run(self._as_owner(f"{PG_BIN}/pg_ctl", "-D", str(self.data), "-l", str(self.base / "log"), "-w",
                                      "-o", f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 "
                                            "-c fsync=off", "start"), check=True, capture_output=True, timeout=60)

    def pids(self) -> list[int]:
        """The postmaster and every process it started."""
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        children = subprocess.run(["pgrep", "-P", str(postmaster)], capture_output=True, text=True).stdout.split()
        return [postmaster, *map(int, children)]

    def signal_all(self, signum: int) -> None:
        for pid in self.pids():
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        if not (self.data / "postmaster.pid").exists():
            return
        try:
            pids = self.pids()
        except (OSError, ValueError):
            return
        for pid in pids:
            for signum in (signal.SIGCONT, signal.SIGKILL):
                try:
                    os.kill(pid, signum)
                except ProcessLookupError:
                    pass


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    server = Cluster(Path(f"/tmp/pj-pg-hang-{os.getpid()}-{free_port()}"))
    try:
        server.start()
        env = {**os.environ, "PENDING_JOBS_DATABASE_URL": server.url}
        subprocess.run([sys.executable, "-c", "from pending_jobs.cli import entry; entry()", "migrate"], env=env,
                       check=True, capture_output=True, timeout=120, cwd=ROOT)
        yield server
    finally:
        server.kill()
        shutil.rmtree(server.base, ignore_errors=True)


def _env(cluster: Cluster, tmp_path: Path) -> dict[str, str]:
    (tmp_path / "hang_tasks.py").write_text(TASKS)
    return {**os.environ, "PENDING_JOBS_DATABASE_URL": cluster.url, "PENDING_JOBS_TASKS": "hang_tasks",
            "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}", "HANG_LEDGER": str(tmp_path / "ledger"),
            "PENDING_JOBS_LOCK_FILE": str(tmp_path / "serve.lock")}


def _runner(env: dict[str, str], *flags: str, bound: float = BOUND) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", RUNNER, str(bound), "run", *flags], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _enqueue(engine: sa.Engine, task: str, count: int, payload: str = "{}") -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO pending_jobs (task, payload) SELECT :task, CAST(:payload AS jsonb) "
                             "FROM generate_series(1, :count)"), {"task": task, "payload": payload, "count": count})


def _statuses(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {str(s): int(n) for s, n in conn.execute(sa.text(
            "SELECT status, count(*) FROM pending_jobs GROUP BY status"))}


def _exit_code(proc: subprocess.Popen[str], within: float, what: str) -> tuple[int, str]:
    try:
        output, _ = proc.communicate(timeout=within)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        pytest.fail(f"{what} still running {within:g}s later (held by the hung server); its output:\n{output}")
    return proc.returncode, output


@pytest.mark.slow
def test_hung_server_ends_the_serving_run_and_its_successor_with_75_then_a_new_run_serves_each_job_once(
        cluster: Cluster, tmp_path: Path) -> None:
    env = _env(cluster, tmp_path)
    engine = sa.create_engine(cluster.url, poolclass=sa.pool.NullPool)
    serving = waiting = None
    try:
        _enqueue(engine, "note", 20)
        _enqueue(engine, "first_long", 1)
        serving = _runner(env, "--poll", "0.2", "--max-runtime", "600", "--lease", "3")
        wait_for(lambda: _statuses(engine) == {"succeeded": 20, "running": 1}, 60,
                 "the serving run to run the first 20 jobs and start the long one")
        cluster.signal_all(signal.SIGSTOP)  # the server hangs; its host's kernel still answers
        # The next cron tick meets the hung server at once (it could not even wait to take over before).
        waiting = _runner(env, "--poll", "0.2", "--max-runtime", "600")
        code, output = _exit_code(serving, EXIT_WITHIN, "the serving run")
        assert code == 75, output
        assert "database unavailable: the database has not answered" in output, output
        code, output = _exit_code(waiting, EXIT_WITHIN, "the next tick's run")
        assert code == 75, output
    finally:
        cluster.signal_all(signal.SIGCONT)
        for proc in (serving, waiting):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    _enqueue(engine, "note", 20)
    # A serving run takes the host lock (no stuck run holds it), rescues the long job (its lease expired while
    # the server hung) and runs it again, and serves the new jobs: each job once to its end.
    after = _runner(env, "--poll", "0.2", "--max-runtime", "5")
    code, output = _exit_code(after, 60, "the serving run after the server resumed")
    assert code == 0, output
    assert _statuses(engine) == {"succeeded": 41}, output
    ran = (tmp_path / "ledger").read_text().split()
    assert len(ran) == 41 and len(set(ran)) == 41, "a job was lost or run twice"
    engine.dispose()


@pytest.mark.slow
def test_a_handlers_long_query_and_a_claim_waiting_on_a_lock_outlast_the_bound(
        cluster: Cluster, tmp_path: Path) -> None:
    env = _env(cluster, tmp_path)
    engine = sa.create_engine(cluster.url, poolclass=sa.pool.NullPool)
    bound = 1.0
    _enqueue(engine, "long_query", 1, '{"seconds": 5}')  # five bounds long, on the run's own pool
    code, output = _exit_code(_runner(env, "--drain", bound=bound), 60, "the run of a long query")
    assert code == 0, output
    assert _statuses(engine) == {"succeeded": 1}, output

    # The run's own claim waits behind a lock another session holds for five bounds: the server answers.
    _enqueue(engine, "note", 3)
    locked = threading.Event()

    def hold_lock() -> None:
        with engine.begin() as conn:
            conn.execute(sa.text("LOCK TABLE pending_jobs IN ACCESS EXCLUSIVE MODE"))
            locked.set()
            time.sleep(5 * bound)

    holder = threading.Thread(target=hold_lock)
    holder.start()
    assert locked.wait(30)
    code, output = _exit_code(_runner(env, "--drain", bound=bound), 60, "the run behind a lock")
    holder.join()
    assert code == 0, output
    assert "the database answers, so it goes on waiting" in output, output
    assert _statuses(engine) == {"succeeded": 4}, output
    engine.dispose()


@pytest.mark.slow
def test_after_a_failover_the_frozen_old_server_is_asked_not_the_new_one(cluster: Cluster, tmp_path: Path) -> None:
    """A URL naming two servers (old primary first): the run's connections are on the old one. It freezes; a new
    connection by the URL would reach the new one, which answers, so the watch asks the old one's own address."""
    new = Cluster(Path(f"{cluster.base}-new"))
    run = None
    try:
        new.start()
        url = (f"postgresql+psycopg://postgres@/postgres?host=127.0.0.1:{cluster.port}"
               f"&host=127.0.0.1:{new.port}")
        env = {**_env(cluster, tmp_path), "PENDING_JOBS_DATABASE_URL": url}
        engine = sa.create_engine(cluster.url, poolclass=sa.pool.NullPool)
        _enqueue(engine, "note", 5)
        run = _runner(env, "--poll", "0.2", "--max-runtime", "600")
        wait_for(lambda: _statuses(engine) == {"succeeded": 5}, 60, "the run to serve on the old primary")
        engine.dispose()
        cluster.signal_all(signal.SIGSTOP)
        code, output = _exit_code(run, EXIT_WITHIN, "the run on the frozen old primary")
        assert code == 75, output
        assert "the database has not answered" in output, output
    finally:
        cluster.signal_all(signal.SIGCONT)
        if run is not None and run.poll() is None:
            run.kill()
            run.wait()
        new.kill()
        shutil.rmtree(new.base, ignore_errors=True)
