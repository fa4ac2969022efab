"""The PHP client (clients/php) with the machine's php: enqueue and status on SQLite, MariaDB and
PostgreSQL, callbacks verified against the spec vector and against callbacks the runner really sent,
push tokens checked from Python, and the PHP examples run end to end."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import os
import re
import socket
import subprocess
import time
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa

from pending_jobs import validation
from pending_jobs.callbacks.signing import secret_key, signature
from pending_jobs.schema import pending_jobs as J
from tests.conftest import ROOT, cli, rows
from tests.system.php import CLIENT, pdo_env, php_binary, run_php

UTC = dt.UTC
VECTOR = json.loads((ROOT / "tests" / "data" / "standard-webhooks.json").read_text())
SECRET = "whsec_" + base64.b64encode(b"php client test secret, 32 bytes").decode()
EXAMPLES = ROOT / "examples" / "php"


def utc(value: dt.datetime) -> dt.datetime:
    """A column's time as an aware UTC datetime (MariaDB and SQLite give naive UTC)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def job(engine: sa.Engine, job_id: int) -> Any:
    """One job's row with typed columns (payload decoded, times as datetimes)."""
    with engine.connect() as conn:
        return conn.execute(sa.select(J).where(J.c.id == job_id)).one()


# -- enqueue -----------------------------------------------------------------------------------------


def test_enqueue_writes_the_columns_the_runner_reads(backend: str, db_url: str, engine: sa.Engine,
                                                     tmp_path: Path) -> None:
    ids = run_php(tmp_path, """
        $jobs = new Client(connect());
        out([
            'unicode' => $jobs->enqueue('echo', ['name' => 'Zoë 🚀', 'url' => 'https://example.com/a/b']),
            'empty' => $jobs->enqueue('echo'),
            'full' => $jobs->enqueue('echo', ['n' => 1], ['queue' => 'mail', 'priority' => 7, 'delay' => 3600,
                'max_attempts' => 2, 'callback_url' => 'https://app.example.com/hooks/jobs']),
            'at' => $jobs->enqueue('echo', ['list' => []], ['run_at' => new DateTimeImmutable(
                '2031-05-06 07:08:09.123456', new DateTimeZone('Europe/Paris'))]),
        ]);
    """, db_url, backend=backend)

    unicode, empty, full, at = (job(engine, ids[name]) for name in ("unicode", "empty", "full", "at"))
    assert unicode.payload == {"name": "Zoë 🚀", "url": "https://example.com/a/b"}
    assert (unicode.queue, unicode.priority, unicode.max_attempts, unicode.callback_url) == ("default", 0, 5, None)
    assert empty.payload == {}  # an empty PHP array is the object {}, not the list []
    assert at.payload == {"list": []}
    raw = {key: rows(engine, "SELECT payload FROM pending_jobs WHERE id = :id", id=ids[key])[0][0]
           for key in ("unicode", "empty")}
    if backend != "postgresql":  # jsonb keeps no text; elsewhere the text is what PHP sent
        assert raw == {"unicode": '{"name":"Zoë 🚀","url":"https://example.com/a/b"}', "empty": "{}"}
    assert (full.queue, full.priority, full.max_attempts, full.callback_url, full.payload) == \
        ("mail", 7, 2, "https://app.example.com/hooks/jobs", {"n": 1})
    # The delay is added to the database clock, the same clock that filled created_at.
    assert abs(utc(full.run_at) - utc(full.created_at) - dt.timedelta(hours=1)) <= dt.timedelta(milliseconds=1)
    assert utc(at.run_at) == dt.datetime(2031, 5, 6, 5, 8, 9, 123456, tzinfo=UTC)  # Paris summer time is UTC+2
    assert {row.status for row in (unicode, empty, full, at)} == {"pending"}


def test_idempotent_enqueue_returns_the_first_id_inside_the_callers_transaction(
        backend: str, db_url: str, engine: sa.Engine, tmp_path: Path) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE signups (email VARCHAR(191) PRIMARY KEY)")
    result = run_php(tmp_path, """
        $pdo = connect();
        $jobs = new Client($pdo);
        $signup = $pdo->prepare('INSERT INTO signups (email) VALUES (?)');
        $pdo->beginTransaction();
        $signup->execute(['john@example.com']);
        $first = $jobs->enqueue('echo', ['email' => 'john@example.com'], ['idempotency_key' => 'signup-john']);
        $second = $jobs->enqueue('echo', ['email' => 'again'], ['idempotency_key' => 'signup-john']);
        $signup->execute(['jane@example.com']);  // the transaction still takes writes after the duplicate
        $pdo->commit();
        $later = $jobs->enqueue('echo', [], ['idempotency_key' => 'signup-john']);  // autocommit this time

        $pdo->beginTransaction();
        $jobs->enqueue('echo', [], ['idempotency_key' => 'rolled-back']);
        $pdo->rollBack();  // the job goes with the application's transaction
        out(['ids' => [$first, $second, $later], 'after_rollback' => $jobs->enqueue('echo', [],
            ['idempotency_key' => 'rolled-back'])]);
    """, db_url, backend=backend)

    first = result["ids"][0]
    assert result["ids"] == [first, first, first]
    assert rows(engine, "SELECT email FROM signups ORDER BY email") == [("jane@example.com",), ("john@example.com",)]
    assert rows(engine, "SELECT id, idempotency_key FROM pending_jobs ORDER BY id") == \
        [(first, "signup-john"), (result["after_rollback"], "rolled-back")]
    assert job(engine, first).payload == {"email": "john@example.com"}


