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
