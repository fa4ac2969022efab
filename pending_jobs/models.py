"""Rows and records as frozen dataclasses: what the store hands to the runner, the callback sender and
the CLI. Plain Python (no SQLAlchemy), so the runner and the unit tests' in-memory store share them."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal, TypeVar

from .validation import lenient_json, shown_json

F = TypeVar("F")


def utc(value: Any) -> dt.datetime | None:
    """Every time the store returns is timezone-aware UTC, whatever the dialect gave back. A value that is not
    a time reads as None: a producer may write anything in a time column, and the driver then hands it over as
    it is (SQLite's text, MariaDB's zero date as PyMySQL returns it, PostgreSQL's infinity: store/postgres.py)."""
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)
    if not isinstance(value, str):
        return None
    try:  # text as SQLite holds it ('2024-05-01 12:00:00.123'), parsed as SQLAlchemy's DateTime would
        return utc(dt.datetime.fromisoformat(value))
    except (ValueError, OverflowError):  # not ISO, or an offset that takes it beyond year 1..9999
        return None


def _frozen(cls: type[F], **fields: Any) -> F:
    """An instance of the frozen dataclass `cls` from all of its fields, made without its generated
    `__init__`, which sets each field through `object.__setattr__`: ≈ 0.2 µs a field, more than the rest
    of a no-op job's bookkeeping, for the two made once per job (ClaimedJob.from_row, Outcome.success).
    Equality, hashing, repr, pickling and `dataclasses.replace` read the fields, so nothing else changes."""
    instance = object.__new__(cls)
    instance.__dict__.update(fields)
    return instance


COUNT_MAX = 2**31 - 1
"""The largest value of the integer counters (attempts, callback_attempts): INT on every database."""


def count(value: Any) -> int:
    """A counter as a producer's row holds it, as a whole number within 0..COUNT_MAX: text or a number no
    counter reaches (SQLite stores what it is given) reads as COUNT_MAX, i.e. spent."""
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        return COUNT_MAX
    return min(max(number, 0), COUNT_MAX)


# -- jobs ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ClaimedJob:
    """A job this runner holds under a lease; `payload_text` is unparsed so a bad row cannot break a batch."""

    id: int
    task: str
    queue: str
    payload_text: str | None
    attempt: int
    max_attempts: int
    priority: int
    callback_url: str | None
    token: str
    problem: str | None = None
    """Why the row cannot run even before its payload is read (a column holding what no producer meant)."""

    @classmethod
    def from_row(cls, row: Sequence[Any], token: str, attempted: int = 0) -> ClaimedJob:
        """From a row of the store's claim columns, in their order (positional: this runs per claimed row).

        `attempted` is added to the row's attempts when it was read before the claim's UPDATE counted one.
        A number column holding text (SQLite stores what it is given) does not break the claim: the job
        carries the problem and fails alone.
        """
        job_id, task, queue, payload_text, attempts, max_attempts, priority, callback_url = row
        try:
            return _frozen(cls, id=int(job_id), task=task, queue=queue, payload_text=payload_text,
                           attempt=int(attempts) + attempted, max_attempts=int(max_attempts), priority=int(priority),
                           callback_url=callback_url, token=token, problem=None)
        except (TypeError, ValueError, OverflowError):  # OverflowError: SQLite keeps a REAL inf in any column
            return cls._unusable(row, token, attempted)

    @classmethod
    def _unusable(cls, row: Sequence[Any], token: str, attempted: int) -> ClaimedJob:
        job_id, task, queue, payload_text, attempts, max_attempts, priority, callback_url = row
        bad = [f"{name} is {value!r}, not a whole number" for name, value in
               (("attempts", attempts), ("max_attempts", max_attempts), ("priority", priority))
               if not isinstance(value, int) or isinstance(value, bool)]
        attempt = (attempts if isinstance(attempts, int) else 0) + attempted
        return cls(int(job_id), str(task), str(queue), payload_text, attempt, attempt, 0,
                   callback_url if isinstance(callback_url, str) else None, token, "; ".join(bad))


@dataclasses.dataclass(frozen=True)
class Claim:
    """One claim transaction's jobs, all under one fencing token."""

    token: str
    jobs: list[ClaimedJob]
    retry_in: float | None = None
    """Seconds after which jobs held back by a limit (a rate, a scope another runner was busy with) may
    be admitted; None when nothing was held back that time alone frees."""


