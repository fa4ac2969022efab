"""The examples run: the Flask producer, the PHP producer and the status page SQL, on real databases."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path
from types import ModuleType

import pytest
import sqlalchemy as sa

from tests.conftest import ROOT, cli, rows
from tests.system.php import pdo_env, php_binary

EXAMPLES = ROOT / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_demo_tasks(db_url: str) -> None:
    """`pending-jobs run` with the examples' handlers (examples/demo_tasks.py)."""
    ran = cli("run", env={"PENDING_JOBS_DATABASE_URL": db_url, "PENDING_JOBS_TASKS": "demo_tasks",
                          "PYTHONPATH": f"{ROOT}:{EXAMPLES}"})
    assert (ran.returncode, ran.stderr) == (0, "")


@pytest.mark.parametrize("backend", ["sqlite", "mysql"], indirect=True)
def test_flask_producer_enqueues_in_the_request_transaction(db_url: str, engine: sa.Engine) -> None:
    pytest.importorskip("flask")
    app = load("flask_producer").create_app(db_url)
    client = app.test_client()

    created = client.post("/signup", json={"email": "john@example.com", "accept_terms": True})
    assert created.status_code == 201
    job_id = created.get_json()["job_id"]
    refused = client.post("/signup", json={"email": "jane@example.com"})  # fails after the enqueue
    assert refused.status_code == 400
    again = client.post("/signup", json={"email": "john@example.com", "accept_terms": True})
    assert again.status_code == 409 and b"already signed up" in again.data  # was a 500 (IntegrityError)
    assert client.post("/signup", json={"accept_terms": True}).status_code == 400
    assert rows(engine, "SELECT email FROM users") == [("john@example.com",)]
    assert rows(engine, "SELECT id, task, queue FROM pending_jobs") == [(job_id, "send_welcome_email", "mail")]

    run_demo_tasks(db_url)
    assert rows(engine, "SELECT status FROM pending_jobs") == [("succeeded",)]


@pytest.mark.parametrize("backend", ["sqlite", "mysql", "postgresql"], indirect=True)
def test_php_producer_inserts_a_job_the_runner_runs(backend: str, db_url: str, engine: sa.Engine) -> None:
    php = php_binary(backend)
    pdo = pdo_env(db_url)

    def produce(email: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([php, str(EXAMPLES / "producer.php"), pdo["PENDING_JOBS_PDO_DSN"],
                               pdo["PENDING_JOBS_PDO_USER"], pdo["PENDING_JOBS_PDO_PASSWORD"], email],
                              capture_output=True, text=True, timeout=60)

    first = produce("john@example.com")
    assert first.returncode == 0, first.stderr
    job_id = int(first.stdout)
    duplicate = produce("john@example.com")  # the idempotency key: the first job's id, no error
    assert (duplicate.returncode, duplicate.stdout, duplicate.stderr) == (0, first.stdout, "")

    run_demo_tasks(db_url)
    assert rows(engine, "SELECT id, status, attempts FROM pending_jobs") == [(job_id, "succeeded", 1)]
    with engine.connect() as conn:
        result = conn.execute(sa.text("SELECT result FROM pending_jobs")).scalar()
    assert "john@example.com" in str(result)


def statements(path: Path) -> list[str]:
    lines = [line for line in path.read_text().splitlines() if not line.lstrip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


@pytest.mark.parametrize("backend", ["sqlite", "mysql", "postgresql"], indirect=True)
def test_status_page_queries_run_on_every_database(db_url: str, engine: sa.Engine) -> None:
    import pending_jobs

    with engine.begin() as conn:
        pending_jobs.enqueue(conn, "echo", {}, queue="a")
        failed = pending_jobs.enqueue(conn, "fail_now", {}, queue="a")
    assert cli("run", env={"PENDING_JOBS_DATABASE_URL": db_url}).returncode == 0

    queries = statements(EXAMPLES / "status_page.sql")
    with engine.connect() as conn:
        results = [conn.execute(sa.text(sql)).all() for sql in queries]
    summary, runs, failures, callbacks = results
    assert [tuple(r[:3]) for r in summary] == [("a", "failed", 1), ("a", "succeeded", 1)]
    assert len(runs) == 1 and runs[0].claimed == 2 and runs[0].exit_code == 0
    assert [r.id for r in failures] == [failed] and "Fail: the input can never work" in failures[0].last_error
    assert callbacks == []
