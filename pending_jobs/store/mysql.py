"""MySQL 8.0.1+ and MariaDB 10.6+: select-then-update claims, since neither can SELECT inside an UPDATE
of the same table with LIMIT, and MariaDB has no UPDATE ... RETURNING."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa

from ..errors import ConfigError, DatabaseUnavailable
from ..schema import db_now
from .base import CLAIM_COLUMNS, PENDING, J, Store, _claim_order, _ids
from .models import Claim, ClaimedJob

log = logging.getLogger(__name__)


class MySQLStore(Store):
    """Claims under READ COMMITTED (set on the engine) so no gap locks block producers' INSERTs."""

    dialect = "mysql"

    def after(self, seconds: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
        micros = sa.func.round(seconds * 1_000_000)
        return sa.func.timestampadd(sa.literal_column("MICROSECOND"), micros, db_now())

    def check_version(self) -> None:
        with self.engine.connect() as conn:
            version = tuple(int(part) for part in conn.dialect.server_version_info or () if isinstance(part, int))
            mariadb = bool(getattr(conn.dialect, "is_mariadb", False))
        problem = version_problem(version, mariadb)
        if problem:
            raise ConfigError(problem)

    def check_writable(self) -> None:
        def work(conn: sa.Connection) -> bool:
            return bool(conn.execute(sa.text("SELECT @@global.read_only")).scalar())

        if self.transaction(work):
            raise DatabaseUnavailable("the database is read-only (read_only=ON): nothing claimed")

    def due_queues(self) -> list[str]:
        # DISTINCT over the claim index prefix is a loose index scan on MySQL/MariaDB.
        stmt = sa.select(J.c.queue).where(J.c.status == PENDING).distinct()
        return self.transaction(lambda conn: [row[0] for row in conn.execute(stmt)])

    def claim_select(self, where: Sequence[sa.ColumnElement[bool]], limit: int) -> sa.Select[Any]:
        """The locking read of a claim (also what the EXPLAIN test inspects)."""
        return (
            sa.select(*CLAIM_COLUMNS).where(*where).order_by(*_claim_order()).limit(limit)
            .with_for_update(skip_locked=True)
        )

    def _claim(self, kind: str, where: Callable[[], Sequence[sa.ColumnElement[bool]]], params: dict[str, Any],
               limit: int, owner: str, lease: float) -> Claim:
        token = secrets.token_hex(16)
        locked = self._cached(("claim", kind, limit), lambda: self.claim_select(where(), limit))
        mark = self._cached(("mark",), lambda: sa.update(J).where(J.c.id.in_(_ids()), J.c.status == PENDING)
                            .values(self._claim_values()))
        lease_params = self._lease_params(owner, token, lease)

        def work(conn: sa.Connection) -> list[ClaimedJob]:
            rows = conn.execute(locked, params).all()
            if not rows:
                return []
            marked = conn.execute(mark, {"ids": [row[0] for row in rows], **lease_params}).rowcount
            if marked != len(rows):
                # The locking read returned a row that was no longer pending: hand out only what this
                # token marked, never a job another runner holds.
                log.warning("claim: %d of %d locked rows were no longer pending", len(rows) - marked, len(rows))
                return self._claimed_under(conn, token)
            # The UPDATE added one attempt; the rows were read before it.
            return [ClaimedJob.from_row(row, token, attempted=1) for row in rows]

        return Claim(token, self.transaction(work, settle=lambda conn: self._claimed_under(conn, token)))


def version_problem(version: tuple[int, ...], mariadb: bool) -> str | None:
    """Why this server is too old for FOR UPDATE SKIP LOCKED, or None."""
    minimum = (10, 6) if mariadb else (8, 0, 1)
    if version[: len(minimum)] >= minimum:
        return None
    name = "MariaDB" if mariadb else "MySQL"
    shown = ".".join(str(part) for part in version)
    needed = ".".join(str(part) for part in minimum)
    return f"{name} {shown} is too old: pending-jobs needs {needed}+ for FOR UPDATE SKIP LOCKED"