OutcomeKind = Literal["succeeded", "retry", "failed", "recorded", "dropped", "held", "unstarted"]


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What became of one job. `recorded`: written in the handler's own transaction; `dropped`: its lease was
    taken over first (a stale runner); `held`: put back unrun, attempt uncounted, for `delay` s (held.py);
    `unstarted`: a stopping group never ran it (runner/shared.py): the producer puts it back pending."""

    job: ClaimedJob
    kind: OutcomeKind
    result: Any = None
    error: str = ""
    delay: float = 0.0
    cancelling: bool = False
    """A retry or failure of a job an operator asked to cancel: the store ends it `cancelled` instead."""

    @classmethod
    def success(cls, job: ClaimedJob, result: Any = None) -> Outcome:
        """`Outcome(job, "succeeded", result=result)`, made the fast way (see _frozen): once per job."""
        return _frozen(cls, job=job, kind="succeeded", result=result, error="", delay=0.0, cancelling=False)


@dataclasses.dataclass(frozen=True)
class Together:
    """What became of jobs run in one shared transaction (`JobStore.run_together`): all recorded
    `succeeded` in one commit, or nothing written at all. `culprit` is the index of the job whose
    handler raised (the others may share a transaction again without it); `reason` is for the log."""

    recorded: bool
    culprit: int | None = None
    reason: str = ""
    unstarted: int = 0  # the last N jobs were never run (the run stops): nothing of theirs was written


@dataclasses.dataclass(frozen=True)
class Finished:
    """How many rows each outcome kind changed; fewer than asked means a stale lease. A retried or
    failed job whose cancellation an operator asked for ends `cancelled` instead."""

    succeeded: int = 0
    retried: int = 0
    failed: int = 0
    cancelled: int = 0
    held: int = 0


@dataclasses.dataclass(frozen=True)
class Rescued:
    """What the rescue of expired leases did: back to pending, failed (no attempts left), cancelled; and
    how many finished jobs' callbacks, pending with no time, it made due."""

    pending: int = 0
    failed: int = 0
    cancelled: int = 0
    callbacks: int = 0

    @property
    def total(self) -> int:
        return self.pending + self.failed + self.cancelled


@dataclasses.dataclass(frozen=True)
class Job:
    """A whole `pending_jobs` row, for status, list and show."""

    id: int
    queue: str
    task: str
    payload: Any
    status: str
    priority: int
    run_at: dt.datetime | None
    attempts: int
    max_attempts: int
    result: Any
    last_error: str | None
    callback_url: str | None
    callback_status: str | None
    callback_attempts: int
    callback_next_at: dt.datetime | None
    callback_last_error: str | None
    idempotency_key: str | None
    lease_owner: str | None
    lease_expires_at: dt.datetime | None
    cancel_requested: bool
    created_at: dt.datetime | None
    updated_at: dt.datetime | None
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    unreadable: dict[str, str] = dataclasses.field(default_factory=dict)
    """Time columns holding something that is not a time, as stored ('tomorrow', '0000-00-00 00:00:00',
    'infinity'): their field above reads None, and this says what a person should be shown instead."""

    TIMES: ClassVar[tuple[str, ...]] = ("run_at", "callback_next_at", "lease_expires_at", "created_at",
                                        "updated_at", "started_at", "finished_at")

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> Job:
        """From a row of the store's JOB_COLUMNS (payload and result as text, times as the driver gives them:
        all parsed here, so that no value a producer wrote can break a listing)."""
        values = {field.name: row[field.name] for field in dataclasses.fields(cls) if field.name != "unreadable"}
        unreadable = {}
        for name in cls.TIMES:
            raw = values[name]
            values[name] = utc(raw)
            if values[name] is None and raw is not None:  # as stored: text, or SQLite's number or blob
                unreadable[name] = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        values["payload"], values["result"] = shown_json(values["payload"]), shown_json(values["result"])
        values["cancel_requested"] = bool(values["cancel_requested"])
        return cls(**values, unreadable=unreadable)


# -- callbacks -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DueCallback:
    """A callback this runner holds under `token`; `attempt` counts this delivery attempt."""

    job_id: int
    url: str
    token: str
    attempt: int
    task: str
    queue: str
    status: str
    attempts: int
    result: Any
    last_error: str | None
    created_at: dt.datetime | None
    finished_at: dt.datetime | None

    @classmethod
    def from_row(cls, row: Mapping[Any, Any], token: str, attempt: int) -> DueCallback:
        """From a row of the callback claim's columns (`result` as text). Any producer-written value reads:
        the callback carries what the row holds, never an error that would stop the claim."""
        return cls(
            job_id=int(row["id"]), url=str(row["callback_url"]), token=token, attempt=min(attempt, COUNT_MAX),
            task=str(row["task"]), queue=str(row["queue"]), status=str(row["status"]),
            attempts=count(row["attempts"]), result=lenient_json(row["result"]), last_error=row["last_error"],
            created_at=utc(row["created_at"]), finished_at=utc(row["finished_at"]),
        )


CallbackKind = Literal["delivered", "retry", "failed", "release"]


