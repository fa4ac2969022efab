"""Every way one job can end, as the executor decides it: the row's checks, what the handler returned or
raised, the retry delay whatever was asked, the handler's transaction, timeouts and its own errors."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any, Literal

import pytest

from pending_jobs import config, isolation, validation
from pending_jobs.context import Context, JobContext
from pending_jobs.errors import Fail, Retry
from pending_jobs.held import HOLD_DELAY
from pending_jobs.models import ClaimedJob, Outcome
from pending_jobs.registry import Task, held_task
from pending_jobs.runner import Executor
from pending_jobs.runner.executor import COMMIT_RETRY_DELAY, MAX_DELAY, _log_outcome

from .memory_store import MemoryStore

LOGGER = "pending_jobs.runner.executor"
Verdict = tuple[Literal["recorded", "stale", "error"], str]


class Stop(BaseException):
    """Raised by code that means to end the process, not just its job (as SystemExit)."""


class Unprintable(Exception):
    """An exception whose `str()` itself raises."""

    def __str__(self) -> str:
        raise RuntimeError("no str for you")


class NoStr:
    """A Retry or Fail reason whose `str()` raises."""

    def __str__(self) -> str:
        raise RuntimeError("no str for you")


class BadFloat:
    """A delay whose conversion to a float raises something else than TypeError or ValueError."""

    def __float__(self) -> float:
        raise ArithmeticError("no float for you")


class Session:
    """A handler transaction that records what the executor did with it."""

    def __init__(self, store: RecordingStore, job: ClaimedJob) -> None:
        self.store = store
        self.job = job
        self.calls: list[Any] = []

    @property
    def opened(self) -> bool:
        return self.store.opened

    @property
    def connection(self) -> Any:
        raise RuntimeError("no database here")

    def cancel_requested(self) -> bool:
        return self.store.rows[self.job.id].cancel_requested

    def commit_success(self, result: Any) -> Verdict:
        self.calls.append(("commit", result))
        return self.store.verdict

    def rollback(self, error: BaseException | None = None) -> None:
        self.calls.append("rollback" if error is None else ("rollback", error))

    def abandon(self) -> None:
        self.calls.append("abandon")


class RecordingStore(MemoryStore):
    """The memory store, with handler transactions that record their calls (and may have been opened)."""

    def __init__(self, opened: bool = False, verdict: Verdict = ("recorded", ""), accepts_nul: bool = True) -> None:
        super().__init__()
        self.opened = opened
        self.verdict = verdict
        self.json_accepts_nul = accepts_nul
        self.sessions: list[Session] = []

    def handler_transaction(self, job: ClaimedJob) -> Session:  # type: ignore[override]
        session = Session(self, job)
        self.sessions.append(session)
        return session


def claim(store: MemoryStore, task: str = "t", payload: Any = None, **columns: Any) -> ClaimedJob:
    """Add a job and claim it: the ClaimedJob the executor gets (attempt 1 unless `attempts` says otherwise)."""
    job_id = store.add(task, payload, **columns)
    return store.claim_job(job_id, "unit-test", 60).jobs[0]


def executor(store: MemoryStore, handlers: dict[str, Task], **overrides: Any) -> Executor:
    return Executor(store, handlers, config.load({}, environ={}).replace(**overrides))


def one(fn: Callable[[dict[str, Any], Context], Any], name: str = "t", **options: Any) -> dict[str, Task]:
    options.setdefault("backoff", lambda attempt: 100.0 * attempt)
    return {name: Task(name, fn, **options)}


def returns(value: Any) -> Callable[[dict[str, Any], Context], Any]:
    return lambda payload, ctx: value


def raises(error: BaseException) -> Callable[..., Any]:
    """A handler (or backoff, or stand-in for isolation.call) that raises `error`."""

    def handler(*args: Any) -> Any:
        raise error

    return handler


def default_range(attempt: int) -> tuple[float, float]:
    """The default backoff's jitter range for `attempt`: 10 s doubling to 1 h, times 0.5 to 1."""
    base = min(3600.0, 10.0 * 2 ** max(0, attempt - 1))
    return base * 0.5, base


# -- a row that cannot run ---------------------------------------------------------------------------


def test_a_rows_own_problem_fails_it_without_running_the_handler() -> None:
    store = RecordingStore()
    called: list[int] = []
    job = claim(store, max_attempts=0, payload_text=None)
    job = ClaimedJob(job.id, job.task, job.queue, job.payload_text, job.attempt, job.max_attempts, job.priority,
                     job.callback_url, job.token, "max_attempts is 'x', not a whole number\x00")
    outcome = executor(store, one(lambda payload, ctx: called.append(1)))(job)
    assert outcome == Outcome(job, "failed", error="max_attempts is 'x', not a whole number\\0")
    assert called == [] and store.sessions == []


