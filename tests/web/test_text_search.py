"""The console's text search (`q`) finds text outside ASCII in payloads on every database: SQLAlchemy stores a
payload on SQLite and MariaDB as json.dumps writes it, `Zürich` as `Z\\u00fcrich`."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

import pending_jobs


def test_the_search_finds_text_outside_ascii_in_a_payload(console: Any, engine: sa.Engine) -> None:
    with engine.begin() as conn:
        wanted = pending_jobs.enqueue(conn, "geo", {"city": "Zürich", "name": "東京 \"quoted\""})
        other = pending_jobs.enqueue(conn, "geo", {"city": "Bern"})
    client = console()
    for text in ("Zürich", "東京", "ürich", '"quoted"'):
        found = client.get("/api/jobs", params={"q": text}).json()["jobs"]
        assert [job["id"] for job in found] == [wanted], text
    assert client.get("/api/jobs", params={"q": "Zürich", "count": "1"}).json()["count"] == 1
    assert [job["id"] for job in client.get("/api/jobs", params={"q": "Bern"}).json()["jobs"]] == [other]


@pytest.mark.parametrize("backend", ["sqlite", "mysql", "postgresql"], indirect=True)
def test_the_search_finds_a_slash_php_wrote_escaped(console: Any, engine: sa.Engine) -> None:
    # As PHP's json_encode writes it by default: `/` as `\/` (and `ü` as `\u00fc`), stored as text on MariaDB.
    php = '{"url": "https:\\/\\/shop.example\\/orders\\/42", "city": "Z\\u00fcrich\\/Nord"}'
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO pending_jobs (task, payload) VALUES ('php', :p)"), {"p": php})
        wanted = int(conn.execute(sa.text("SELECT MAX(id) FROM pending_jobs")).scalar_one())
        pending_jobs.enqueue(conn, "geo", {"url": "https://shop.example/orders/43"})
    client = console()
    for text in ("shop.example/orders/42", "https://shop.example/orders/42", "Zürich/Nord"):
        found = client.get("/api/jobs", params={"q": text}).json()["jobs"]
        assert [job["id"] for job in found] == [wanted], text
