"""The arithmetic of one limited claim (store/limited.py), without SQL: which of the locked jobs may start,
given the room each limit scope has (free slots, tokens in a rate bucket) and, for a per-key scope, which
of its jobs come first."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy.engine import Row

from ..limits import Scope


class Admission:
    """Which locked jobs may start: the arithmetic of one limited claim, without SQL."""

    def __init__(self, rows: Sequence[Row[Any]], scopes_of: dict[int, list[Scope]]) -> None:
        self.rows = rows
        self.scopes_of = scopes_of
        self.scopes = {scope for scopes in scopes_of.values() for scope in scopes}
        self.names = {scope.name for scope in self.scopes}
        self.held: set[str] = set()
        self.room: dict[str, int] = {}
        self.tokens: dict[str, float] = {}
        self.counted_at: dict[str, dt.datetime] = {}  # per rate scope: the database clock its tokens are of
        self.taken: dict[str, int] = {}  # per rate scope: tokens the admitted jobs took
        self.heads: dict[str, set[int]] = {}
        self.blocked_by_others = False
        self._rate_short: dict[str, float] = {}

    def count(self, held: dict[str, Row[Any]], running: dict[str, int],
              clock: Callable[[Any], dt.datetime | None]) -> None:
        """Room left under each held scope: slots not running, tokens in the bucket refilled until now."""
        self.held = set(held)
        for scope in self.scopes:
            if scope.name not in held:
                continue
            if scope.kind == "running":
                self.room[scope.name] = scope.limit - running.get(scope.name, 0)
            elif scope.rate is not None:
                row = held[scope.name]
                tokens = scope.rate.burst if row.tokens is None else float(row.tokens)
                now, refilled = clock(row.now), clock(row.refilled_at)
                assert now is not None  # the locking statement reads the database clock
                if refilled is not None:
                    elapsed = max(0.0, (now - refilled).total_seconds())
                    tokens = min(scope.rate.burst, tokens + elapsed * scope.rate.per_second)
                self.tokens[scope.name] = tokens
                self.counted_at[scope.name] = now

    def left_at(self, now: dt.datetime) -> dict[str, float]:
        """Each rate bucket's tokens as of `now` (after the count): refilled until then, less what was taken."""
        left = {}
        for scope in self.scopes:
            if scope.rate is not None and scope.name in self.tokens:
                taken, elapsed = self.taken.get(scope.name, 0), (now - self.counted_at[scope.name]).total_seconds()
                left[scope.name] = min(scope.rate.burst, self.tokens[scope.name] + taken
                                       + max(0.0, elapsed) * scope.rate.per_second) - taken
        return left

    def keyed_with_room(self) -> dict[Scope, int]:
        """Per-key scopes with free slots, and how many."""
        return {scope: self.room[scope.name] for scope in self.scopes
                if scope.key is not None and scope.kind == "running" and self.room.get(scope.name, 0) > 0}

    def admit(self) -> list[Row[Any]]:
        """The jobs that may start, in claim order, each taking a slot or token of every scope it is under."""
        admitted = []
        for row in self.rows:
            scopes = self.scopes_of[row[0]]
            if any(scope.name not in self.held for scope in scopes):
                self.blocked_by_others = True
                continue
            if all(self._fits(row[0], scope) for scope in scopes):
                for scope in scopes:
                    if scope.kind == "running":
                        self.room[scope.name] -= 1
                    else:
                        self.tokens[scope.name] -= 1
                        self.taken[scope.name] = self.taken.get(scope.name, 0) + 1
                admitted.append(row)
        return admitted

    def _fits(self, job_id: int, scope: Scope) -> bool:
        if scope.kind == "rate":
            if self.tokens[scope.name] < 1 and scope.rate is not None:
                self._rate_short[scope.name] = (1 - self.tokens[scope.name]) / scope.rate.per_second
            return self.tokens[scope.name] >= 1
        if self.room[scope.name] <= 0:
            return False
        return scope.key is None or job_id in self.heads.get(scope.name, set())

    def full(self) -> set[Scope]:
        """Per-key scopes with no slot left: the next claim leaves their jobs out of its read."""
        return {scope for scope in self.scopes
                if scope.key is not None and scope.kind == "running" and self.room.get(scope.name, 1) <= 0}

    def rate_waits(self) -> list[float]:
        """Seconds until each rate scope that held jobs back has a token again."""
        return list(self._rate_short.values())