@pytest.mark.parametrize(("columns", "error"), [
    ({"max_attempts": 0}, "max_attempts is 0; it must be at least 1"),
    ({"priority": 1001}, "priority 1001 is outside -1000..1000"),
    ({"priority": -1001}, "priority -1001 is outside -1000..1000"),
    ({"callback_url": "ftp://example.com/"}, "invalid callback_url: scheme must be http or https, not 'ftp'"),
    ({"payload_text": None}, "payload is NULL; it must be a JSON object"),
    ({"payload_text": "[1]"}, "payload must be a JSON object, got an array"),
    ({"payload_text": "{"}, "payload is not valid JSON: Expecting property name enclosed in double quotes: line 1 "
                            "column 2 (char 1)"),
    ({"max_attempts": 0, "payload_text": None}, "max_attempts is 0; it must be at least 1"),
])
def test_a_row_that_breaks_a_rule_fails_at_once_with_the_reason(columns: dict[str, Any], error: str) -> None:
    store = RecordingStore()
    called: list[int] = []
    job = claim(store, **columns)
    assert job.attempt < 5 or columns.get("max_attempts") == 0  # attempts were left: failed all the same
    outcome = executor(store, one(lambda payload, ctx: called.append(1)))(job)
    assert outcome == Outcome(job, "failed", error=error)
    assert called == [] and store.sessions == []


@pytest.mark.parametrize("columns", [{"max_attempts": 1}, {"priority": 1000}, {"priority": -1000},
                                     {"callback_url": "https://example.com/hook"}])
def test_a_row_at_the_edge_of_every_rule_runs(columns: dict[str, Any]) -> None:
    store = RecordingStore()
    job = claim(store, **columns)
    assert executor(store, one(returns("ok")))(job) == Outcome(job, "succeeded", result="ok")


def test_a_payload_exactly_at_the_payload_limit_runs_one_byte_over_fails() -> None:
    store = RecordingStore()
    job = claim(store, payload_text='{"k":"é"}')  # 10 bytes
    assert executor(store, one(lambda payload, ctx: payload), payload_limit=10)(job) == Outcome(
        job, "succeeded", result={"k": "é"})
    assert executor(store, one(returns(None)), payload_limit=9)(job) == Outcome(
        job, "failed", error="payload is 10 bytes, over the 9-byte limit (setting payload_limit)")


def test_an_unknown_task_is_tried_again_with_the_default_backoff_naming_the_known_ones() -> None:
    # Not failed at once: a task deployed after this run loaded its tasks is known to the next run.
    store = RecordingStore()
    job = claim(store, "nope")
    tasks = {**one(returns(None), "b"), **one(returns(None), "a")}
    outcome = executor(store, tasks)(job)
    assert (outcome.kind, outcome.error) == ("retry", "unknown task 'nope': no handler registered in this run "
                                                      "(known: a, b)")
    assert 5.0 <= outcome.delay <= 10.0  # default_backoff(1): 10 s, jitter 50-100 %
    last = claim(store, "nope", attempts=4)  # attempt 5 of 5
    assert executor(store, {})(last) == Outcome(
        last, "failed", error="unknown task 'nope': no handler registered in this run (known: none)\n"
                              "(attempt 5 of 5: giving up)")


def test_a_payload_problem_is_named_before_an_unknown_task() -> None:
    store = RecordingStore()
    job = claim(store, "nope", payload_text="null")
    assert executor(store, {})(job).error == "payload must be a JSON object, got null"


# -- what the handler gets ---------------------------------------------------------------------------


def test_the_handler_gets_its_payload_and_a_context_describing_the_job() -> None:
    store = RecordingStore()
    job = claim(store, "send", {"to": "a@example.com"}, queue="mail", max_attempts=7, attempts=2)
    seen: dict[str, Any] = {}

    def handler(payload: dict[str, Any], ctx: Context) -> str:
        seen.update(payload=payload, ctx=ctx, job_id=ctx.job_id, task=ctx.task, queue=ctx.queue, attempt=ctx.attempt,
                    max_attempts=ctx.max_attempts, deadline=ctx.deadline, time_left=ctx.time_left())
        return "sent"

    assert executor(store, one(handler, "send"))(job) == Outcome(job, "succeeded", result="sent")
    assert seen["payload"] == {"to": "a@example.com"}
    assert isinstance(seen["ctx"], JobContext)
    assert (seen["job_id"], seen["task"], seen["queue"], seen["attempt"], seen["max_attempts"]) == (
        job.id, "send", "mail", 3, 7)
    assert seen["deadline"] is None and seen["time_left"] is None
    log = seen["ctx"].log
    assert log.logger.name == "pending_jobs.task.send"
    assert log.extra == {"job_id": job.id, "task": "send"}


