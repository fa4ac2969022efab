"""Which compiled one-row INSERTs of a declared sql task may go together as one INSERT of many rows
(store/direct.py): only shapes where each row's result is certain; anything else goes one at a time."""

from __future__ import annotations

import pytest

from pending_jobs.store.direct import one_row_insert


@pytest.mark.parametrize("sql, table", [
    ("INSERT INTO users (name, email) VALUES (%(name)s, %(email)s)", "users"),
    ("insert into `users`(name) values(%(name)s)", "users"),
    ("INSERT INTO events VALUES (%(n)s, NOW(), COALESCE(%(a)s, 0))", "events"),
    ("  INSERT\nINTO t (a) VALUES (%(a)s)  ", "t"),
    ("INSERT INTO t (a, b) VALUES (-1, %(b)s - 2)", "t"),
])
def test_a_plain_one_row_insert_goes_together(sql: str, table: str) -> None:
    shape = one_row_insert(sql)
    assert shape is not None and shape[1] == table
    head, _, row = shape
    assert head + row == sql.rstrip() and row.startswith("(") and row.endswith(")")


@pytest.mark.parametrize("sql", [
    "INSERT IGNORE INTO users (name) VALUES (%(name)s)",  # ignored rows return nothing: ids would shift
    "INSERT INTO users (name) VALUES (%(name)s) ON DUPLICATE KEY UPDATE name = VALUES(name)",  # rowcount 2
    "INSERT INTO users (name) VALUES (%(name)s), (%(other)s)",  # already many rows
    "INSERT INTO users (name) SELECT name FROM people WHERE id = %(id)s",
    "INSERT INTO app.users (name) VALUES (%(name)s)",  # another schema: the id column is looked up here
    "INSERT INTO users (name) VALUES ('it''s', %(name)s)",  # a quote: not parsed, sent as written
    "INSERT INTO users (name) VALUES (%(name)s) -- a comment",
    "INSERT INTO users (name) VALUES (%(name)s); DELETE FROM users",
    "INSERT INTO users SET name = %(name)s",
    "REPLACE INTO users (name) VALUES (%(name)s)",
    "UPDATE users SET name = %(name)s",
    "INSERT INTO users (name) VALUES (%(name)s",  # not closed
    "INSERT INTO users (name) VALUES (%(name)s) AS new",
])
def test_any_other_statement_goes_alone(sql: str) -> None:
    assert one_row_insert(sql) is None
