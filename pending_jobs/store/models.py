"""Rows as frozen dataclasses: what the store hands to the runner, the CLI and callbacks."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any


def utc(value: dt.datetime | None) -> dt.datetime | None:
    """Every time the store returns is timezone-aware UTC, whatever the dialect gave back."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


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

    @classmethod
    def from_row(cls, row: Sequence[Any], token: str, attempted: int = 0) -> ClaimedJob:
        """From a row of the store's CLAIM_COLUMNS, in their order (positional: this runs per claimed row).

        `attempted` is added to the row's attempts when it was read before the claim's UPDATE counted one.
        """
        job_id, task, queue, payload_text, attempts, max_attempts, priority, callback_url = row
        return cls(int(job_id), task, queue, payload_text, int(attempts) + attempted, int(max_attempts),
                   int(priority), callback_url, token)


@dataclasses.dataclass(frozen=True)
class Claim:
    """One claim transaction's jobs, all under one fencing token."""

    token: str
    jobs: list[ClaimedJob]


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

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> Job:
        values = {field.name: row[field.name] for field in dataclasses.fields(cls)}
        for name, value in values.items():
            if isinstance(value, dt.datetime):
                values[name] = utc(value)
        values["cancel_requested"] = bool(values["cancel_requested"])
        return cls(**values)


@dataclasses.dataclass(frozen=True)
class Finished:
    """How many rows each outcome kind actually changed; fewer than asked means a stale lease."""

    succeeded: int = 0
    retried: int = 0
    failed: int = 0
    cancelled: int = 0
