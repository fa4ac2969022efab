"""The store verbs the runner speaks: one protocol that the SQL store and the unit tests' in-memory
store both implement. Nothing here knows SQL; the runner never touches an engine or a connection."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Literal, Protocol

from ..context import HandlerTransaction
from ..models import Claim, ClaimedJob, Completion, Finished, Job, Rescued, Together


class HandlerSession(HandlerTransaction, Protocol):
    """One job's handler transaction, as the executor drives it."""

    @property
    def opened(self) -> bool:
        """Whether the handler used `ctx.connection`."""

    def commit_success(self, result: Any) -> tuple[Literal["recorded", "stale", "error"], str]:
        """Mark the job succeeded in the handler's transaction and commit both; (verdict, reason)."""

    def rollback(self, error: BaseException | None = None) -> None:
        """Discard the handler's writes, and its connection when `error` shows its session was changed (a
        handler's LOCK TABLES); never raises."""

    def abandon(self) -> None:
        """Close the connection of a handler left running after its timeout (from another thread)."""


class JobStore(Protocol):
    """Claim, finish, release, heartbeat: everything a run asks of the database about jobs."""

    @property
    def concurrent_writers(self) -> bool:
        """Whether outcomes may be written while the next claim runs (not on SQLite)."""

    @property
    def json_accepts_nul(self) -> bool:
        """Whether a result may hold `\\u0000`."""

    def due_queues(self) -> list[str]:
        """Queues that have pending jobs."""

    def claim(self, queue: str, limit: int, owner: str, lease: float) -> Claim:
        """Lock up to `limit` due jobs of `queue` and mark them running under a new lease."""

    def claim_job(self, job_id: int, owner: str, lease: float) -> Claim:
        """Claim one pending job now, whatever its run_at."""

    def finish_many(self, completions: Sequence[Completion]) -> list[Finished]:
        """Record outcomes of several claims in one transaction; row counts per kind."""

    def release(self, token: str, ids: Sequence[int]) -> tuple[int, int]:
        """Put claimed jobs that never started back to pending, attempt uncounted (cancelled, when an operator
        asked to cancel one meanwhile); how many of each."""

    def heartbeat(self, held: Sequence[tuple[int, str]], lease: float) -> int:
        """Extend the leases of these (job id, token) pairs."""

    def cancels_asked(self, ids: Sequence[int]) -> set[int]:
        """Those of these jobs an operator asked to cancel (`cancel` of a running job)."""

    def rescue_expired(self, task_limits: Mapping[str, int] | None = None,
                       held: tuple[Collection[str], Collection[str]] = ((), ())) -> Rescued:
        """Running jobs whose lease expired (their runner died): back to pending, failed (attempts spent: the
        row's, or its task's own limit in `task_limits`) or cancelled; those of the `held` (tasks, queues)
        back to pending, their attempt uncounted."""

    def get(self, job_id: int) -> Job | None:
        """One whole row (to say why `run --job` found nothing to run)."""

    def handler_transaction(self, job: ClaimedJob) -> HandlerSession:
        """The handler's own transaction for `job` (opened on first use)."""

    def claims_together(self, queue: str) -> bool:
        """Whether jobs of `queue` may be claimed by the transaction that runs them (`claim_together`)."""

    def claim_together(self, queue: str, tasks: Sequence[str], limit: int, owner: str,
                       work: Callable[[Any, Sequence[ClaimedJob]], Sequence[Any]]) -> tuple[list[ClaimedJob], Together]:
        """Lock up to `limit` due jobs of `queue` whose task is one of `tasks`, leaving them pending, run
        `work(connection, jobs) -> results` and mark the jobs it ran succeeded, all in one transaction: the jobs
        locked, and whether that was recorded (else nothing was written, the jobs stay pending, and why)."""

    def run_together(self, jobs: Sequence[ClaimedJob], work: Callable[[Any, Sequence[ClaimedJob]], Sequence[Any]]
                     ) -> Together:
        """`work(connection, jobs) -> results` for jobs of one claim in one transaction, then all of them
        succeeded (their lease guarding) in one commit; or nothing written, saying which job raised, if one did."""