def test_enqueue_refuses_bad_arguments_before_touching_the_transaction(
        backend: str, db_url: str, engine: sa.Engine, tmp_path: Path) -> None:
    refused = run_php(tmp_path, """
        $pdo = connect();
        $jobs = new Client($pdo);
        $pdo->beginTransaction();
        $cases = [
            'empty task' => fn () => $jobs->enqueue(''),
            'long task' => fn () => $jobs->enqueue(str_repeat('t', 192)),
            'long queue' => fn () => $jobs->enqueue('echo', [], ['queue' => str_repeat('q', 65)]),
            'list payload' => fn () => $jobs->enqueue('echo', [1, 2]),
            'NaN payload' => fn () => $jobs->enqueue('echo', ['x' => NAN]),
            'binary payload' => fn () => $jobs->enqueue('echo', ['x' => "\\xff"]),
            'NUL payload' => fn () => $jobs->enqueue('echo', ['x' => "a\\0b"]),
            'big payload' => fn () => $jobs->enqueue('echo', ['x' => str_repeat('x', 1_000_000)]),
            'priority' => fn () => $jobs->enqueue('echo', [], ['priority' => 1001]),
            'priority text' => fn () => $jobs->enqueue('echo', [], ['priority' => '5']),
            'max_attempts' => fn () => $jobs->enqueue('echo', [], ['max_attempts' => 0]),
            'ftp callback' => fn () => $jobs->enqueue('echo', [], ['callback_url' => 'ftp://example.com/x']),
            'no scheme' => fn () => $jobs->enqueue('echo', [], ['callback_url' => 'example.com/x']),
            'bad port' => fn () => $jobs->enqueue('echo', [], ['callback_url' => 'http://example.com:99999/']),
            'NUL callback' => fn () => $jobs->enqueue('echo', [], ['callback_url' => "http://a.example/\\0x"]),
            'binary callback' => fn () => $jobs->enqueue('echo', [], ['callback_url' => "http://a.example/\\xff"]),
            'long callback' => fn () => $jobs->enqueue('echo', [], ['callback_url' => 'http://a.example/'
                                                                                      . str_repeat('x', 2032)]),
            'binary key' => fn () => $jobs->enqueue('echo', [], ['idempotency_key' => "k\\xff"]),
            'empty key' => fn () => $jobs->enqueue('echo', [], ['idempotency_key' => '']),
            'negative delay' => fn () => $jobs->enqueue('echo', [], ['delay' => -1]),
            'delay and run_at' => fn () => $jobs->enqueue('echo', [], ['delay' => 1, 'run_at' => new DateTime()]),
            'run_at text' => fn () => $jobs->enqueue('echo', [], ['run_at' => '2030-01-01']),
            'unknown option' => fn () => $jobs->enqueue('echo', [], ['retries' => 3]),
        ];
        $refused = array_map('outcome', $cases);
        $refused['191 characters'] = outcome(fn () => $jobs->enqueue(str_repeat('é', 191)));
        $refused['2048 characters'] = outcome(fn () => $jobs->enqueue('url', [], ['callback_url' => 'http://a.example/'
                                                                                   . str_repeat('é', 2031)]));
        $refused['1.0'] = outcome(fn () => $jobs->enqueue('float', ['x' => 1.0, 'y' => [-0.0, 2.5]]));
        $jobs->enqueue('echo', ['after' => 'the refusals']);
        $pdo->commit();
        out($refused);
    """, db_url, backend=backend)

    expected = {
        "empty task": "task must be a non-empty string of at most 191 characters",
        "long task": "task must be a non-empty string of at most 191 characters",
        "long queue": "queue must be a non-empty string of at most 64 characters",
        "list payload": "payload must be a JSON object (an associative array with string keys), got a list; "
                        "for keys such as '0', pass an object: (object) ['0' => ...]",
        "NaN payload": "payload is not JSON-encodable: Inf and NaN cannot be JSON encoded",
        "binary payload": "payload is not JSON-encodable: Malformed UTF-8 characters, possibly incorrectly encoded",
        "NUL payload": "payload contains a NUL character, which PostgreSQL jsonb cannot store",
        "big payload": "payload is 1000008 bytes, over the 1000000-byte limit",
        "priority": "priority must be an integer in -1000..1000",
        "priority text": "priority must be an integer in -1000..1000",
        "max_attempts": "max_attempts must be an integer in 1..1000",
        "ftp callback": "invalid callback_url: scheme must be http or https, not 'ftp'",
        "no scheme": "invalid callback_url: scheme must be http or https, not missing",
        "bad port": "invalid callback_url: not a URL (or a bad port)",
        "NUL callback": "invalid callback_url: it must not contain NUL",
        "binary callback": "invalid callback_url: it must be valid UTF-8",
        "long callback": "invalid callback_url: longer than 2048 characters",
        "binary key": "idempotency_key must be valid UTF-8",
        "empty key": "idempotency_key must be a non-empty string of at most 191 characters",
        "negative delay": "delay must be a non-negative number of seconds",
        "delay and run_at": "give delay or run_at, not both",
        "run_at text": "run_at must be a DateTimeInterface",
        "unknown option": "unknown enqueue option 'retries'; the options are queue, priority, delay, run_at, "
                          "max_attempts, callback_url, idempotency_key, concurrency_key",
    }
    assert refused.pop("191 characters") == "accepted"  # characters, not bytes, as VARCHAR(191) counts
    assert refused.pop("2048 characters") == "accepted"
    assert refused.pop("1.0") == "accepted"
    assert {case: message.split(": ", 1) for case, message in refused.items()} == \
        {case: ["InvalidArgumentException", reason] for case, reason in expected.items()}
    # Nothing was sent for the refused jobs, so the transaction committed the rest.
    assert sorted(row[0] for row in rows(engine, "SELECT task FROM pending_jobs")) == \
        ["echo", "float", "url", "é" * 191]
    url, = rows(engine, "SELECT callback_url FROM pending_jobs WHERE task = 'url'")[0]
    assert url == "http://a.example/" + "é" * 2031
    floats = rows(engine, "SELECT id FROM pending_jobs WHERE task = 'float'")[0][0]
    assert job(engine, floats).payload == {"x": 1.0, "y": [-0.0, 2.5]}
    assert [type(value) for value in (job(engine, floats).payload["x"], *job(engine, floats).payload["y"])] == \
        [float, float, float]  # PHP wrote 1.0 as 1 and -0.0 as -0, which a Python handler read as int