def test_a_task_with_a_timeout_gives_its_handler_its_payload_and_a_deadline() -> None:
    store = RecordingStore()
    job = claim(store, payload={"n": 7})
    calls: list[tuple[Any, float | None]] = []
    run = executor(store, one(lambda payload, ctx: calls.append((payload, ctx.deadline)), timeout=30.0))
    before = time.monotonic()
    run(job)
    after = time.monotonic()
    ((payload, deadline),) = calls
    assert payload == {"n": 7}
    assert deadline is not None and before + 30.0 <= deadline <= after + 30.0


@pytest.mark.parametrize(("error", "kind", "reason"), [
    (Retry(reason="busy"), "retry", "Retry: busy"),
    (Fail("no such user"), "failed", "Fail: no such user"),
    (KeyError("id"), "retry", "KeyError: 'id'"),
])
def test_a_handler_giving_up_on_a_job_being_cancelled_says_it_is_cancelled(
        error: BaseException, kind: str, reason: str, caplog: pytest.LogCaptureFixture) -> None:
    store = RecordingStore()
    job = claim(store)

    def handler(payload: dict[str, Any], ctx: Context) -> None:
        store.rows[job.id].cancel_requested = True  # `pending-jobs cancel` while it ran
        raise error

    with caplog.at_level(logging.INFO, LOGGER):
        outcome = executor(store, one(handler))(job)
    assert outcome.kind == kind and outcome.cancelling and outcome.error.startswith(reason)
    assert caplog.messages == [f"job {job.id} (t) gave up on attempt 1 after an operator asked to cancel it: "
                               f"cancelled ({reason})"]
    # Only an unexpected error is handed to the session: it decides whether the connection is still sound.
    (rolled,) = store.sessions[0].calls
    assert rolled == ("rollback" if isinstance(error, Retry | Fail) else ("rollback", error))


def test_a_cancellation_that_cannot_be_read_leaves_the_outcome_as_it_was() -> None:
    store = RecordingStore()
    job = claim(store)
    store.rows[job.id].cancel_requested = True
    del store.rows[job.id]  # the session's read now raises, as with the database away
    outcome = executor(store, one(raises(Retry(reason="busy"))))(job)
    assert outcome.kind == "retry" and not outcome.cancelling


def test_the_handler_sees_a_cancellation_asked_while_it_runs() -> None:
    store = RecordingStore()
    job = claim(store)
    seen: list[bool] = []

    def handler(payload: dict[str, Any], ctx: Context) -> None:
        seen.append(ctx.cancel_requested())
        store.rows[job.id].cancel_requested = True  # `pending-jobs cancel` meanwhile
        seen.append(ctx.cancel_requested())

    executor(store, one(handler))(job)
    assert seen == [False, True]


def test_the_handlers_transaction_is_known_while_it_runs_and_forgotten_after() -> None:
    # Known so that a timeout can close it under the handler: only for tasks that have a timeout.
    store = RecordingStore()
    job = claim(store)
    during: list[Any] = []
    run = executor(store, {})
    run.tasks.update(one(lambda payload, ctx: during.append(dict(run._sessions)), timeout=60))
    run(job)
    assert during == [{(job.id, job.token): store.sessions[0]}]
    assert run._sessions == {}
    run.tasks.update(one(raises(Retry()), timeout=60))
    run(job)
    assert run._sessions == {}
    run.tasks.update(one(lambda payload, ctx: during.append(dict(run._sessions))))
    run(job)
    assert during[-1] == {}


def test_a_process_isolated_task_runs_through_isolation(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, ...]] = []

    def call(task: Task, payload: Any, ctx: Context, modules: list[str], python_path: list[str]) -> str:
        calls.append((task, payload, ctx.job_id, modules, python_path))
        return "from the child"

    monkeypatch.setattr(isolation, "call", call)
    store = RecordingStore()
    job = claim(store, payload={"n": 1})
    tasks = one(raises(AssertionError("must not run in the runner")), isolation="process")
    run = executor(store, tasks, tasks=["app.jobs"], python_path=["/srv/app"])
    assert run(job) == Outcome(job, "succeeded", result="from the child")
    assert calls == [(tasks["t"], {"n": 1}, job.id, ["app.jobs"], ["/srv/app"])]


