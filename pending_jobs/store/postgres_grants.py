"""PostgreSQL: the grant on id sequences a run needs, which `check`'s probes of the tables cannot see (ops.py).

Each INSERT into a table with a serial id draws it from the table's own sequence (nextval), which takes USAGE or
UPDATE on that sequence: INSERT on the table does not give it (it does for an identity column's). The tables'
probes insert no row, so draw no id.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

# The sequence behind each (table, column) still there (to_regclass: a table missing is the schema check's to name),
# and whether this session may draw from it. CASE keeps pg_get_serial_sequence from a table that is not there. An
# identity column's sequence is left out: PostgreSQL checks no privilege on it, INSERT on the table is enough.
UNUSABLE = sa.text(
    "SELECT quote_ident(current_user), seq FROM ("
    " SELECT CASE WHEN to_regclass(t) IS NOT NULL THEN pg_get_serial_sequence(t, c) END AS seq,"
    " (SELECT a.attidentity FROM pg_attribute a WHERE a.attrelid = to_regclass(t) AND a.attname = c) AS identity"
    " FROM unnest(CAST(:tables AS text[]), CAST(:columns AS text[])) AS u(t, c)) s"
    " WHERE seq IS NOT NULL AND identity = '' AND NOT has_sequence_privilege(seq, 'USAGE, UPDATE') ORDER BY seq")


def sequence_problem(conn: sa.Connection, columns: Sequence[sa.Column[int]]) -> str | None:
    """Why this session's user may not draw the ids of `columns` (serial ids) from their sequences, ending with the
    GRANT that lets it; None when it may."""
    rows = conn.execute(UNUSABLE, {"tables": [column.table.name for column in columns],
                                   "columns": [column.name for column in columns]}).all()
    if not rows:
        return None
    sequences = ", ".join(str(row[1]) for row in rows)
    return (f"the database user may not draw ids from the sequence{'s' if len(rows) > 1 else ''} {sequences} (new "
            f"jobs, runs, errors and callback attempts take their ids from them): GRANT USAGE ON SEQUENCE {sequences} "
            f"TO {rows[0][0]}")