URLS = ["http://example.com/", "https://[::1]:8443/x", "http://user:pw@host:8080/p?q#f", "http://host:/",
        "http://[v1.fe]/", "HTTP://Example.com", "http://bücher.example/é", "http://h/%20", "http://h:0080/",
        "http://host:80:80/", "http://host:+80/", "http://host:1_0/", "http://host:٣/", "http://[notip]/",
        "http://[::1/", "http://host]/", "http://ho[st/", "http://[1.2.3.4]/", "http://[vz.x]/",
        "http://u@[::1]x:80/", " http://example.com/", "http://example.com/ ", "http://exa\tmple.com/",
        "http://a.example/\x7f", "http://host: 80/", "ftp://x/", "http:///p", "http://host:99999/", "//host/",
        "http://a\uff1a80/", "http://a\uff03b/", "http://u\uff20x@host/", "http://\u2100.example/",
        "http://u[x]@host/", "http://[fe80::1%25eth0]/", "http://[::1%2525]/", "http://[::1%]/",
        "http://[1.2.3.4%x]/", "http://a b.example/" + "x" * 2040]


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_php_takes_exactly_the_callback_urls_the_runner_takes(backend: str, db_url: str, tmp_path: Path) -> None:
    """The runner checks every row's callback_url with Python's urlsplit (validation.callback_url_problem):
    a URL PHP's parse_url took and urlsplit refuses (a port 80:80, brackets around no IPv6 address, a
    leading space) was accepted, and its job failed without running."""
    verdicts = run_php(tmp_path, """
        $jobs = new Client(connect());
        $verdicts = [];
        foreach (json_decode(stream_get_contents(STDIN), true) as $url) {
            $verdicts[] = outcome(fn () => $jobs->enqueue('echo', [], ['callback_url' => $url]));
        }
        out($verdicts);
    """, db_url, stdin=json.dumps(URLS), backend=backend)

    python = [validation.callback_url_problem(url) for url in URLS]
    assert [(url, verdict == "accepted") for url, verdict in zip(URLS, verdicts, strict=True)] == \
        [(url, problem is None) for url, problem in zip(URLS, python, strict=True)]
    assert python.count(None) == 12
    said = {url: (verdict, f"InvalidArgumentException: {problem}")
            for url, verdict, problem in zip(URLS, verdicts, python, strict=True)}
    for url in ("http://host:80:80/", "http://host:+80/", "http://[::1/", "http://host]/", "http://[vz.x]/",
                " http://example.com/", "http://exa\tmple.com/", "http://host: 80/", "http://u\uff20x@host/",
                "http://[notip]/", "http://[1.2.3.4]/", "http://u[x]@host/", URLS[-1]):  # long, with a space
        assert said[url][0] == said[url][1]  # the same words, where parse_url did not refuse first


def test_php_lists_the_characters_nfkc_turns_into_url_delimiters() -> None:
    """urlsplit refuses a netloc where NFKC makes / ? # @ or : appear; PHP has no NFKC without ext-intl,
    so JobRow lists those characters: the list is this Python's."""
    source = (CLIENT / "src" / "JobRow.php").read_text()
    start = source.index("NFKC_DELIMITERS = '/[") + len("NFKC_DELIMITERS = '/[")
    listed = source[start:source.index("]/u';", start)].replace("'\n        . '", "")
    codes: set[int] = set()
    for first, last in re.findall(r"\\x\{([0-9a-f]+)\}(?:-\\x\{([0-9a-f]+)\})?", listed):
        codes.update(range(int(first, 16), int(last or first, 16) + 1))
    wanted = {code for code in range(0x80, 0x110000) if not 0xD800 <= code <= 0xDFFF
              and any(c in unicodedata.normalize("NFKC", chr(code)) for c in "/?#@:")}
    assert codes == wanted


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_php_takes_the_runners_payload_limit(backend: str, db_url: str, engine: sa.Engine, tmp_path: Path) -> None:
    """The limit was fixed at 1,000,000 bytes: under a lower payload_limit setting PHP's jobs failed unrun,
    under a higher one PHP refused what the runner takes."""
    said = run_php(tmp_path, """
        $pdo = connect();
        $small = new Client($pdo, payloadLimit: 200);
        $large = new Client($pdo, payloadLimit: 2_000_000);
        out([
            'small' => outcome(fn () => $small->enqueue('echo', ['x' => str_repeat('x', 193)])),
            'at the limit' => outcome(fn () => $small->enqueue('echo', ['x' => str_repeat('x', 192)])),
            'large' => outcome(fn () => $large->enqueue('echo', ['x' => str_repeat('x', 1_500_000)])),
            'default' => outcome(fn () => (new Client($pdo))->enqueue('echo', ['x' => str_repeat('x', 1_500_000)])),
            'zero' => outcome(fn () => new Client($pdo, payloadLimit: 0)),
        ]);
    """, db_url, backend=backend)
    assert said == {
        "small": "InvalidArgumentException: payload is 201 bytes, over the 200-byte limit",
        "at the limit": "accepted",
        "large": "accepted",
        "default": "InvalidArgumentException: payload is 1500008 bytes, over the 1000000-byte limit",
        "zero": "InvalidArgumentException: payloadLimit must be 1..100000000 bytes, as the payload_limit setting",
    }
    assert sorted(len(text) for text, in rows(engine, "SELECT payload FROM pending_jobs")) == [200, 1_500_008]