def test_a_thread_task_never_goes_through_isolation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(isolation, "call", raises(AssertionError("must not start a process")))
    store = RecordingStore()
    job = claim(store)
    assert executor(store, one(returns(1)))(job) == Outcome(job, "succeeded", result=1)


def test_what_a_process_isolated_handler_raised_counts_as_a_thread_handlers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(isolation, "call", raises(Retry(delay=3, reason="child busy")))
    store = RecordingStore()
    job = claim(store)
    assert executor(store, one(returns(None), isolation="process"))(job) == Outcome(
        job, "retry", error="Retry: child busy", delay=3.0)


# -- what the handler returned -------------------------------------------------------------------------


@pytest.mark.parametrize("result", [None, 0, "", [], {"a": [1, "é"]}, "x\x00y"])
def test_a_storable_result_succeeds_as_it_is(result: Any) -> None:
    store = RecordingStore()
    job = claim(store)
    assert executor(store, one(returns(result)))(job) == Outcome(job, "succeeded", result=result)
    assert store.sessions[0].calls == []


def nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(("result", "limit", "accepts_nul", "why"), [
    (float("nan"), 100, True, "result is not JSON-serialisable: Out of range float values are not JSON compliant"),
    ({"s": {1}}, 100, True, "result is not JSON-serialisable: Object of type set is not JSON serializable"),
    ("x" * 20, 21, True, "result is 22 bytes, over the 21-byte limit"),
    ("x\x00", 100, False, "result contains a NUL character, which PostgreSQL jsonb cannot store"),
    ("\udc80", 100, True, "result contains a lone surrogate, which is not valid UTF-8"),
    (nested(100_000), 10**9, True, "result nests 100001 levels deep; at most 31 can be stored on every database "
                                   "(MariaDB's limit)"),  # past Python's recursion limit
    (nested(600), 10**9, True, "result nests 601 levels deep; at most 31 can be stored on every database "
                               "(MariaDB's limit)"),
])
def test_a_result_that_cannot_be_stored_fails_at_once_and_rolls_back(result: Any, limit: int, accepts_nul: bool,
                                                                       why: str) -> None:
    store = RecordingStore(opened=True, accepts_nul=accepts_nul)
    job = claim(store)
    outcome = executor(store, one(returns(result)), payload_limit=limit)(job)
    assert outcome == Outcome(job, "failed", error=f"the handler's result cannot be stored: {why}")
    assert store.sessions[0].calls == ["rollback"]  # never committed


def test_a_result_exactly_at_the_payload_limit_is_stored() -> None:
    store = RecordingStore()
    job = claim(store)
    assert executor(store, one(returns("x" * 20)), payload_limit=22)(job) == Outcome(job, "succeeded",
                                                                                    result="x" * 20)


@pytest.mark.parametrize(("verdict", "expected"), [
    (("recorded", ""), "recorded"),
    (("stale", ""), "dropped"),
])
def test_a_handler_that_used_its_transaction_commits_its_success_with_it(verdict: Verdict, expected: str) -> None:
    store = RecordingStore(opened=True, verdict=verdict)
    job = claim(store)
    assert executor(store, one(returns({"n": 1})))(job) == Outcome(job, expected)  # type: ignore[arg-type]
    assert store.sessions[0].calls == [("commit", {"n": 1})]


def test_a_transaction_that_cannot_commit_is_retried_soon() -> None:
    store = RecordingStore(opened=True, verdict=("error", "deadlock found"))
    job = claim(store)
    assert COMMIT_RETRY_DELAY == 5.0
    assert executor(store, one(returns(1)))(job) == Outcome(
        job, "retry", error="could not commit the handler's transaction: deadlock found", delay=5.0)
    last = claim(store, max_attempts=1)
    assert executor(store, one(returns(1)))(last) == Outcome(
        last, "failed", error="could not commit the handler's transaction: deadlock found\n(attempt 1 of 1: giving up)")


# -- what the handler raised ---------------------------------------------------------------------------


def test_retry_asks_for_another_attempt_after_its_delay() -> None:
    store = RecordingStore(opened=True)
    job = claim(store)
    assert executor(store, one(raises(Retry(delay=7))))(job) == Outcome(
        job, "retry", error="Retry: retry requested", delay=7.0)
    assert store.sessions[0].calls == ["rollback"]


def test_retry_without_a_delay_uses_the_tasks_backoff_for_this_attempt() -> None:
    store = RecordingStore()
    job = claim(store, attempts=2)
    assert executor(store, one(raises(Retry(reason="busy"))))(job) == Outcome(
        job, "retry", error="Retry: busy", delay=300.0)


