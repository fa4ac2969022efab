"""`make demo`: the whole life of a few jobs on a local SQLite database, with the real command.

Part 1 (Python handlers): creates .demo/, migrates, starts a callback receiver on 127.0.0.1, enqueues
sample jobs (one that fails once and is retried, one scheduled for later, one with a callback), runs
`pending-jobs run --drain`, and prints `pending-jobs status` and the rows.

Part 2 (no Python written by you): a PHP signup script inserts a `save_user` job with a callback URL;
an `sql` task declared in the config inserts the user; the signed callback carries the new id to a PHP
receiver, which verifies it and prints it. Without `php` on the machine, the same flow runs with the
producer's plain SQL INSERT and a receiver in Python.
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".demo"
SECRET = "whsec_" + base64.b64encode(b"pending-jobs demo secret 32 byte").decode()
received: list[dict[str, Any]] = []


class Receiver(http.server.BaseHTTPRequestHandler):
    """The producer's endpoint: checks the Standard Webhooks signature and records the event."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        try:
            from standardwebhooks import Webhook

            Webhook(SECRET).verify(body, dict(self.headers))
            verified = "signature verified"
        except ImportError:
            verified = "unverified (standardwebhooks not installed)"
        except Exception as error:
            verified = f"BAD SIGNATURE: {error}"
        received.append({"event": json.loads(body), "check": verified, "id": self.headers.get("webhook-id")})
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def pending_jobs(*args: str, env: dict[str, str]) -> str:
    """Run the real command, as cron or a person would."""
    result = subprocess.run([sys.executable, "-m", "pending_jobs", *args], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"pending-jobs {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result.stdout


def main() -> None:
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    callback = f"http://127.0.0.1:{server.server_address[1]}/hooks/jobs"
    database = WORK / "jobs.sqlite3"
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT / 'examples'}{os.pathsep}{ROOT}",
        "PENDING_JOBS_DATABASE_URL": f"sqlite:///{database}",
        "PENDING_JOBS_TASKS": "demo_tasks",
        "PENDING_JOBS_CALLBACK_SECRET": SECRET,
        "PENDING_JOBS_CALLBACK_ALLOW": "127.0.0.1",  # the demo receiver is on loopback, refused by default
    }

    print(f"== pending-jobs migrate  (SQLite database {database.relative_to(ROOT)})")
    pending_jobs("migrate", env=env)

    print("== enqueue: a producer inserts rows (here with the CLI; see README for SQL, PHP, Python)")
    email = pending_jobs("enqueue", "send_welcome_email", "--payload", '{"email": "john@example.com"}',
                         "--callback-url", callback, env=env).strip()
    resize = pending_jobs("enqueue", "resize_image", "--payload", '{"width": 1024}', env=env).strip()
    report = pending_jobs("enqueue", "monthly_report", "--delay", "1h", env=env).strip()
    with sqlite3.connect(database) as conn:  # a producer that only knows the table
        # One attempt: an unknown task is otherwise tried again with the backoff (a deploy may be under way).
        conn.execute("INSERT INTO pending_jobs (task, payload, max_attempts) VALUES ('no_such_task', '{}', 1)")
    print(f"   jobs {email} (with callback), {resize} (fails once), {report} (due in 1 h), and one unknown task "
          "(one attempt)")

    # --drain: cron's plain `run` serves on (up to an hour) until the next tick's run takes over.
    print("\n== pending-jobs run --drain -v   (cron starts `run`, which serves on; --drain stops when nothing is due)")
    print(pending_jobs("run", "--drain", "-v", env=env), end="")
    print(f"\n== pending-jobs run --job {resize}   (the failed job's retry, run now instead of after its backoff)")
    print(pending_jobs("run", "--job", resize, "-v", env=env), end="")

    print("\n== callbacks received by the producer's endpoint")
    for item in received:
        event = item["event"]
        print(f"   {event['type']} job {event['data']['id']} webhook-id={item['id']}: {item['check']}")

    print("\n== pending-jobs status")
    print(pending_jobs("status", env=env), end="")

    print("\n== SELECT id, task, status, attempts, result, last_error, callback_status FROM pending_jobs")
    with sqlite3.connect(database) as conn:
        query = "SELECT id, task, status, attempts, result, last_error, callback_status FROM pending_jobs ORDER BY id"
        for row in conn.execute(query):
            shown = [(str(v).splitlines()[0][:60] if v is not None else "NULL") for v in row]
            print("   " + " | ".join(shown))
    without_python(env, database, callback)
    server.shutdown()


