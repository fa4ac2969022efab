"""The arithmetic of one limited claim (store/limited.py), without SQL: which of the locked jobs may start,
given the room each limit scope has (free slots, tokens in a rate bucket) and, for a per-key scope, which
of its jobs come first."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy.engine import Row

from ..limits import Scope

STAMP_AHEAD = 5.0
"""Seconds a bucket's stamp may be ahead of a claim's clock and still count: a claim's transaction is that
young when it locks the bucket. A stamp further ahead (the database clock stepped back, a row set by
hand) starts the bucket afresh, full, instead of holding its tokens back until the clock gets there."""


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
        # Per rate scope: the instant its tokens are of, the later of the database clock and the bucket's own
        # stamp. On PostgreSQL the clock is the claim's transaction start, which can be earlier than the stamp
        # a claim that began later but locked the bucket first wrote: counted from the clock and written back,
        # the stamp went backwards and the next claim was given that interval's tokens a second time.
        self.counted_at: dict[str, dt.datetime] = {}
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
                if refilled is not None and (refilled - now).total_seconds() > STAMP_AHEAD:
                    tokens, refilled = scope.rate.burst, None  # a stamp no claim wrote: the bucket starts afresh
                if refilled is not None:
                    elapsed = max(0.0, (now - refilled).total_seconds())
                    tokens = min(scope.rate.burst, tokens + elapsed * scope.rate.per_second)
                self.tokens[scope.name] = tokens
                self.counted_at[scope.name] = now if refilled is None else max(now, refilled)

    def left_at(self, now: dt.datetime) -> dict[str, tuple[float, dt.datetime]]:
        """Each rate bucket's tokens after the count, less what was taken, refilled until `now` or until the
        instant they were counted at if that is later; and that instant, the bucket's new stamp (never earlier
        than the one it had)."""
        left = {}
        for scope in self.scopes:
            if scope.rate is not None and scope.name in self.tokens:
                at = max(now, self.counted_at[scope.name])
                taken, elapsed = self.taken.get(scope.name, 0), (at - self.counted_at[scope.name]).total_seconds()
                tokens = min(scope.rate.burst, self.tokens[scope.name] + taken + elapsed * scope.rate.per_second)
                left[scope.name] = (tokens - taken, at)
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
