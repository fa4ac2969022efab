"""Running the machine's PHP against a test database: the binary, PDO DSNs, scripts that print JSON."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any, NoReturn

import pytest
import sqlalchemy as sa

from tests.conftest import ROOT

CLIENT = ROOT / "clients" / "php"
DRIVERS = {"sqlite": "pdo_sqlite", "mysql": "pdo_mysql", "postgresql": "pdo_pgsql"}
INSTALL = "apt-get install php-cli php-mysql php-pgsql php-sqlite3"

# Included before every test script: the client (without Composer) and small helpers.
PRELUDE = """<?php
declare(strict_types=1);
require getenv('PHP_CLIENT') . '/autoload.php';
use PendingJobs\\Callback;
use PendingJobs\\Client;
use PendingJobs\\InvalidSignature;
use PendingJobs\\PushToken;

function connect(): PDO
{
    return new PDO(getenv('PENDING_JOBS_PDO_DSN'), getenv('PENDING_JOBS_PDO_USER') ?: null,
        getenv('PENDING_JOBS_PDO_PASSWORD') ?: null, [PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION]);
}

function out(mixed $value): void
{
    echo json_encode($value, JSON_UNESCAPED_UNICODE | JSON_UNESCAPED_SLASHES | JSON_THROW_ON_ERROR);
}

/** "accepted", or the class and message of what $work threw. */
function outcome(callable $work): string
{
    try {
        $work();
        return 'accepted';
    } catch (Throwable $error) {
        return get_class($error) . ': ' . $error->getMessage();
    }
}

function iso(?DateTimeInterface $time): ?string
{
    return $time?->format('Y-m-d\\\\TH:i:s.uP');
}
"""


def _unavailable(reason: str) -> NoReturn:
    # CI must prove the PHP client works; a developer without PHP may skip.
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def php_binary(backend: str | None = None) -> str:
    """The machine's php, with the PDO driver for `backend`; skip (fail when CI=true) without them."""
    php = shutil.which("php")
    if php is None:
        _unavailable(f"php is not installed ({INSTALL})")
    if backend is not None:
        modules = subprocess.run([php, "-m"], capture_output=True, text=True, check=True).stdout.split()
        if DRIVERS[backend] not in modules:
            _unavailable(f"php has no {DRIVERS[backend]} ({INSTALL})")
    return php


def pdo_env(db_url: str) -> dict[str, str]:
    """A SQLAlchemy URL as the PENDING_JOBS_PDO_* variables examples/php/enqueue_signup.php reads."""
    url = sa.make_url(db_url)
    backend = url.get_backend_name()
    if backend == "sqlite":
        dsn = f"sqlite:{url.database}"
    elif backend == "mysql":
        dsn = f"mysql:host={url.host};port={url.port or 3306};dbname={url.database};charset=utf8mb4"
    else:
        dsn = f"pgsql:host={url.host};port={url.port or 5432};dbname={url.database}"
    return {"PENDING_JOBS_PDO_DSN": dsn, "PENDING_JOBS_PDO_USER": url.username or "",
            "PENDING_JOBS_PDO_PASSWORD": url.password or ""}


def run_php(tmp_path: Path, code: str, db_url: str | None = None, stdin: str | None = None,
            backend: str | None = None) -> Any:
    """Run PRELUDE + `code` with the machine's php; return what it printed, decoded from JSON."""
    php = php_binary(backend)
    script = tmp_path / f"script_{uuid.uuid4().hex[:8]}.php"
    script.write_text(PRELUDE + code)
    env = {"PATH": os.environ.get("PATH", ""), "PHP_CLIENT": str(CLIENT), **(pdo_env(db_url) if db_url else {})}
    done = subprocess.run([php, "-d", "display_errors=stderr", str(script)], input=stdin, capture_output=True,
                          text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr + done.stdout
    return json.loads(done.stdout)
