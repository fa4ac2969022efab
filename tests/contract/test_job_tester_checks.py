"""JobTester's settings are checked as the config file's are, and assert_enqueued compares payloads as JSON
values (on the tester's default database, a fresh SQLite file)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from pending_jobs import config, registry
from pending_jobs.errors import ConfigError
from pending_jobs.registry import Task
from pending_jobs.testing import JobTester


@pytest.mark.parametrize(("name", "value"), [
    ("batch_size", 0), ("lease", -5), ("concurrency", 0), ("batch_size", True), ("max_runtime", "soon"),
    ("payload_limit", 2.5), ("callback_schedule", [5, -1]),
])
def test_a_bad_setting_is_refused_with_the_config_files_reason(name: str, value: object) -> None:
    with pytest.raises(ConfigError) as file_error:
        config.load(environ={}, flags={name: value})  # the CLI's check of the same value
    with pytest.raises(ConfigError) as refused:
        JobTester(tasks={}, **{name: value})
    reason = str(file_error.value).split(": ", 1)[1]
    assert str(refused.value) == f"JobTester {name}: {reason}"


def test_a_batch_size_of_zero_names_its_range() -> None:
    with pytest.raises(ConfigError, match=r"^JobTester batch_size: 0 is outside 1 to 10000$"):
        JobTester(tasks={}, batch_size=0)


@pytest.mark.parametrize("name", ["poll", "callbacks", "max_jobs"])
def test_a_setting_run_decides_is_refused_by_name(name: str) -> None:
    with pytest.raises(ConfigError, match=rf"^JobTester {name}: not a setting of an inline run: "):
        JobTester(tasks={}, **{name: 1})


def test_an_unknown_setting_is_refused() -> None:
    with pytest.raises(TypeError, match="unknown setting 'bach_size'"):
        JobTester(tasks={}, bach_size=5)


def test_run_checks_max_jobs_as_the_cli_does() -> None:
    with JobTester(tasks=["tests.jobs"]) as tester, pytest.raises(ConfigError, match="max_jobs: -1 is outside"):
        tester.run(max_jobs=-1)


def test_the_callers_concurrency_and_max_runtime_win_and_settings_are_parsed() -> None:
    with JobTester(tasks=["tests.jobs"], concurrency=2, max_runtime="2m", batch_size="10", lease=30) as tester:
        assert (tester.settings.concurrency, tester.settings.max_runtime) == (2, 120.0)
        assert (tester.settings.batch_size, tester.settings.lease, tester.settings.poll) == (10, 30.0, 0.0)
        for n in range(4):
            tester.enqueue("echo", {"n": n})
        assert tester.run().succeeded == 4
    with JobTester(tasks=["tests.jobs"]) as tester:
        assert (tester.settings.concurrency, tester.settings.max_runtime) == (1, 300.0)  # INLINE's defaults


def test_assert_enqueued_never_takes_a_boolean_for_a_number() -> None:
    with JobTester(tasks={}) as tester:
        tester.enqueue("flags", {"flag": 1, "n": 1.0, "nested": {"on": 0}, "list": [1, True]})

        tester.assert_not_enqueued(payload={"flag": True})
        tester.assert_not_enqueued(payload={"nested": {"on": False}})
        tester.assert_not_enqueued(payload={"list": [True, 1]})
        with pytest.raises(AssertionError, match="no job with"):
            tester.assert_enqueued(payload={"flag": True, "n": 1})
        # Numbers compare by value: JSON has one number type, so 1 and 1.0 are the same payload value.
        tester.assert_enqueued(payload={"flag": 1, "n": 1, "nested": {"on": 0}, "list": [1.0, True]}, count=1)


def test_assert_enqueued_matches_booleans_only_with_booleans() -> None:
    with JobTester(tasks={}) as tester:
        tester.enqueue("flags", {"flag": True, "off": False})

        tester.assert_enqueued(payload={"flag": True, "off": False}, count=1)
        tester.assert_not_enqueued(payload={"flag": 1})
        tester.assert_not_enqueued(payload={"off": 0})
        tester.assert_not_enqueued(payload={"off": None})


@pytest.mark.parametrize(("settings", "reason"), [
    ({"declared_tasks": {"bad": {"sql": "SELECT 1", "nope": 1}}}, r"^\[task\.bad\]: unknown key 'nope'"),
    ({"tasks": ["tests.no_such_module"]}, r"^cannot import task module 'tests\.no_such_module'"),
])
def test_a_tester_that_cannot_start_says_why_and_leaves_no_folder(settings: dict[str, object], reason: str,
                                                                  tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where JobTester makes its temporary folder
    with pytest.raises(ConfigError, match=reason):
        JobTester(**settings)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_a_process_isolated_handler_runs_in_its_child() -> None:
    """Its child imports the handler's module by name: the tester gave it none, and the job was retried
    with `KeyError: 'echo_isolated'`, whether the tasks came as modules or as the registry's entries."""
    for tasks in (["tests.jobs"], {"echo_isolated": registry.load(["tests.jobs"])["echo_isolated"]}):
        with JobTester(tasks=tasks) as tester:  # type: ignore[arg-type]
            job_id = tester.enqueue("echo_isolated", {"n": 1})
            assert tester.run().succeeded == 1, tester.job(job_id).last_error
            result = tester.job(job_id).result
            assert result["payload"] == {"n": 1} and result["pid"] != os.getpid()