def test_retry_on_the_last_attempt_gives_up() -> None:
    store = RecordingStore()
    job = claim(store, max_attempts=3, attempts=2)
    assert executor(store, one(raises(Retry(delay=1, reason="busy"))))(job) == Outcome(
        job, "failed", error="Retry: busy\n(attempt 3 of 3: giving up)")


def test_retry_with_an_unprintable_reason() -> None:
    store = RecordingStore()
    job = claim(store)
    assert executor(store, one(raises(Retry(delay=1, reason=NoStr()))))(job).error == (  # type: ignore[arg-type]
        "Retry: <unprintable NoStr>")


@pytest.mark.parametrize(("asked", "delay"), [
    (0, 0.0), (2.5, 2.5), ("12", 12.0), (-5, 0.0), (-math.inf, 0.0), (math.inf, MAX_DELAY), (1e12, MAX_DELAY),
    (MAX_DELAY, MAX_DELAY), (MAX_DELAY - 1, MAX_DELAY - 1), (MAX_DELAY + 1, MAX_DELAY), (True, 1.0),
])
def test_a_retry_delay_is_kept_within_zero_to_thirty_days(asked: Any, delay: float) -> None:
    assert MAX_DELAY == 30 * 86400.0
    store = RecordingStore()
    job = claim(store)
    assert executor(store, one(raises(Retry(delay=asked))))(job).delay == delay


