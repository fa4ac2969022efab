"""The PHP client's concurrency_key, object payloads, task names and NUL check: the same rules as the
Python API, on SQLite, MariaDB and PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from pending_jobs.enqueue import job_row
from tests.conftest import rows
from tests.system.php import run_php


def payload(engine: sa.Engine, job_id: int) -> Any:
    """A job's payload as stored, decoded (PostgreSQL's driver decodes jsonb itself)."""
    value = rows(engine, "SELECT payload FROM pending_jobs WHERE id = :id", id=job_id)[0][0]
    return value if isinstance(value, dict) else json.loads(value)


def test_enqueue_sets_the_concurrency_key(backend: str, db_url: str, engine: sa.Engine, tmp_path: Path) -> None:
    result = run_php(tmp_path, """
        $jobs = new Client(connect());
        out([
            'id' => $jobs->enqueue('echo', ['n' => 1], ['concurrency_key' => 'user:1']),
            'empty' => outcome(fn () => $jobs->enqueue('echo', [], ['concurrency_key' => ''])),
            'long' => outcome(fn () => $jobs->enqueue('echo', [], ['concurrency_key' => str_repeat('k', 192)])),
            'number' => outcome(fn () => $jobs->enqueue('echo', [], ['concurrency_key' => 1])),
            '191 characters' => outcome(fn () => $jobs->enqueue('echo', [],
                ['concurrency_key' => str_repeat('é', 191)])),
        ]);
    """, db_url, backend=backend)

    refused = "InvalidArgumentException: concurrency_key must be a non-empty string of at most 191 characters"
    assert (result["empty"], result["long"], result["number"], result["191 characters"]) == \
        (refused, refused, refused, "accepted")
    assert rows(engine, "SELECT concurrency_key FROM pending_jobs WHERE id = :id", id=result["id"]) == [("user:1",)]


def test_an_object_payload_keeps_keys_php_would_make_integers(backend: str, db_url: str, engine: sa.Engine,
                                                               tmp_path: Path) -> None:
    result = run_php(tmp_path, """
        $jobs = new Client(connect());
        $std = new stdClass();
        $std->{'0'} = 'x';
        $std->name = 'Zoë';
        out([
            'list' => outcome(fn () => $jobs->enqueue('echo', ['0' => 'x'])),
            'cast' => $jobs->enqueue('echo', (object) ['0' => 'x', '1' => ['a' => 1]]),
            'stdClass' => $jobs->enqueue('echo', $std),
            'empty' => $jobs->enqueue('echo', new stdClass()),
            'ArrayObject' => $jobs->enqueue('echo', new ArrayObject(['0' => 'x'])),
            'serialises to a list' => outcome(fn () => $jobs->enqueue('echo', new class implements JsonSerializable {
                public function jsonSerialize(): mixed { return [1, 2]; }
            })),
        ]);
    """, db_url, backend=backend)

    assert result.pop("list") == (
        "InvalidArgumentException: payload must be a JSON object (an associative array with string keys), got a "
        "list; for keys such as '0', pass an object: (object) ['0' => ...]")
    assert result.pop("serialises to a list") == \
        "InvalidArgumentException: payload must be a JSON object, but the object given encodes to [1,2]"
    decoded = {name: payload(engine, job_id) for name, job_id in result.items()}
    assert decoded == {"cast": {"0": "x", "1": {"a": 1}}, "stdClass": {"0": "x", "name": "Zoë"}, "empty": {},
                       "ArrayObject": {"0": "x"}}


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_task_name_with_whitespace_at_either_end_is_refused_as_python_refuses_it(
        backend: str, db_url: str, tmp_path: Path) -> None:
    names = [" ", "\t", " mail", "mail ", "mail\n", "\u3000mail", "mail\x1f", "send mail"]
    result = run_php(tmp_path, """
        $jobs = new Client(connect());
        out(array_map(fn (string $task) => outcome(fn () => $jobs->enqueue($task)),
            json_decode(file_get_contents('php://stdin'), true)));
    """, db_url, stdin=json.dumps(names), backend=backend)

    python = []
    for name in names:
        try:
            job_row(name)
            python.append("accepted")
        except ValueError as error:
            python.append(f"InvalidArgumentException: {error}")
    assert result == python == ["InvalidArgumentException: task must not be blank or start or end with "
                                "whitespace"] * 7 + ["accepted"]


def test_the_text_of_a_nul_escape_is_stored_and_a_real_nul_refused(backend: str, db_url: str, engine: sa.Engine,
                                                                   tmp_path: Path) -> None:
    result = run_php(tmp_path, r"""
        $jobs = new Client(connect());
        out([
            'text' => $jobs->enqueue('echo', ['re' => '\u0000', 'even' => '\\\u0000', 'path' => 'C:\\u0000dir']),
            'nul' => outcome(fn () => $jobs->enqueue('echo', ['x' => "a\0b"])),
            'nul after a backslash' => outcome(fn () => $jobs->enqueue('echo', ['x' => "\\\0"])),
            'nul key' => outcome(fn () => $jobs->enqueue('echo', ["a\0" => 1])),
        ]);
    """, db_url, backend=backend)

    refused = "InvalidArgumentException: payload contains a NUL character, which PostgreSQL jsonb cannot store"
    assert (result["nul"], result["nul after a backslash"], result["nul key"]) == (refused, refused, refused)
    assert payload(engine, result["text"]) == {"re": "\\u0000", "even": "\\\\u0000", "path": "C:\\u0000dir"}


def test_a_nul_in_task_queue_or_a_key_is_refused_on_every_database(backend: str, db_url: str, engine: sa.Engine,
                                                                    tmp_path: Path) -> None:
    # pdo_pgsql ends a string at its NUL: PostgreSQL stored 'a\0b' as 'a', and 'k\0x' and 'k\0y' were one key.
    result = run_php(tmp_path, r"""
        $jobs = new Client(connect());
        out([
            'task' => outcome(fn () => $jobs->enqueue("echo\0x")),
            'queue' => outcome(fn () => $jobs->enqueue('echo', [], ['queue' => "mail\0"])),
            'idempotency_key' => outcome(fn () => $jobs->enqueue('echo', [], ['idempotency_key' => "k\0x"])),
            'another idempotency_key' => outcome(fn () => $jobs->enqueue('echo', [], ['idempotency_key' => "k\0y"])),
            'concurrency_key' => outcome(fn () => $jobs->enqueue('echo', [], ['concurrency_key' => "\0"])),
        ]);
    """, db_url, backend=backend)

    assert result == {
        "task": "InvalidArgumentException: task must not contain NUL",
        "queue": "InvalidArgumentException: queue must not contain NUL",
        "idempotency_key": "InvalidArgumentException: idempotency_key must not contain NUL",
        "another idempotency_key": "InvalidArgumentException: idempotency_key must not contain NUL",
        "concurrency_key": "InvalidArgumentException: concurrency_key must not contain NUL",
    }
    assert rows(engine, "SELECT id FROM pending_jobs") == []


KEYS = [" k", "k ", "k\t", "k\n", "\u3000k", "k\x1f", "\u00a0k", "k k", "k"]


def test_keys_with_whitespace_at_either_end_are_refused_as_python_refuses_them(
        backend: str, db_url: str, engine: sa.Engine, tmp_path: Path) -> None:
    # MariaDB's PAD SPACE collation made 'k' and 'k ' one idempotency key (and one queue), PostgreSQL and
    # SQLite two.
    result = run_php(tmp_path, """
        $jobs = new Client(connect());
        $keys = json_decode(file_get_contents('php://stdin'), true);
        out(array_map(fn (string $name) => array_map(
            fn (string $key) => outcome(fn () => $jobs->enqueue('echo', [], [$name => $key])), $keys),
            ['idempotency_key' => 'idempotency_key', 'concurrency_key' => 'concurrency_key', 'queue' => 'queue']));
    """, db_url, stdin=json.dumps(KEYS), backend=backend)

    for name in ("idempotency_key", "concurrency_key", "queue"):
        # The rule of pending_jobs/validation.py: Python's str.strip() would change the key.
        expected = [f"InvalidArgumentException: {name} must not start or end with whitespace" if key != key.strip()
                    else "accepted" for key in KEYS]
        assert result[name] == expected, name
        assert expected.count("accepted") == 2
    assert sorted(rows(engine, "SELECT idempotency_key FROM pending_jobs WHERE idempotency_key IS NOT NULL")) == \
        [("k",), ("k k",)]


def test_a_payload_nested_deeper_than_31_levels_is_refused_before_any_sql(
        backend: str, db_url: str, engine: sa.Engine, tmp_path: Path) -> None:
    # MariaDB's JSON CHECK refuses deeper documents; the refusal came from the database, on MariaDB alone.
    result = run_php(tmp_path, r"""
        function nested(int $levels): array  // {"a": {"a": ... []}}: $levels arrays and objects
        {
            $value = [];
            for ($level = 1; $level < $levels; $level++) {
                $value = ['a' => $value];
            }
            return $value;
        }
        $jobs = new Client(connect());
        $objects = new stdClass();
        for ($level = 1; $level < 32; $level++) {
            $objects = (object) ['o' => $objects];
        }
        out([
            '31' => $jobs->enqueue('echo', nested(31)),
            'brackets in strings' => $jobs->enqueue('echo', ['a' => str_repeat('[{', 100), 'b' => '"\\' . "\"[[[["]),
            '32' => outcome(fn () => $jobs->enqueue('echo', nested(32))),
            '40' => outcome(fn () => $jobs->enqueue('echo', nested(40))),
            '32 objects' => outcome(fn () => $jobs->enqueue('echo', $objects)),
            '600' => outcome(fn () => $jobs->enqueue('echo', nested(600))),
        ]);
    """, db_url, backend=backend)

    deep: Any = []
    for _ in range(30):
        deep = {"a": deep}
    assert payload(engine, result.pop("31")) == deep
    assert payload(engine, result.pop("brackets in strings")) == {"a": "[{" * 100, "b": '"\\"[[[['}
    refused = ("InvalidArgumentException: payload nests {} levels deep; at most 31 can be stored on every database "
               "(MariaDB's limit)")
    assert result == {"32": refused.format(32), "40": refused.format(40), "32 objects": refused.format(32),
                      "600": refused.format("more than 512")}
    assert len(rows(engine, "SELECT id FROM pending_jobs")) == 2


def test_run_at_outside_the_years_1_to_9999_is_refused_before_any_sql(
        backend: str, db_url: str, engine: sa.Engine, tmp_path: Path) -> None:
    # Python's datetime and the three databases hold years 1..9999: year 0 was stored on SQLite and MariaDB
    # (which Python cannot read back) and refused by PostgreSQL's SQL; year 10000 and BC failed in SQL.
    result = run_php(tmp_path, """
        $jobs = new Client(connect());
        $utc = new DateTimeZone('UTC');
        $at = fn (string $time, ?DateTimeZone $zone = null) => outcome(
            fn () => $jobs->enqueue('echo', [], ['run_at' => new DateTimeImmutable($time, $zone ?? $utc)]));
        out([
            'first' => $at('0001-01-01 00:00:00'),
            'last' => $at('9999-12-31 23:59:59.999999'),
            'year 0' => $at('0000-06-01 00:00:00'),
            'BC' => $at('-0005-01-01 00:00:00'),
            'year 10000' => outcome(fn () => $jobs->enqueue('echo', [], ['run_at' => (new DateTimeImmutable(
                '9999-12-31 23:00:00', $utc))->modify('+1 day')])),
            'year 1 at +01:00, year 0 in UTC' => $at('0001-01-01 00:30:00', new DateTimeZone('+01:00')),
            'year 10000 at +01:00, 9999 in UTC' => outcome(fn () => $jobs->enqueue('echo', [], ['run_at' =>
                (new DateTimeImmutable('9999-12-31 23:30:00', $utc))->setTimezone(new DateTimeZone('+01:00'))])),
        ]);
    """, db_url, backend=backend)

    refused = "InvalidArgumentException: run_at must be in the years 1..9999 in UTC, not {}"
    assert result == {
        "first": "accepted",
        "last": "accepted",
        "year 0": refused.format("0000-06-01 00:00:00 +00:00"),
        "BC": refused.format("-0005-01-01 00:00:00 +00:00"),
        "year 10000": refused.format("10000-01-01 23:00:00 +00:00"),
        "year 1 at +01:00, year 0 in UTC": refused.format("0000-12-31 23:30:00 +00:00"),
        "year 10000 at +01:00, 9999 in UTC": "accepted",
    }
    assert len(rows(engine, "SELECT id FROM pending_jobs")) == 3


@pytest.mark.parametrize("backend", ["mysql"], indirect=True)
def test_a_mysql_connection_not_in_utf8mb4_is_refused_rather_than_storing_another_payload(
        backend: str, db_url: str, engine: sa.Engine, tmp_path: Path) -> None:
    # Over a latin1 connection MariaDB converted the client's UTF-8 again: "é" was stored as "Ã©", silently.
    result = run_php(tmp_path, """
        $dsn = str_replace('charset=utf8mb4', 'charset=%s', getenv('PENDING_JOBS_PDO_DSN'));
        $open = fn (string $charset) => new PDO(sprintf($dsn, $charset), getenv('PENDING_JOBS_PDO_USER') ?: null,
            getenv('PENDING_JOBS_PDO_PASSWORD') ?: null, [PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION]);
        out([
            'latin1' => outcome(fn () => (new Client($open('latin1')))->enqueue('echo', ['name' => 'Zoë'])),
            'utf8' => outcome(fn () => (new Client($open('utf8')))->enqueue('echo', ['name' => '🙂'])),
            'utf8mb4' => (new Client($open('utf8mb4')))->enqueue('echo', ['name' => 'Zoë 🙂']),
            // ASCII is the same bytes over every connection: an application on latin1 on purpose goes on.
            'latin1, ascii' => (new Client($open('latin1')))->enqueue('echo', ['name' => 'Zoe']),
        ]);
    """, db_url, backend=backend)

    assert result["latin1"].startswith("InvalidArgumentException: the PDO connection must use utf8mb4 (charset=utf8mb4 "
                                       'in the DSN), not {"client":"latin1","connection":"latin1","results":"latin1"}')
    assert result["utf8"].startswith("InvalidArgumentException: the PDO connection must use utf8mb4")
    assert rows(engine, "SELECT task, payload FROM pending_jobs ORDER BY id") == [
        ("echo", '{"name":"Zoë 🙂"}'), ("echo", '{"name":"Zoe"}')]
