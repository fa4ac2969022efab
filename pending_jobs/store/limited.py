"""The limited claim: concurrency limits (per queue, per concurrency key) and rate limits, enforced inside
the claim transaction, across every runner.

A queue with no limit (and no task limit configured at all) takes the plain claim of base.py, unchanged.
Otherwise one claim transaction:

1. locks the due jobs of the queue as the plain claim does (SKIP LOCKED), leaving out keys found full
   at the last claim (so a burst of one key cannot hide the other keys' jobs behind it);
2. locks the row of every limit scope those jobs fall under (`pending_job_limits`, SKIP LOCKED: a scope
   another runner is admitting jobs under is skipped, never waited for: unrelated scopes never wait);
3. counts what runs under each scope (the running rows themselves are the slots: a job that ends, is
   released or is rescued gives its slot back in that same statement, and nothing can drift);
4. admits jobs in claim order while every scope has room, a per-key scope only to its first due jobs
   (so a limit of 1 runs each key's jobs in order: priority, run_at, id), a rate scope while its
   token bucket (refilled by the database clock) holds a token;
5. marks the admitted jobs running. The rest stay pending, their attempts untouched.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
from collections.abc import Iterable, Sequence
from operator import attrgetter
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Row

from ..limits import Limits, Scope
from ..models import Claim, ClaimedJob, utc
from ..schema import Time, db_now, paused_queues
from ..schema import limits as L
from ..schema import pending_jobs as J
from ..states import JOB_PENDING, JOB_RUNNING
from . import columns
from .admission import Admission
from .base import Store
from .columns import CLAIM_COLUMNS, claim_order, due_in, due_in_queue

log = logging.getLogger(__name__)

FIRST_SIGHT_TRIES = 3  # the queue's scopes, then its jobs' (a row created by another host meanwhile: once more)
BUSY_RETRY = 0.05  # seconds before looking again at scopes another runner was admitting jobs under


class LimitedStore(Store):
    """A store whose claims keep to the configured limits (one per run: it remembers full keys)."""

    def __init__(self, store: Store, limits: Limits) -> None:
        super().__init__(store.engine, store.sql)
        self.limits = limits
        self._known: set[str] = set()  # scope rows known to exist
        self._full: dict[str, set[Scope]] = {}  # per queue: per-key scopes found full at its last claim

    def claims_together(self, queue: str) -> bool:
        """Not where a limit applies: its claim counts running rows, and locked pending ones are not."""
        return super().claims_together(queue) and not self.limits.applies(queue)

    def claim(self, queue: str, limit: int, owner: str, lease: float) -> Claim:
        """The plain claim where no limit applies; else the limited claim (see the module)."""
        if not self.limits.applies(queue):
            return super().claim(queue, limit, owner, lease)
        cap = self.limits.cap_only(queue)
        if cap is not None:
            return self._capped(queue, cap, limit, owner, lease)
        claim, missing = self._limited(queue, limit, owner, lease)
        for _ in range(FIRST_SIGHT_TRIES):
            if not missing:
                break
            # Scopes seen for the first time (the queue's own, then the keys'): create their rows, look again.
            self.ensure_scopes(missing)
            if claim.jobs:  # jobs without a limit were claimed already: the next claim admits the rest
                break
            claim, missing = self._limited(queue, limit, owner, lease)
        return claim

    def _capped(self, queue: str, cap: Scope, limit: int, owner: str, lease: float) -> Claim:
        """A queue whose only limit is its max_running: the plain claim (dives first once caught up), the cap's
        row locked first, at most the room the cap leaves (counted by the claim statement: columns.cap_room)."""
        self.ensure_scopes([cap.name])
        params: dict[str, Any] = {"claim_queue": queue, "cap_limit": cap.limit}
        if (where := self.due_where(queue, params)) is None:
            return Claim(secrets.token_hex(16), [])
        busy: list[bool] = []  # whether another runner was claiming from this queue right then

        def locked(conn: sa.Connection) -> dict[str, Any] | None:
            # The name alone, by `=`: _lock's list of names and three more columns (a bucket's tokens and refill
            # time, the clock) cost ≈ 250 µs more of the runner's CPU a claim, with PyMySQL and psycopg alike.
            bound = self.sql.lock_cap(conn, {**params, "cap_name": cap.name}, columns.cap_room)
            busy[:] = [] if bound is not None else [True]
            if bound is None:  # held by another runner, or deleted: then the next claim creates it again
                self._forget_gone(conn, {cap.name})
            return bound

        claim = self.caught_up(queue, self._claim(("capped", *where[0]), where[1], params, limit, owner, lease,
                                                  locked), limit, params)
        return dataclasses.replace(claim, retry_in=BUSY_RETRY) if busy and not claim.jobs else claim

    def ensure_scopes(self, names: Iterable[str]) -> None:
        """Create the rows of these scopes (whichever host comes first; the others' inserts change nothing)."""
        if wanted := sorted(set(names) - self._known):
            stmt = self.sql.insert_ignore(L)
            self.transaction(lambda conn: conn.execute(stmt, [{"name": name} for name in wanted]))
            self._known.update(wanted)

    def _limited(self, queue: str, limit: int, owner: str, lease: float) -> tuple[Claim, set[str]]:
        token = secrets.token_hex(16)
        missing: set[str] = set()
        wait: list[float] = []

        def work(conn: sa.Connection) -> list[ClaimedJob]:
            missing.clear()
            wait.clear()
            full = self._still_full(conn, self._full.get(queue, set()))
            if any(scope.key is None for scope in full):  # the queue's max_running is reached
                self._full[queue] = full
                return []
            room, hint, first = self._queue_room(conn, queue, missing)
            if room is not None and room < 1:
                self._full[queue] = full
                # Only while a job is due: a drain stops when none is, not at its runtime's end.
                wait.extend([hint] if hint is not None and self._any_due(conn, queue) else [])
                return []
            # Held jobs (held.py) start under no limit, only to be put back: a read sized to the room would let
            # them fill it, and the jobs that run behind them waited a claim per held job (a run could serve none).
            size = limit if self.limits.held_tasks else min(limit, room or limit)
            marked: list[ClaimedJob] = []
            rows: Sequence[Row[Any]]
            # Only task limits apply here (the queue has none of its own): jobs of other tasks go at once.
            split = None if full or queue in self.limits.queues else self._split(conn, queue, size, token, owner,
                                                                                   lease)
            if split is not None:
                marked, rows = split
            elif full:
                rows = conn.execute(_candidates(queue, full, size)).all()
            else:  # the common case: one statement built once per batch size
                read = self.sql.cached(("limits_candidates", size), lambda: _candidates(
                    sa.bindparam("claim_queue", type_=sa.String), set(), size))
                rows = conn.execute(read, {"claim_queue": queue}).all()
            if not rows:
                self._full[queue] = full
                return marked
            scopes_of = self._scopes_of(queue, rows)
            free = [row for row in rows if not scopes_of[row[0]]]  # under no limit: they start, whatever the rest
            admission = Admission([row for row in rows if scopes_of[row[0]]], scopes_of)
            held = {**first.held, **self._lock(conn, admission.names - first.held.keys())}
            if unheld := admission.names - held.keys():
                self._forget_gone(conn, unheld)
            missing.update(admission.names - held.keys() - self._known)
            self._known.update(held)
            if missing:  # admit nothing until the rows exist: the claim is made again once they do
                return marked
            running = {**first.running, **self._running(conn, [s for s in admission.scopes
                                                               if s.name in held and s.name not in first.running])}
            admission.count(held, running, self.sql.clock_value)
            admission.heads = self._heads(conn, admission.keyed_with_room())
            started = self._mark(conn, free + admission.admit(), token, owner, lease)
            self._spend(conn, admission, started)
            self._full[queue] = full | admission.full()
            if admission.blocked_by_others:
                wait.append(BUSY_RETRY)
            wait.extend(admission.rate_waits())
            return marked + started

        jobs = self.transaction(work, settle=lambda conn: self._claimed_under(conn, token))
        jobs.sort(key=attrgetter("id"))  # higher priority first, then id (as the plain claim's)
        jobs.sort(key=attrgetter("priority"), reverse=True)
        return Claim(token, jobs, retry_in=min(wait) if wait and not jobs else None), set(missing)

    def _any_due(self, conn: sa.Connection, queue: str) -> bool:
        """Whether a job of `queue` is due (a queue out of tokens reads no candidate to know)."""
        stmt = self.sql.cached(("limits_any_due",), lambda: sa.select(J.c.id).where(*due_in_queue()).limit(1))
        return conn.execute(stmt, {"claim_queue": queue}).first() is not None

    def _scopes_of(self, queue: str, rows: Sequence[Row[Any]]) -> dict[int, list[Scope]]:
        """Each locked job's scopes by id, worked out once per task and key (the rows of a claim share few)."""
        known: dict[tuple[str, str | None], list[Scope]] = {}
        found = {}
        for row in rows:
            kind = (row.task, row.concurrency_key)
            if kind not in known:
                known[kind] = self.limits.scopes(queue, *kind)
            found[row[0]] = known[kind]
        return found

    def _queue_room(self, conn: sa.Connection, queue: str,
                    missing: set[str]) -> tuple[int | None, float | None, _QueueHeld]:
        """How many jobs the queue's own limits (max_running, its rate) let start now, their rows locked
        first, so a claim never locks more due rows than it may start (None: no such limit); the seconds
        until a token comes when the rate is what stops it; and what was locked and counted (kept for the
        rest of the claim)."""
        scopes = self.limits.queue_scopes(queue)
        if not scopes:
            return None, None, _QueueHeld()
        names = {scope.name for scope in scopes}
        held = self._lock(conn, names)
        if set(held) != names:
            self._forget_gone(conn, names - held.keys())
            missing.update(names - held.keys() - self._known)
            return 0, BUSY_RETRY, _QueueHeld()
        # Counted in a statement of its own, after the lock is had: a count read in the locking statement
        # would see the database as it was when that statement began, before the last holder committed.
        running = self._running(conn, scopes)
        probe = Admission([], {})
        probe.scopes, probe.names = set(scopes), names
        probe.count(held, running, self.sql.clock_value)
        room = min([*probe.room.values(), *(int(tokens) for tokens in probe.tokens.values())])
        waits = [(1 - tokens) / scope.rate.per_second for scope in scopes
                 if scope.rate is not None and (tokens := probe.tokens[scope.name]) < 1]
        return room, max(waits) if waits else None, _QueueHeld(held, running)

    def _split(self, conn: sa.Connection, queue: str, size: int, token: str, owner: str,
               lease: float) -> tuple[list[ClaimedJob], Sequence[Row[Any]]] | None:
        """Where only task limits exist: jobs of tasks without one claimed in the locking statement itself
        (PostgreSQL), the rest returned locked, in claim order, for admission; None where the database
        cannot."""
        limited = tuple(sorted(self.limits.tasks))
        params = {"claim_queue": queue, "claim_owner": owner[:128], "claim_token": token, "claim_lease": float(lease)}
        found = self.sql.lock_mark_split(  # built once per batch size and set of limited tasks (the key says so)
            conn, ("limits_split", size, limited),
            lambda columns: sa.select(*columns).where(*due_in_queue()).order_by(*claim_order()).limit(size),
            self._claim_values, (*CLAIM_COLUMNS, J.c.concurrency_key, J.c.run_at), params,
            # One bound value per task, not an expanding list: that was rendered again at each claim.
            lambda: J.c.task.not_in([sa.literal(task, sa.String) for task in limited]))
        if found is None:
            return None
        done, rest = found
        claimed = [ClaimedJob.from_row(row[: len(CLAIM_COLUMNS)], token) for row in done]
        return claimed, sorted(rest, key=lambda row: (-row.priority, row.run_at, row.id))

    def _still_full(self, conn: sa.Connection, full: set[Scope]) -> set[Scope]:
        """Of the scopes full at the last claim, those still full (a plain read: only a hint)."""
        if not full:
            return set()
        counts = self._running(conn, full)
        return {scope for scope in full if counts[scope.name] >= scope.limit}

    def _forget_gone(self, conn: sa.Connection, names: set[str]) -> None:
        """Of scope rows a lock did not get that this store created or saw, forget those no longer there (deleted
        by hand: the table keeps a row per key ever limited), so the claim creates them again. Without this a
        serving run took them for rows another runner held, for ever: their jobs never started again in it.
        A plain read, made only when a lock missed."""
        if not (known := names & self._known):
            return
        stmt = self.sql.cached(("limits_exist",), lambda: sa.select(L.c.name).where(
            L.c.name.in_(sa.bindparam("names", expanding=True))))
        there = {row.name for row in conn.execute(stmt, {"names": sorted(known)})}
        self._known -= known - there

    def _lock(self, conn: sa.Connection, names: set[str]) -> dict[str, Row[Any]]:
        """Lock the rows of these scopes, skipping those another claim holds; by name, with the clock."""
        if not names:
            return {}
        stmt = self.sql.cached(("limits_lock",), lambda: sa.select(
            L.c.name, L.c.tokens, L.c.refilled_at, db_now().label("now"),
        ).where(L.c.name.in_(sa.bindparam("names", expanding=True))).with_for_update(skip_locked=True))
        return {row.name: row for row in conn.execute(stmt, {"names": sorted(names)})}

    def _running(self, conn: sa.Connection, scopes: Iterable[Scope]) -> dict[str, int]:
        """How many jobs run under each `running` scope: one grouped read for the per-key scopes (served by
        the concurrency index), one count per queue cap (served by the claim index)."""
        scopes = [scope for scope in scopes if scope.kind == "running"]
        counts = dict.fromkeys((scope.name for scope in scopes), 0)
        keyed = [scope for scope in scopes if scope.key is not None]
        if keyed:
            # One row per running job of these keys (no GROUP BY: MariaDB would sort them in a temporary
            # table); running jobs are few, bounded by the runners' threads.
            stmt = self.sql.cached(("limits_running",), lambda: sa.select(
                J.c.queue, J.c.task, J.c.concurrency_key,
            ).where(J.c.concurrency_key.is_not(None), J.c.concurrency_key.in_(sa.bindparam("keys", expanding=True)),
                    J.c.status == JOB_RUNNING))
            for queue, task, key in conn.execute(stmt, {"keys": sorted({s.key for s in keyed if s.key is not None})}):
                for scope in keyed:
                    if scope.key == key and scope.task in (None, task) and scope.queue in (None, queue):
                        counts[scope.name] += 1
        for scope in scopes:
            if scope.key is None:
                count = self.sql.cached(("limits_queue_running",), lambda: sa.select(sa.func.count()).where(
                    J.c.status == JOB_RUNNING, J.c.queue == sa.bindparam("queue", type_=sa.String)))
                counts[scope.name] = int(conn.execute(count, {"queue": scope.queue}).scalar_one())
        return counts

    def _heads(self, conn: sa.Connection, room: dict[Scope, int]) -> dict[str, set[int]]:
        """The first due jobs of each per-key scope, as many as it has room for, in claim order: only they
        may start (one UNION ALL of index-served reads)."""
        if not room:
            return {}
        # Per-task scopes first, then per-queue ones: the statement is built once per such shape and its
        # values bound (built afresh with 20 keys' values, it cost ≈ 10 ms of CPU a claim, measured).
        scopes = sorted(room, key=lambda scope: scope.task is None)
        shape = (sum(scope.task is not None for scope in scopes), len(scopes))
        params: dict[str, Any] = {}
        for number, scope in enumerate(scopes):
            params |= {f"key_{number}": scope.key, f"free_{number}": room[scope],
                       f"of_{number}": scope.task if scope.task is not None else scope.queue}
        heads: dict[str, set[int]] = {scope.name: set() for scope in scopes}
        for job_id, number in conn.execute(self.sql.cached(("limits_heads", shape), lambda: _heads(*shape)), params):
            heads[scopes[int(number)].name].add(int(job_id))
        return heads

    def _spend(self, conn: sa.Connection, admission: Admission, started: list[ClaimedJob]) -> None:
        """Write back the buckets the admitted jobs took from, refilled until their `started_at` (read back):
        a job takes its token at the instant its start is stamped, so no second of starts holds more than
        the rate plus the burst, and tokens that come while the claim runs stay. (Refilled until the write,
        they were lost where the clock is per statement, as MariaDB's: 4 runners at 50/s started 34/s.)"""
        if not admission.taken or not started:  # no token taken: the bucket goes on refilling as it was
            return
        read = self.sql.cached(("limits_stamp",), lambda: sa.select(J.c.started_at).where(J.c.id == sa.bindparam("id")))
        now = utc(conn.execute(read, {"id": started[0].id}).scalar_one())
        assert now is not None
        stmt = self.sql.cached(("limits_spend",), lambda: sa.update(L).where(
            L.c.name == sa.bindparam("scope", type_=sa.String),
        ).values(tokens=sa.bindparam("left", type_=sa.Float), refilled_at=sa.bindparam("now", type_=Time)))
        conn.execute(stmt, [{"scope": name, "left": left, "now": at.replace(tzinfo=None)}  # naive UTC, as the
                            for name, (left, at) in admission.left_at(now).items()])          # store binds all

    def _mark(self, conn: sa.Connection, rows: Sequence[Row[Any]], token: str, owner: str,
              lease: float) -> list[ClaimedJob]:
        if not rows:
            return []
        # By primary key alone: this transaction holds the rows' locks (SQLite: the write lock) since it
        # read them pending. A `status = 'pending'` guard here let PostgreSQL's generic plan (psycopg
        # prepares after 5 runs) read the claim index's whole pending range on a table not yet analysed
        # (measured: 118 ms instead of under 1 ms per claim at 30,000 pending rows).
        stmt = self.sql.cached(("limits_mark",), lambda: sa.update(J).where(self.sql.id_in())
                               .values(self._claim_values()))
        marked = conn.execute(stmt, {"ids": [row[0] for row in rows], "claim_owner": owner[:128],
                                     "claim_token": token, "claim_lease": float(lease)}).rowcount
        if marked != len(rows):
            log.warning("limited claim: %d of %d locked rows were no longer pending", len(rows) - marked, len(rows))
            ids = {row[0] for row in rows}  # not the jobs the split marked under this token already
            return [job for job in self._claimed_under(conn, token) if job.id in ids]
        return [ClaimedJob.from_row(row[: len(CLAIM_COLUMNS)], token, attempted=1) for row in rows]


def _candidates(queue: str | sa.BindParameter[str], full: set[Scope], limit: int) -> sa.Select[Any]:
    """The plain claim's locking read, with the concurrency key, leaving out keys known to be full."""
    where = list(due_in(queue))
    by_queue = sorted({scope.key for scope in full if scope.key is not None and scope.task is None})
    by_task = sorted({(scope.task, scope.key) for scope in full if scope.key is not None and scope.task is not None})
    if by_queue:
        where.append(sa.or_(J.c.concurrency_key.is_(None), J.c.concurrency_key.not_in(by_queue)))
    if by_task:
        where.append(sa.or_(J.c.concurrency_key.is_(None), sa.tuple_(J.c.task, J.c.concurrency_key).not_in(by_task)))
    return (sa.select(*CLAIM_COLUMNS, J.c.concurrency_key).where(*where).order_by(*claim_order()).limit(limit)
            .with_for_update(skip_locked=True))


def _heads(by_task: int, scopes: int) -> sa.CompoundSelect[Any]:
    """The first due jobs of `scopes` per-key scopes (the first `by_task` of a task, the rest of a queue), each
    `free_N` of them, of key `key_N` and task or queue `of_N`, in claim order; a column says which scope."""
    paused = sa.select(paused_queues.c.queue).where(paused_queues.c.queue == J.c.queue)
    parts = []
    for number in range(scopes):
        of = J.c.task if number < by_task else J.c.queue
        where = [J.c.concurrency_key == sa.bindparam(f"key_{number}", type_=sa.String), J.c.status == JOB_PENDING,
                 J.c.run_at <= db_now(), ~paused.exists(), of == sa.bindparam(f"of_{number}", type_=sa.String)]
        first = (sa.select(J.c.id).where(*where).order_by(*claim_order())
                 .limit(sa.bindparam(f"free_{number}", type_=sa.Integer)).subquery())
        parts.append(sa.select(first.c.id, sa.literal(number).label("scope")))
    return sa.union_all(*parts)


@dataclasses.dataclass(frozen=True)
class _QueueHeld:
    """The queue's own limit rows, locked, and what runs under them (read once per claim)."""

    held: dict[str, Row[Any]] = dataclasses.field(default_factory=dict)
    running: dict[str, int] = dataclasses.field(default_factory=dict)
