"""The statuses as stored (plain strings any SQL client reads) and the table of allowed moves."""

from __future__ import annotations

from pending_jobs.states import TERMINAL, TRANSITIONS, CallbackStatus, JobStatus


def test_job_statuses_are_the_stored_strings() -> None:
    assert [(s.name, s.value) for s in JobStatus] == [
        ("PENDING", "pending"), ("RUNNING", "running"), ("SUCCEEDED", "succeeded"), ("FAILED", "failed"),
        ("CANCELLED", "cancelled")]
    assert JobStatus("running") is JobStatus.RUNNING and f"{JobStatus.FAILED}" == "failed"


def test_callback_statuses_are_the_stored_strings() -> None:
    assert [(s.name, s.value) for s in CallbackStatus] == [
        ("PENDING", "pending"), ("DELIVERED", "delivered"), ("FAILED", "failed")]


def test_terminal_statuses() -> None:
    assert frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}) == TERMINAL


def test_every_allowed_move() -> None:
    moves = {(a.value, b.value) for a, targets in TRANSITIONS.items() for b in targets}
    assert moves == {
        ("pending", "running"), ("pending", "cancelled"), ("pending", "failed"),
        ("running", "succeeded"), ("running", "failed"), ("running", "pending"), ("running", "cancelled"),
        ("succeeded", "pending"), ("failed", "pending"), ("cancelled", "pending"),
    }
    assert set(TRANSITIONS) == set(JobStatus)
    assert all(isinstance(targets, frozenset) for targets in TRANSITIONS.values())


def test_a_terminal_status_leaves_only_by_a_manual_retry() -> None:
    assert all(TRANSITIONS[status] == {JobStatus.PENDING} for status in TERMINAL)
    assert not any(JobStatus.RUNNING in TRANSITIONS[status] for status in TERMINAL)