@pytest.mark.parametrize("asked", ["soon", [1], 10**400, BadFloat()])
def test_a_retry_delay_that_is_no_number_uses_the_default_backoff(asked: Any,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    store = RecordingStore()
    job = claim(store, attempts=2)  # attempt 3: the default backoff is 20..40 s
    with caplog.at_level(logging.INFO, LOGGER):
        outcome = executor(store, one(raises(Retry(delay=asked))))(job)
    low, high = default_range(3)
    assert outcome.kind == "retry" and low <= outcome.delay <= high
    assert f"job {job.id} (t): retry delay {asked!r} is not a number of seconds; using the default backoff" in (
        caplog.messages)


def test_a_nan_retry_delay_uses_the_default_backoff() -> None:
    store = RecordingStore()
    job = claim(store, attempts=3)
    low, high = default_range(4)
    delay = executor(store, one(raises(Retry(delay=math.nan))))(job).delay
    assert low <= delay <= high


def test_fail_fails_at_once_whatever_attempts_are_left() -> None:
    store = RecordingStore(opened=True)
    job = claim(store, max_attempts=10)
    assert executor(store, one(raises(Fail("bad input\x00"))))(job) == Outcome(
        job, "failed", error="Fail: bad input\\0")
    assert store.sessions[0].calls == ["rollback"]
    other = claim(store)
    assert executor(store, one(raises(Fail(NoStr()))))(other).error == "Fail: <unprintable NoStr>"  # type: ignore[arg-type]


def test_an_exception_is_retried_with_its_description_after_the_backoff() -> None:
    store = RecordingStore(opened=True)
    job = claim(store)
    error = ValueError("bad value")
    outcome = executor(store, one(raises(error)))(job)
    assert outcome.kind == "retry" and outcome.delay == 100.0
    assert outcome.error.startswith("ValueError: bad value\nTraceback (most recent call last;")
    assert outcome.error.endswith("    raise error")
    assert store.sessions[0].calls == [("rollback", error)]  # the session judges whether its connection is sound


@pytest.mark.parametrize("error", [Stop(), SystemExit(3), KeyboardInterrupt()])
def test_a_base_exception_from_the_handler_is_only_its_jobs_failure(error: BaseException) -> None:
    store = RecordingStore()
    job = claim(store)
    outcome = executor(store, one(raises(error)))(job)
    assert outcome.kind == "retry"
    assert outcome.error.splitlines()[0] == validation.describe_exception(error).splitlines()[0]


def test_an_unprintable_exception_still_gets_a_reason() -> None:
    store = RecordingStore()
    job = claim(store)
    outcome = executor(store, one(raises(Unprintable())))(job)
    assert outcome.error.splitlines()[0] == f"{__name__}.Unprintable: <unprintable Unprintable>"


def test_an_exception_on_the_last_attempt_gives_up() -> None:
    store = RecordingStore()
    job = claim(store, max_attempts=2, attempts=1)
    outcome = executor(store, one(raises(ValueError("bad value"))))(job)
    assert outcome.kind == "failed" and outcome.delay == 0.0
    assert outcome.error.startswith("ValueError: bad value\n")
    assert outcome.error.endswith("    raise error\n(attempt 2 of 2: giving up)")


@pytest.mark.parametrize(("backoff_gives", "delay"), [(7, 7.0), (math.inf, MAX_DELAY), (-1.0, 0.0)])
def test_a_backoffs_delay_is_kept_within_zero_to_thirty_days(backoff_gives: Any, delay: float) -> None:
    store = RecordingStore()
    job = claim(store)
    assert executor(store, one(raises(ValueError()), backoff=lambda attempt: backoff_gives))(job).delay == delay


@pytest.mark.parametrize("backoff_gives", [math.nan, "soon", None, BadFloat()])
def test_a_backoff_that_gives_no_number_gives_way_to_the_default_backoff(backoff_gives: Any) -> None:
    store = RecordingStore()
    job = claim(store)
    delay = executor(store, one(raises(ValueError()), backoff=lambda attempt: backoff_gives))(job).delay
    low, high = default_range(1)
    assert low <= delay <= high


@pytest.mark.parametrize("error", [ZeroDivisionError(), Stop()])
def test_a_backoff_that_raises_gives_way_to_the_default_backoff(error: BaseException,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """A backoff is the application's code, as a handler is: whatever it raises, the job still gets a
    delay (a BaseException once escaped the executor, so the worker thread died with the job unrecorded)."""
    store = RecordingStore()
    job = claim(store, attempts=1)
    with caplog.at_level(logging.INFO, LOGGER):
        outcome = executor(store, one(raises(ValueError("bad")), backoff=raises(error)))(job)
    low, high = default_range(2)
    assert outcome.kind == "retry" and low <= outcome.delay <= high
    assert caplog.messages == [
        f"job {job.id} (t): its backoff function raised {type(error).__name__}; using the default backoff",
        f"job {job.id} (t) will be retried in {outcome.delay:.0f}s after attempt 2 of 5: ValueError: bad",
    ]


# -- failure(): retry or give up -------------------------------------------------------------------------


@pytest.mark.parametrize(("attempts", "max_attempts", "kind"), [
    (0, 2, "retry"), (1, 2, "failed"), (2, 2, "failed"),  # attempt 3 of 2: a job run again by hand
])
def test_the_last_attempt_gives_up(attempts: int, max_attempts: int, kind: str) -> None:
    store = RecordingStore()
    job = claim(store, attempts=attempts, max_attempts=max_attempts)
    outcome = executor(store, one(returns(None))).failure(job, "boom", 9.0)
    if kind == "retry":
        assert outcome == Outcome(job, "retry", error="boom", delay=9.0)
    else:
        assert outcome == Outcome(job, "failed", error=f"boom\n(attempt {job.attempt} of {max_attempts}: giving up)")


@pytest.mark.parametrize(("task_limit", "attempts", "kind", "limit"), [
    (2, 0, "retry", "2"), (2, 1, "failed", "the task's max_attempts 2"),  # the task's is fewer: it decides
    (5, 2, "failed", "3"), (3, 2, "failed", "3"),  # the row's is fewer or the same: the row's decides
])
def test_a_tasks_own_max_attempts_gives_up_before_the_rows(task_limit: int, attempts: int, kind: str,
                                                          limit: str, caplog: pytest.LogCaptureFixture) -> None:
    store = RecordingStore()
    job = claim(store, attempts=attempts, max_attempts=3)
    seen: list[int] = []

    def handler(payload: Any, ctx: Context) -> None:
        seen.append(ctx.max_attempts)
        raise Retry(delay=9.0, reason="busy")

    with caplog.at_level(logging.INFO, LOGGER):
        outcome = executor(store, one(handler, max_attempts=task_limit))(job)
    if kind == "retry":
        assert outcome == Outcome(job, "retry", error="Retry: busy", delay=9.0)
    else:
        assert outcome == Outcome(job, "failed", error=f"Retry: busy\n(attempt {job.attempt} of {limit}: giving up)")
    effective = min(task_limit, 3)
    assert seen == [effective]  # the handler (and a command's PENDING_JOBS_MAX_ATTEMPTS) sees the limit that holds
    verb = "will be retried in 9s after" if kind == "retry" else "failed on"
    assert caplog.messages == [f"job {job.id} (t) {verb} attempt {job.attempt} of {effective}: Retry: busy"]


def test_a_long_error_is_cut_to_leave_room_for_the_giving_up_line() -> None:
    store = RecordingStore()
    job = claim(store, max_attempts=1)
    error = "e" * 3000 + "\x00" + "f" * 3000
    outcome = executor(store, {}).failure(job, error)
    assert outcome.error == validation.clean_text(error, 3940) + "\n(attempt 1 of 1: giving up)"
    assert len(outcome.error) <= validation.ERROR_LIMIT
    retried = executor(store, {}).failure(claim(store), error, 1.0)
    assert retried.error == validation.clean_text(error, 3940)


def test_failure_without_a_delay_asks_the_tasks_backoff_or_the_default(caplog: pytest.LogCaptureFixture) -> None:
    store = RecordingStore()
    job = claim(store, attempts=3)
    with caplog.at_level(logging.DEBUG, LOGGER):
        assert executor(store, one(returns(None))).failure(job, "x").delay == 400.0
        unknown = claim(store, "nope", attempts=3)
        low, high = default_range(4)
        assert low <= executor(store, one(returns(None))).failure(unknown, "x").delay <= high
    assert caplog.messages == []  # the default backoff of an unknown task is no backoff that failed


# -- the executor's own errors, timeouts, logs -------------------------------------------------------


def test_an_error_of_the_executor_itself_still_ends_the_job_with_a_reason() -> None:
    class Broken(RecordingStore):
        def handler_transaction(self, job: ClaimedJob) -> Session:  # type: ignore[override]
            raise RuntimeError("pool exhausted")

    store = Broken()
    job = claim(store)
    outcome = executor(store, one(returns(None)))(job)
    assert outcome.kind == "retry" and outcome.delay == 100.0
    assert outcome.error.startswith("internal error while running the job: RuntimeError: pool exhausted\n")


def test_on_error_describes_the_error() -> None:
    store = RecordingStore()
    job = claim(store, max_attempts=1)
    assert executor(store, {}).on_error(job, ValueError("x")) == Outcome(
        job, "failed", error="internal error while running the job: ValueError: x\n(attempt 1 of 1: giving up)")


def test_timeout_of_is_the_tasks_timeout() -> None:
    store = RecordingStore()
    run = executor(store, {**one(returns(None), "slow", timeout=2.5), **one(returns(None), "free")})
    assert run.timeout_of(claim(store, "slow")) == 2.5
    assert run.timeout_of(claim(store, "free")) is None
    assert run.timeout_of(claim(store, "nope")) is None


def test_a_timed_out_handlers_transaction_is_abandoned_and_its_job_retried(caplog: pytest.LogCaptureFixture) -> None:
    store = RecordingStore()
    job = claim(store)
    outcomes: list[Outcome] = []
    run = executor(store, {})

    def handler(payload: Any, ctx: Any) -> None:
        outcomes.append(run.timed_out(job))
        raise RuntimeError("the connection was closed under it")

    run.tasks.update(one(handler, timeout=0.5))
    with caplog.at_level(logging.INFO, LOGGER):
        late = run(job)
    assert late == Outcome(job, "dropped")  # its error came after the timeout was recorded: the pool drops it
    assert outcomes == [Outcome(job, "retry", error="TimeoutError: handler ran longer than 0.5s", delay=100.0)]
    assert [call if isinstance(call, str) else call[0] for call in store.sessions[0].calls] == ["abandon", "rollback"]
    assert run._sessions == {}
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [  # the late error is not logged as the job's
        (logging.WARNING, f"job {job.id} (t) timed out after 0.5s"),
        (logging.INFO,
         f"job {job.id} (t) will be retried in 100s after attempt 1 of 5: TimeoutError: handler ran longer than 0.5s"),
        (logging.INFO, f"job {job.id} (t): its handler, given up on at its timeout, has ended; the timeout stands"),
    ]


def test_a_timeout_after_the_handler_returned_abandons_nothing() -> None:
    store = RecordingStore()
    job = claim(store, max_attempts=1)
    run = executor(store, one(returns(None), timeout=2.0))
    run(job)
    assert run.timed_out(job) == Outcome(
        job, "failed", error="TimeoutError: handler ran longer than 2.0s\n(attempt 1 of 1: giving up)")
    assert store.sessions[0].calls == []


def test_failed_and_retried_jobs_are_logged_with_their_reasons_first_line(caplog: pytest.LogCaptureFixture) -> None:
    store = RecordingStore()
    retried, failed, succeeded = claim(store, max_attempts=3), claim(store, max_attempts=1), claim(store)
    with caplog.at_level(logging.DEBUG, LOGGER):
        executor(store, one(raises(Retry(delay=29.6, reason="busy"))))(retried)
        executor(store, one(raises(Fail("bad\nsecond line"))))(failed)
        executor(store, one(returns(1)))(succeeded)
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.INFO, f"job {retried.id} (t) will be retried in 30s after attempt 1 of 3: Retry: busy"),
        (logging.WARNING, f"job {failed.id} (t) failed on attempt 1 of 1: Fail: bad"),
    ]