SQL_TASK = """
[task.save_user]                 # declared: no Python; runs in the job's own transaction
sql = "INSERT INTO users (name, email) VALUES (:name, :email)"
"""


def without_python(env: dict[str, str], database: Path, python_callback: str) -> None:
    """The article's flow: PHP enqueues, an `sql` task does the work, PHP receives the signed callback."""
    print("\n\n== Part 2: no Python written by you ==")
    config = WORK / "pending-jobs.toml"
    config.write_text(SQL_TASK)
    with sqlite3.connect(database) as conn:  # the application's own table
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT UNIQUE)")
    print(f"   {config.relative_to(ROOT)}:{SQL_TASK.rstrip()}")
    env = {**env, "PENDING_JOBS_CONFIG": str(config), "PENDING_JOBS_TASKS": ""}
    php = shutil.which("php")
    if php is None or "pdo_sqlite" not in subprocess.run([php, "-m"], capture_output=True, text=True).stdout:
        print("   (php with pdo_sqlite is not installed here — `apt install php-cli php-sqlite3` to see the PHP\n"
              "    scripts; the same flow follows with the producer's plain SQL and a receiver in Python)")
        with sqlite3.connect(database) as conn:
            conn.execute("INSERT INTO pending_jobs (task, payload, callback_url) VALUES ('save_user', ?, ?)",
                         (json.dumps({"name": "Ada", "email": "ada@example.com"}), python_callback))
        print(pending_jobs("run", "--drain", "-v", env=env), end="")
        for item in received[-1:]:
            data = item["event"]["data"]
            print(f"   callback: job {data['id']} {data['status']} {json.dumps(data['result'])} ({item['check']})")
        return
    log = WORK / "callbacks.log"
    port = _free_port()
    receiver = subprocess.Popen([php, "-S", f"127.0.0.1:{port}", str(ROOT / "examples/php/receiver.php")],
                                env={**env, "PENDING_JOBS_DEMO_LOG": str(log)}, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    try:
        _wait_for_port(port)
        hook = f"http://127.0.0.1:{port}/hooks/jobs"
        print(f"   php examples/php/enqueue_signup.php {hook} Ada ada@example.com")
        enqueued = subprocess.run([php, str(ROOT / "examples/php/enqueue_signup.php"), hook, "Ada", "ada@example.com"],
                                  env={**env, "PENDING_JOBS_PDO_DSN": f"sqlite:{database}"}, capture_output=True,
                                  text=True)
        if enqueued.returncode != 0:
            sys.exit(f"enqueue_signup.php exited {enqueued.returncode}:\n{enqueued.stdout}{enqueued.stderr}")
        job = enqueued.stdout.strip()
        print(f"   -> job {job}\n   pending-jobs run --drain -v")
        print(pending_jobs("run", "--drain", "-v", env=env), end="")
        print("   the PHP receiver verified the signature and wrote:")
        print("   " + (log.read_text().strip() if log.exists() else "(nothing: see the attempts table)"))
    finally:
        receiver.terminate()
        receiver.wait()
    with sqlite3.connect(database) as conn:
        print(f"   SELECT * FROM users: {conn.execute('SELECT id, name, email FROM users').fetchall()}")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int) -> None:
    import socket
    import time

    for _ in range(100):
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)


if __name__ == "__main__":
    main()