def test_a_process_isolated_handler_its_child_cannot_import_is_named() -> None:
    def built_by_hand(payload: object, ctx: object) -> None:
        return None

    with JobTester(tasks={"by_hand": Task("by_hand", built_by_hand, isolation="process")}) as tester:
        job_id = tester.enqueue("by_hand", {})
        assert tester.run().retried == 1
        assert "LookupError: task 'by_hand' has no handler in its child process: a process-isolated handler is " \
               "imported again there, so it must be registered with @task in one of the task modules (" \
               f"{__name__})" in (tester.job(job_id).last_error or "")


def test_tasks_may_be_plain_handler_functions() -> None:
    """The README's "a dict of handlers": a function failed with AttributeError ('function' object has no
    attribute 'isolation'), from inside the tester."""
    def double(payload: dict[str, int], ctx: object) -> int:
        return payload["n"] * 2

    with JobTester(tasks={"double": double}) as tester:
        job_id = tester.enqueue("double", {"n": 21})
        assert tester.run().succeeded == 1 and tester.job(job_id).result == 42
    with pytest.raises(TypeError, match=r"^JobTester tasks\['double'\] must be a handler function or a registry "
                                        r"Task, not 42$"):
        JobTester(tasks={"double": 42})  # type: ignore[dict-item]


def test_the_testers_enqueue_keeps_its_payload_limit() -> None:
    """`JobTester(payload_limit=…)` bounded what a run reads, but `tester.enqueue` used enqueue()'s default."""
    with JobTester(tasks={}, payload_limit=100) as tester:
        with pytest.raises(ValueError, match=r"^payload is 1\d\d bytes, over the 100-byte limit$"):
            tester.enqueue("big", {"text": "x" * 100})
        assert tester.enqueue("big", {"text": "x" * 100}, payload_limit=1000)  # the caller's own limit wins


def test_a_status_or_count_no_job_can_have_is_refused() -> None:
    """`assert_not_enqueued(status='faild')` passed for a failed job: the typo matched nothing."""
    with JobTester(tasks={}) as tester:
        tester.enqueue("mail", {})
        for call in (lambda: tester.assert_not_enqueued(status="faild"),
                     lambda: tester.assert_enqueued(status="PENDING", count=0), lambda: tester.jobs(status="done")):
            with pytest.raises(ValueError, match=r"^status must be one of pending, running, succeeded, failed, "
                                                 r"cancelled, not '"):
                call()
        for count in (-1, False, 0.0, "1"):
            with pytest.raises(ValueError, match=r"^count must be a whole number of jobs, 0 or more, not "):
                tester.assert_enqueued(task="mail", count=count)  # type: ignore[call-overload]
        assert tester.assert_enqueued(task="mail", status="pending", count=1).task == "mail"


def test_not_migrating_needs_a_database_of_ones_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(ValueError, match=r"^migrate_schema=False needs the test's own database_url"):
        JobTester(tasks={}, migrate_schema=False)
    assert list(tmp_path.iterdir()) == []