def test_php_measures_and_trims_text_as_python_does(tmp_path: Path) -> None:
    """Edge white space is what Python's str.strip() removes (PCRE's \\s also held U+180E, so a queue
    'mail\\u180e' was refused by PHP alone), and U+2028/U+2029 count 3 bytes, not a 6-byte escape (a
    payload Python took at 900,008 bytes PHP refused as 1,800,008)."""
    said = run_php(tmp_path, """
        $refused = [];
        for ($code = 0; $code <= 0xFFFF; $code++) {
            if ($code >= 0xD800 && $code <= 0xDFFF) {
                continue;
            }
            $char = json_decode(sprintf('"\\u%04x"', $code));
            try {
                PendingJobs\\JobRow::fromArguments('t', [], ['queue' => 'q' . $char]);
            } catch (InvalidArgumentException $error) {
                $refused[] = $code;
            }
        }
        $separators = str_repeat("\\u{2028}\\u{2029}", 166_665);  // 999,990 bytes in UTF-8
        out(['refused' => $refused, 'separators' => outcome(fn () => PendingJobs\\JobRow::fromArguments(
            't', ['a' => $separators], []))]);
    """)
    python = [code for code in range(0x10000) if not 0xD800 <= code <= 0xDFFF
              and validation.key_problem("q" + chr(code), validation.QUEUE_LIMIT) is not None]
    assert said["refused"] == python and 0x180E not in python and 0x3000 in python and 0 in python
    assert said["separators"] == "accepted"
    assert len(json.dumps({"a": "\u2028\u2029" * 166_665}, ensure_ascii=False, separators=(",", ":"))
               .encode()) == 999_998  # under the 1,000,000-byte limit, as Python measures it


@pytest.mark.parametrize("backend", ["mysql", "postgresql"], indirect=True)
def test_enqueue_works_whatever_the_callers_pdo_attributes(backend: str, db_url: str, engine: sa.Engine,
                                                          tmp_path: Path) -> None:
    # The opposite of each driver's default prepare mode, and errors that PDO itself keeps silent.
    result = run_php(tmp_path, """
        $pdo = connect();
        $pdo->setAttribute(PDO::ATTR_ERRMODE, PDO::ERRMODE_SILENT);
        $pdo->setAttribute(PDO::ATTR_EMULATE_PREPARES, $pdo->getAttribute(PDO::ATTR_DRIVER_NAME) === 'pgsql');
        $jobs = new Client($pdo);
        $ids = [$jobs->enqueue('echo', ['n' => 1], ['delay' => 1.5, 'idempotency_key' => 'k', 'priority' => -3]),
                $jobs->enqueue('echo', ['n' => 2], ['idempotency_key' => 'k'])];
        $pdo->exec('ALTER TABLE pending_jobs RENAME TO pending_jobs_elsewhere');
        out(['ids' => $ids, 'missing table' => outcome(fn () => $jobs->enqueue('echo'))]);
    """, db_url, backend=backend)

    first = result["ids"][0]
    assert result["ids"] == [first, first]
    assert result["missing table"].startswith("PDOException: pending_jobs: SQLSTATE[42")  # 42S02 / 42P01
    assert "pending_jobs_elsewhere" not in result["missing table"]
    assert result["missing table"].endswith("(run `pending-jobs migrate` against this database first: it creates "
                                            "the pending_jobs table)")
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT priority, run_at, created_at FROM pending_jobs_elsewhere")).one()
    assert row.priority == -3 and utc(row.run_at) - utc(row.created_at) == dt.timedelta(seconds=1.5)


def test_before_migrate_the_error_says_which_command_creates_the_table(backend: str, db_url: str,
                                                                       engine: sa.Engine, tmp_path: Path) -> None:
    # A new application's first enqueue often runs before `pending-jobs migrate`: PDO's own "Table
    # 'test.pending_jobs' doesn't exist" named no command. Other errors, and the caller's other tables, unchanged.
    result = run_php(tmp_path, """
        $pdo = connect();
        $jobs = new Client($pdo);
        $pdo->exec('ALTER TABLE pending_jobs RENAME TO pending_jobs_elsewhere');
        $error = null;
        try {
            $jobs->enqueue('echo');
        } catch (PDOException $caught) {
            $error = $caught;
        }
        $other = outcome(fn () => $pdo->query('SELECT * FROM no_such_table_of_the_app'));
        out(['message' => $error?->getMessage(), 'state' => $error?->errorInfo[0], 'previous' => $error?->getPrevious()
             !== null, 'status' => outcome(fn () => $jobs->status(1)), 'other' => $other]);
    """, db_url, backend=backend)

    hint = "(run `pending-jobs migrate` against this database first: it creates the pending_jobs table)"
    assert result["message"].endswith(hint) and "pending_jobs" in result["message"]
    assert result["state"] == {"sqlite": "HY000", "mysql": "42S02", "postgresql": "42P01"}[backend]
    assert result["previous"] is True  # PDO's own exception, for code that inspects it
    assert result["status"].endswith(hint)
    assert "migrate" not in result["other"]
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE pending_jobs_elsewhere RENAME TO pending_jobs"))