@pytest.mark.parametrize(("error", "first"), [
    ("", "no reason given"), ("  \n ", "no reason given"), ("\n  first line  \nsecond", "first line  "),
    ("x" * 300, "x" * 200),
])
def test_the_logged_reason_is_the_first_line_cut_to_200_characters(error: str, first: str,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    store = RecordingStore()
    job = claim(store)
    with caplog.at_level(logging.INFO, LOGGER):
        _log_outcome(Outcome(job, "failed", error=error), 5)
        _log_outcome(Outcome(job, "retry", error=error, delay=1.0), 5)
    assert caplog.messages == [f"job {job.id} (t) failed on attempt 1 of 5: {first}",
                               f"job {job.id} (t) will be retried in 1s after attempt 1 of 5: {first}"]


@pytest.mark.parametrize("kind", ["succeeded", "recorded", "dropped"])
def test_other_outcomes_are_not_logged(kind: Literal["succeeded", "recorded", "dropped"],
                                       caplog: pytest.LogCaptureFixture) -> None:
    store = RecordingStore()
    with caplog.at_level(logging.DEBUG, LOGGER):
        _log_outcome(Outcome(claim(store), kind, error="not logged"), 5)
    assert caplog.records == []


@pytest.mark.parametrize(("error", "cancel"), [(Fail("no"), False), (ValueError("bad"), False), (Fail("no"), True)])
def test_a_jobs_outcome_line_carries_its_job_id_and_task_as_fields(error: BaseException, cancel: bool,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """docs/operations.md: `--log-format json` gives `job_id` and `task` where known. The runner's own line
    about a failed, retried or cancelled job knew both and gave neither, so a log collector could not find it."""
    store = RecordingStore()
    job = claim(store)

    def handler(payload: dict[str, Any], ctx: Context) -> None:
        store.rows[job.id].cancel_requested = cancel
        raise error

    with caplog.at_level(logging.INFO, LOGGER):
        executor(store, one(handler))(job)
    (record,) = [r for r in caplog.records if r.getMessage().startswith(f"job {job.id} (t) ")]
    assert (getattr(record, "job_id", None), getattr(record, "task", None)) == (job.id, "t")


# -- held tasks and queues (a config table with a mistake: held.py) -----------------------------------------


def test_jobs_of_a_held_task_or_queue_go_back_with_the_reason_logged_once_each(
        caplog: pytest.LogCaptureFixture) -> None:
    """Neither run nor counted: the outcome `held` with the config table's mistake, retried after HOLD_DELAY; the
    log names each reason once a run (a backlog of held jobs would fill it), with the task and queue it met first."""
    store = RecordingStore()
    task_reason, queue_reason = "[task.t] timeout: not a duration", "[queue.mail] max_running: must be at least 1"
    tasks = {"t": held_task("t", task_reason), **one(returns("done"), name="ok")}
    ex = Executor(store, tasks, config.load({}, environ={}), held_queues={"mail": queue_reason})
    caplog.set_level(logging.WARNING, logger=LOGGER)

    def held(job: ClaimedJob, reason: str) -> Outcome:
        return Outcome(job, "held", error=f"held back, not run: {reason} (fix the config table; the next run after "
                                          "the fix runs it, its attempt uncounted)", delay=HOLD_DELAY)

    first, second = claim(store, task="t"), claim(store, task="t", queue="mail")  # the task's own reason first
    assert ex(first) == ex.hold(first) == held(first, task_reason)
    assert ex(second) == ex.hold(second) == held(second, task_reason)
    in_mail = claim(store, task="ok", queue="mail")
    assert ex(in_mail) == ex.hold(in_mail) == held(in_mail, queue_reason)
    unknown_in_mail = claim(store, task="nosuch", queue="mail")
    assert ex.hold(unknown_in_mail) == held(unknown_in_mail, queue_reason)
    assert ex.hold(claim(store, task="ok")) is None and ex.hold(claim(store, task="nosuch")) is None
    assert store.sessions == []  # no handler transaction was opened for a held job
    told = [r.getMessage() for r in caplog.records if "held back" in r.getMessage()]
    assert told == [f"jobs of task t (queue default) are held back for {HOLD_DELAY:g}s at a time: {task_reason}",
                    f"jobs of task ok (queue mail) are held back for {HOLD_DELAY:g}s at a time: {queue_reason}"]