@dataclasses.dataclass(frozen=True)
class CallbackResult:
    """What one attempt came to. `release` hands a claimed callback back unsent (circuit breaker)."""

    callback: DueCallback
    kind: CallbackKind
    webhook_id: str = ""
    url: str = ""
    delay: float = 0.0
    error: str | None = None
    status_code: int | None = None
    duration_ms: int = 0
    excerpt: str | None = None


@dataclasses.dataclass(frozen=True)
class CallbackRow:
    """A job's callback state, for `callbacks list`."""

    job_id: int
    task: str
    job_status: str
    url: str
    callback_status: str
    callback_attempts: Any  # as stored (see from_row)
    callback_next_at: dt.datetime | None
    callback_last_error: str | None
    finished_at: dt.datetime | None
    sending: bool = False
    """A runner holds it under a lease that has not run out: `callback_next_at` is then that lease's end, not
    when it is due (it is being sent)."""

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> CallbackRow:
        return cls(
            job_id=int(row["id"]), task=row["task"], job_status=row["status"], url=str(row["callback_url"]),
            callback_status=row["callback_status"],
            # As stored, as `list` shows a job's counters: SQLite keeps text or an infinity there, and int() of
            # it stopped `callbacks list` with a traceback.
            callback_attempts=row["callback_attempts"],
            callback_next_at=utc(row["callback_next_at"]), callback_last_error=row["callback_last_error"],
            finished_at=utc(row["finished_at"]), sending=bool(row["sending"]),
        )


@dataclasses.dataclass(frozen=True)
class AttemptRow:
    """One row of `pending_job_callback_attempts`."""

    job_id: int
    attempt: int
    webhook_id: str
    attempted_at: dt.datetime | None
    url: str
    status_code: int | None
    error: str | None
    duration_ms: int
    response_excerpt: str | None

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> AttemptRow:
        values = {field.name: row[field.name] for field in dataclasses.fields(cls)}
        values["attempted_at"] = utc(values["attempted_at"])
        return cls(**values)


# -- runs ----------------------------------------------------------------------------------------


@dataclasses.dataclass
class RunReport:
    """What one run did and how it ended: counted by the runner, stored in `pending_job_runs`, exported
    as metrics and summarised by `run -v`. The one record of a run."""

    claimed: int = 0
    succeeded: int = 0
    retried: int = 0
    failed: int = 0
    cancelled: int = 0
    rescued: int = 0
    released: int = 0
    held: int = 0  # put back unrun: their task's or queue's config table has an error (held.py)
    stale: int = 0
    callbacks_delivered: int = 0
    callbacks_failed: int = 0
    stopped_by: str = "empty"
    duration: float = 0.0
    exit_code: int | None = None

    STORED: ClassVar[tuple[str, ...]] = ("claimed", "succeeded", "failed", "retried", "cancelled", "rescued",
                                         "callbacks_delivered", "callbacks_failed")
    """The counts the runs table keeps, one column each."""

    def summary(self) -> str:
        """The one line `run -v` prints."""
        return (f"claimed {self.claimed}, succeeded {self.succeeded}, retried {self.retried}, failed {self.failed}, "
                f"cancelled {self.cancelled}, held {self.held}, rescued {self.rescued}, callbacks delivered "
                f"{self.callbacks_delivered} failed {self.callbacks_failed} in {self.duration:.2f}s "
                f"(stopped: {self.stopped_by})")


@dataclasses.dataclass(frozen=True)
class RunRow:
    """One row of `pending_job_runs`: which process ran, when, and its report."""

    id: int
    host: str
    pid: int
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    report: RunReport

    @property
    def duration(self) -> float | None:
        """Seconds the run took; None while it is still running (or was killed)."""
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()

    def as_dict(self) -> dict[str, Any]:
        """Flat, JSON-able: what `status --json` shows as the last run."""
        counts = {name: getattr(self.report, name) for name in RunReport.STORED}
        return {"id": self.id, "host": self.host, "pid": self.pid, "started_at": self.started_at,
                "finished_at": self.finished_at, **counts, "exit_code": self.report.exit_code,
                "duration_seconds": self.duration}


@dataclasses.dataclass(frozen=True)
class Completion:
    """One claim's outcomes to record in one go: (id, result) succeeded, (id, delay, error) retried,
    (id, error) failed, (id, delay, reason) held — all under the claim's token."""

    token: str
    succeeded: Sequence[tuple[int, Any]] = ()
    retried: Sequence[tuple[int, float, str]] = ()
    failed: Sequence[tuple[int, str]] = ()
    held: Sequence[tuple[int, float, str]] = ()

    @property
    def empty(self) -> bool:
        """Nothing to write (e.g. every outcome was recorded in its handler's transaction)."""
        return not (self.succeeded or self.retried or self.failed or self.held)