# -- status ------------------------------------------------------------------------------------------

STATUS = """
    $jobs = new Client(connect());
    $times = ['created_at', 'started_at', 'finished_at', 'run_at'];
    $status = array_map(function (int $id) use ($jobs, $times): ?array {
        $row = $jobs->status($id);
        foreach ($times as $column) {
            if ($row !== null) {
                $row[$column] = iso($row[$column]);
            }
        }
        return $row;
    }, json_decode(stream_get_contents(STDIN), true));
    out($status);
"""


def test_status_of_pending_and_finished_jobs(backend: str, db_url: str, engine: sa.Engine, tmp_path: Path) -> None:
    ids = run_php(tmp_path, """
        $jobs = new Client(connect());
        out([$jobs->enqueue('echo', ['n' => 1]), $jobs->enqueue('fail_now', [], ['max_attempts' => 3])]);
    """, db_url, backend=backend)
    pending = run_php(tmp_path, STATUS, db_url, stdin=json.dumps([*ids, 999_999]), backend=backend)
    assert [(s["status"], s["attempts"], s["max_attempts"], s["result"]) for s in pending[:2]] == \
        [("pending", 0, 5, None), ("pending", 0, 3, None)]
    assert pending[2] is None  # no such job

    ran = cli("run", "--poll", "0", env={"PENDING_JOBS_DATABASE_URL": db_url})
    assert ran.returncode == 0
    assert ran.stderr.splitlines()[-1].endswith(f"job {ids[1]} (fail_now) failed on attempt 1 of 3: "
                                                "Fail: the input can never work")  # the one line a failure logs

    echo, failed, _ = run_php(tmp_path, STATUS, db_url, stdin=json.dumps([*ids, 999_999]), backend=backend)
    assert (echo["id"], echo["task"], echo["queue"], echo["status"], echo["attempts"]) == \
        (ids[0], "echo", "default", "succeeded", 1)
    assert echo["result"] == {"payload": {"n": 1}, "attempt": 1, "job_id": ids[0]}
    assert (echo["last_error"], echo["callback_status"]) == (None, None)
    assert (failed["status"], failed["result"]) == ("failed", None)
    assert "Fail: the input can never work" in failed["last_error"]
    # PHP reads the same instants Python does, whatever each database's time type.
    row = job(engine, ids[0])
    for column in ("created_at", "started_at", "finished_at", "run_at"):
        assert dt.datetime.fromisoformat(echo[column]) == utc(getattr(row, column)), column


# What each database lets SQL store that is no time in years 1..9999, or no JSON PHP decodes with its default
# depth of 512 (MariaDB's JSON CHECK refuses a result nested over 32 levels, and any text that is not JSON).
HAND_WRITTEN = {
    "sqlite": {"created_at": "2030-01-02 03:04:05.5", "started_at": "2030-02-31 00:00:00",
               "finished_at": "tomorrow", "run_at": "soon", "result": "[" * 600 + "]" * 600},
    "mysql": {"created_at": "2030-01-02 03:04:05.5", "started_at": "0000-00-00 00:00:00",
              "finished_at": None, "run_at": "0000-06-01 00:00:00", "result": "[" * 31 + "]" * 31},
    "postgresql": {"created_at": "2030-01-02 03:04:05.5+00", "started_at": "-infinity",
                   "finished_at": "0005-01-01 00:00:00+00 BC", "run_at": "infinity", "result": "[" * 600 + "]" * 600},
}


def test_status_of_a_row_written_by_hand_invents_nothing_and_throws_nothing(
        backend: str, db_url: str, engine: sa.Engine, tmp_path: Path) -> None:
    values = HAND_WRITTEN[backend]
    result = "CAST(:result AS jsonb)" if backend == "postgresql" else ":result"
    with engine.begin() as conn:
        if backend == "mysql":  # strict mode refuses the zero date
            conn.exec_driver_sql("SET SESSION sql_mode = ''")
        conn.execute(sa.text(
            "INSERT INTO pending_jobs (task, payload, status, created_at, started_at, finished_at, run_at, result) "
            f"VALUES ('echo', '{{}}', 'succeeded', :created_at, :started_at, :finished_at, :run_at, {result})"),
            values)
        job_id = conn.execute(sa.text("SELECT MAX(id) FROM pending_jobs")).scalar_one()
    status = run_php(tmp_path, """
        $row = (new Client(connect()))->status((int) file_get_contents('php://stdin'));
        $depth = 0;
        for ($value = $row['result']; is_array($value) && $value !== []; $value = $value[0]) {
            $depth++;
        }
        out(['result' => is_array($row['result']) ? ['depth' => $depth + 1] : $row['result']] + array_map(
            fn (mixed $time) => $time instanceof DateTimeInterface ? ['time' => iso($time)] : $time,
            array_intersect_key($row, array_flip(['created_at', 'started_at', 'finished_at', 'run_at']))));
    """, db_url, stdin=str(job_id), backend=backend)

    depth = 600 if backend != "mysql" else 31
    assert status.pop("result") == {"depth": depth}  # json_decode's default depth threw JsonException at 513
    assert status.pop("created_at") == {"time": "2030-01-02T03:04:05.500000+00:00"}
    if backend == "postgresql":  # to_char made infinity NULL, and BC a year AD
        assert (status["started_at"], status["run_at"]) == ("-infinity", "infinity")
        assert status["finished_at"].startswith("0005-01-01 ") and status["finished_at"].endswith(" BC")
    elif backend == "mysql":  # year 0 was a DateTimeImmutable no other reader has, the zero date one in 1 BC
        assert status == {"started_at": "0000-00-00 00:00:00.000000", "finished_at": None,
                          "run_at": "0000-06-01 00:00:00.000000"}
    else:  # 'soon' threw; 'tomorrow' was a time, and 31 February was 3 March
        assert status == {"started_at": "2030-02-31 00:00:00", "finished_at": "tomorrow", "run_at": "soon"}


# -- verifying callbacks ------------------------------------------------------------------------------

VERIFY = """
    $cases = json_decode(stream_get_contents(STDIN), true);
    out(array_map(function (array $case) {
        try {
            return ['body' => Callback::verify($case['secrets'], $case['headers'], $case['body'], $case['now'])];
        } catch (Throwable $error) {
            return ['error' => get_class($error) . ': ' . $error->getMessage()];
        }
    }, $cases));
"""


def signed(secret: str, body: str, msg_id: str = "msg_1_1", timestamp: int = 1_700_000_000) -> dict[str, str]:
    """Headers as the runner's signer makes them (pending_jobs.callbacks.signing)."""
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": signature(secret_key(secret), msg_id, timestamp, body.encode())}


def test_verify_callback_accepts_genuine_and_refuses_forged_callbacks(tmp_path: Path) -> None:
    vector_headers = {name: VECTOR[name] for name in ("webhook-id", "webhook-timestamp", "webhook-signature")}
    at = int(VECTOR["webhook-timestamp"])
    body = '{"type":"job.succeeded","data":{"id":7,"status":"succeeded"}}'
    other = "whsec_" + base64.b64encode(b"another secret of thirty-two b!!").decode()
    padded = "whsec_" + base64.b64encode(b"needs padding").decode()  # ends in "="
    good = signed(SECRET, body)
    now = 1_700_000_000

    def case(secrets: str | list[str], headers: dict[str, str], body: str, now: int) -> dict[str, Any]:
        return {"secrets": secrets, "headers": headers, "body": body, "now": now}

    cases = {
        "spec vector": case(VECTOR["secret"], vector_headers, VECTOR["body"], at),
        "spec vector, body altered": case(VECTOR["secret"], vector_headers, VECTOR["body"].replace("2", "3"), at),
        "spec vector, id altered": case(VECTOR["secret"], {**vector_headers, "webhook-id": "msg_x"},
                                        VECTOR["body"], at),
        "spec vector, 5 minutes later": case(VECTOR["secret"], vector_headers, VECTOR["body"], at + 300),
        "spec vector, too old": case(VECTOR["secret"], vector_headers, VECTOR["body"], at + 301),
        "spec vector, too new": case(VECTOR["secret"], vector_headers, VECTOR["body"], at - 301),
        "runner": case(SECRET, good, body, now),
        "tampered body": case(SECRET, good, body.replace("7", "8"), now),
        "wrong secret": case(other, good, body, now),
        "rotation, two signatures": case(SECRET, {**good, "webhook-signature": " ".join(
            [signed(other, body)["webhook-signature"], good["webhook-signature"]])}, body, now),
        "rotation, two secrets": case([other, SECRET], good, body, now),
        "padding left out": case(padded.rstrip("="), signed(padded, body), body, now),
        "$_SERVER names": case(SECRET, {"HTTP_" + name.upper().replace("-", "_"): value
                                        for name, value in good.items()} | {"REQUEST_METHOD": "POST"}, body, now),
        "mixed-case names": case(SECRET, {name.title(): value for name, value in good.items()}, body, now),
        "missing signature": case(SECRET, {k: v for k, v in good.items() if k != "webhook-signature"}, body, now),
        "no v1 signature": case(SECRET, {**good, "webhook-signature": "v2,abc"}, body, now),
        "timestamp not a number": case(SECRET, {**good, "webhook-timestamp": "soon"}, body, now),
        "secret not base64": case("whsec_not*base64!", good, body, now),
    }
    results = dict(zip(cases, run_php(tmp_path, VERIFY, stdin=json.dumps(list(cases.values()))), strict=True))

    accepted = {name: result["body"] for name, result in results.items() if "body" in result}
    assert accepted == {
        "spec vector": {"test": 2432232314},
        "spec vector, 5 minutes later": {"test": 2432232314},
        **{name: json.loads(body) for name in ("runner", "rotation, two signatures", "rotation, two secrets",
                                                 "padding left out", "$_SERVER names", "mixed-case names")},
    }
    forged = "PendingJobs\\InvalidSignature: no matching signature: the body or headers were altered, " \
             "or the secret is not the sender's"
    errors = {name: result["error"] for name, result in results.items() if "error" in result}
    assert errors == {
        "spec vector, body altered": forged,
        "spec vector, id altered": forged,
        "spec vector, too old": "PendingJobs\\InvalidSignature: webhook-timestamp is too old: 301 seconds ago, "
                                "over the 300-second tolerance",
        "spec vector, too new": "PendingJobs\\InvalidSignature: webhook-timestamp is too new: 301 seconds ahead, "
                                "over the 300-second tolerance",
        "tampered body": forged,
        "wrong secret": forged,
        "missing signature": "PendingJobs\\InvalidSignature: missing header webhook-signature",
        "no v1 signature": "PendingJobs\\InvalidSignature: webhook-signature holds no v1 signature",
        "timestamp not a number": "PendingJobs\\InvalidSignature: webhook-timestamp is not a Unix time in seconds",
        "secret not base64": "InvalidArgumentException: a callback secret is not valid base64 after 'whsec_'",
    }
    for message in errors.values():  # no message carries a secret, whole or its key part
        assert not any(secret.removeprefix("whsec_")[:12] in message
                       for secret in (SECRET, other, VECTOR["secret"], "whsec_not*base64!"))


def test_verify_callback_takes_an_integer_timestamp_and_a_deeply_nested_body(tmp_path: Path) -> None:
    body = '{"type":"job.succeeded","data":{"id":7,"status":"succeeded"}}'
    # A result PostgreSQL stored 600 levels deep, in a body the runner signed: json_decode's default depth
    # (512) made verify() say "the signed body is not JSON: Maximum stack depth exceeded".
    deep = '{"type":"job.succeeded","data":{"id":7,"result":' + "[" * 598 + "]" * 598 + "}}"
    deeper = '{"data":' + "[" * 20_000 + "]" * 20_000 + "}"  # past PHP's parser, past what PostgreSQL stores
    now = 1_700_000_000
    good = signed(SECRET, body)

    def case(headers: dict[str, Any], body: str = body) -> dict[str, Any]:
        return {"secrets": SECRET, "headers": headers, "body": body, "now": now}

    cases = {
        "int timestamp": case({**good, "webhook-timestamp": now}),
        "int timestamp, PSR-7": case({name: [value] for name, value in good.items()} | {"webhook-timestamp": [now]}),
        "int timestamp, another time": case({**good, "webhook-timestamp": now + 1}),
        "float timestamp": case({**good, "webhook-timestamp": now + 0.5}),
        "bool timestamp": case({**good, "webhook-timestamp": True}),
        "null timestamp": case({**good, "webhook-timestamp": None}),
        "600 levels": case(signed(SECRET, deep), deep),
        "20000 levels": case(signed(SECRET, deeper), deeper),
        # json_decode makes a list an array too: a signed `[1]` was returned as if it were the document.
        "list body": case(signed(SECRET, "[1]"), "[1]"),
        "empty list body": case(signed(SECRET, " []"), " []"),
        "empty object body": case(signed(SECRET, " {}"), " {}"),
    }
    results = run_php(tmp_path, """
        out(array_map(function (array $case) {
            try {
                $body = Callback::verify($case['secrets'], $case['headers'], $case['body'], $case['now']);
            } catch (Throwable $error) {
                return get_class($error) . ': ' . $error->getMessage();
            }
            $depth = 0;  // the non-empty levels, counted without json_encode's depth limit
            for ($value = $body; is_array($value) && $value !== []; $value = $value['data'] ?? $value['result']
                ?? $value[0]) {
                $depth++;
            }
            return $depth;
        }, json_decode(stream_get_contents(STDIN), true)));
    """, stdin=json.dumps(list(cases.values())))

    forged = "PendingJobs\\InvalidSignature: no matching signature: the body or headers were altered, " \
             "or the secret is not the sender's"
    assert dict(zip(cases, results, strict=True)) == {
        "int timestamp": 2,
        "int timestamp, PSR-7": 2,
        "int timestamp, another time": forged,  # the integer's decimal text is what is signed
        "float timestamp": "PendingJobs\\InvalidSignature: header webhook-timestamp is float, not a string",
        "bool timestamp": "PendingJobs\\InvalidSignature: header webhook-timestamp is bool, not a string",
        "null timestamp": "PendingJobs\\InvalidSignature: missing header webhook-timestamp",
        "600 levels": 599,  # the body, its data and 598 lists: 600 levels, of which the last is empty
        "20000 levels": "UnexpectedValueException: the signed body is not JSON: Syntax error, or nests deeper "
                        "than PHP's JSON parser reads (near 10,000 levels)",
        "list body": "UnexpectedValueException: the signed body is not a JSON object",
        "empty list body": "UnexpectedValueException: the signed body is not a JSON object",
        "empty object body": 0,
    }


# -- push tokens -------------------------------------------------------------------------------------


def test_push_token_format_and_hmac_match_what_python_computes(tmp_path: Path) -> None:
    before = int(time.time())
    minted = run_php(tmp_path, """
        out([
            'fixed' => PushToken::mint('push sécret', 42, 600, 1_700_000_000),
            'readme' => PushToken::mint('push secret', 42, 600, now: 1700000000),
            'now' => PushToken::mint('push sécret', 7),
            'refused' => [outcome(fn () => PushToken::mint('s', 0)), outcome(fn () => PushToken::mint('', 1)),
                          outcome(fn () => PushToken::mint('s', 1, 0))],
        ]);
    """)
    after = int(time.time())

    def expected_mac(job_id: int, expires: int) -> str:
        claims = f"v1.{job_id}.{expires}"
        return hmac.new("push sécret".encode(), claims.encode(), hashlib.sha256).hexdigest()

    assert minted["fixed"] == f"v1.42.1700000600.{expected_mac(42, 1_700_000_600)}"
    assert minted["readme"] == (  # clients/php/README.md
        "v1.42.1700000600.1256bfb21c672f1d7ee89dc4dc2272c3d7605f3565937cb605d79a3a27f10450")
    version, job_id, expires, mac = minted["now"].split(".")
    assert version == "v1" and job_id == "7" and before + 3600 <= int(expires) <= after + 3600
    assert mac == expected_mac(7, int(expires)) and len(mac) == 64
    assert minted["refused"] == ["InvalidArgumentException: jobId must be a positive job id",
                                 "InvalidArgumentException: the push token secret is empty",
                                 "InvalidArgumentException: ttlSeconds must be at least 1"]


# -- end to end: the PHP examples, the runner, a PHP receiver -----------------------------------------


class Receiver:
    """`php -S 127.0.0.1:PORT examples/php/receiver.php`, verifying with one secret, logging to a file."""

    def __init__(self, tmp_path: Path, name: str, secret: str) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.log = tmp_path / f"{name}.log"
        self.output = (tmp_path / f"{name}.server.log").open("w")
        env = {"PATH": os.environ.get("PATH", ""), "PENDING_JOBS_CALLBACK_SECRET": secret,
               "PENDING_JOBS_DEMO_LOG": str(self.log)}
        self.process = subprocess.Popen([php_binary(), "-S", f"127.0.0.1:{self.port}", str(EXAMPLES / "receiver.php")],
                                        env=env, stdout=self.output, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while True:
            assert self.process.poll() is None, (tmp_path / f"{name}.server.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "php -S did not start listening"
                time.sleep(0.05)

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/jobs"

    def lines(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
        self.output.close()


@pytest.fixture
def receivers(tmp_path: Path) -> Iterator[tuple[Receiver, Receiver]]:
    """A receiver holding the runner's secret and one holding another secret."""
    started: list[Receiver] = []
    try:
        started.append(Receiver(tmp_path, "right", SECRET))
        started.append(Receiver(tmp_path, "wrong", "whsec_" + base64.b64encode(b"not the runner's secret").decode()))
        yield started[0], started[1]
    finally:
        for receiver in started:
            receiver.stop()


def enqueue_signup(db_url: str, backend: str, *args: str) -> subprocess.CompletedProcess[str]:
    """examples/php/enqueue_signup.php with the test database."""
    return subprocess.run([php_binary(backend), str(EXAMPLES / "enqueue_signup.php"), *args], capture_output=True,
                          text=True, env={"PATH": os.environ.get("PATH", ""), **pdo_env(db_url)}, timeout=60)


def test_php_examples_end_to_end_with_the_runners_signed_callbacks(
        backend: str, db_url: str, engine: sa.Engine, tmp_path: Path,
        receivers: tuple[Receiver, Receiver]) -> None:
    right, wrong = receivers
    signup = enqueue_signup(db_url, backend, right.url(), "Zoë", "zoe@example.com")
    assert signup.returncode == 0, signup.stderr
    signup_id = int(signup.stdout)
    again = enqueue_signup(db_url, backend, right.url(), "Zoë", "zoe@example.com")
    assert (again.returncode, again.stdout) == (0, signup.stdout)  # the same signup: the same job
    assert enqueue_signup(db_url, backend, "ftp://x/").stderr == \
        "refused: invalid callback_url: scheme must be http or https, not 'ftp'\n"
    refused_id = run_php(tmp_path, f"out((new Client(connect()))->enqueue('echo', ['n' => 2], "
                                   f"['callback_url' => '{wrong.url()}']));", db_url, backend=backend)

    # A rotation on the runner's side: it signs with a new secret and the old one; the receivers
    # know only the old one (or, the wrong one, neither).
    new_secret = "whsec_" + base64.b64encode(b"the next secret after rotation!!").decode()
    ran = cli("run", "--poll", "0", env={
        "PENDING_JOBS_DATABASE_URL": db_url, "PENDING_JOBS_CALLBACK_SECRET": f"{new_secret},{SECRET}",
        "PENDING_JOBS_CALLBACK_ALLOW": "127.0.0.1", "PENDING_JOBS_TASKS": "tests.jobs,signup_tasks",
        "PYTHONPATH": f"{ROOT}:{EXAMPLES}"})
    assert (ran.returncode, ran.stderr) == (0, "")

    [line] = right.lines()  # "job <id> <status> <result-json>"; jsonb may reorder the result's keys
    assert line.split(" ", 3)[:3] == ["job", str(signup_id), "succeeded"]
    assert json.loads(line.split(" ", 3)[3]) == {"saved": "Zoë", "email": "zoe@example.com"}
    assert wrong.lines() == []
    attempts = rows(engine, "SELECT job_id, status_code, response_excerpt FROM pending_job_callback_attempts "
                            "ORDER BY job_id")
    assert [(a.job_id, a.status_code) for a in attempts] == [(signup_id, 204), (refused_id, 401)]
    assert "no matching signature" in attempts[1].response_excerpt
    # The refused callback waits for a retry: pending, one attempt recorded.
    assert [(r.status, r.callback_status, r.callback_attempts) for r in (job(engine, signup_id),
                                                                        job(engine, refused_id))] == \
        [("succeeded", "delivered", 1), ("succeeded", "pending", 1)]
    status = run_php(tmp_path, STATUS, db_url, stdin=json.dumps([refused_id]), backend=backend)
    assert status[0]["callback_status"] == "pending"


def test_php_receiver_refuses_unsigned_and_non_post_requests(tmp_path: Path,
                                                              receivers: tuple[Receiver, Receiver]) -> None:
    right, _ = receivers
    unsigned = requests.post(right.url(), data=b'{"data":{"id":1}}', timeout=10)
    assert (unsigned.status_code, unsigned.text) == (401, "missing header webhook-id\n")
    assert requests.get(right.url(), timeout=10).status_code == 405
    assert right.lines() == []


# -- the package itself ------------------------------------------------------------------------------


def test_composer_package_and_every_php_file_parses() -> None:
    composer = json.loads((CLIENT / "composer.json").read_text())
    assert composer["name"] == "pending-jobs/client"
    assert composer["require"] == {"php": ">=8.1", "ext-pdo": "*", "ext-json": "*"}
    assert composer["autoload"] == {"psr-4": {"PendingJobs\\": "src/"}}
    php = php_binary()
    files = sorted([*CLIENT.rglob("*.php"), *(ROOT / "examples").rglob("*.php")])
    assert len(files) >= 9
    for path in files:
        linted = subprocess.run([php, "-l", str(path)], capture_output=True, text=True)
        assert linted.returncode == 0, linted.stdout + linted.stderr
