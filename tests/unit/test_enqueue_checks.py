"""What enqueue() and enqueue_many() refuse, with a ValueError that says why: task names with whitespace at
either end, a NUL (a real one, not its text), arguments of the wrong type or out of range."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from pending_jobs.enqueue import enqueue_many, job_row
from pending_jobs.validation import dump_json


@pytest.mark.parametrize("task", [" ", "\t", " mail", "mail ", "mail\n", "\u3000mail", "mail\x1f"])
def test_a_task_name_with_whitespace_at_either_end_is_refused(task: str) -> None:
    with pytest.raises(ValueError, match=r"^task must not be blank or start or end with whitespace$"):
        job_row(task)


def test_a_task_name_may_hold_whitespace_inside() -> None:
    assert job_row("send mail")["task"] == "send mail"


@pytest.mark.parametrize("text", ["\\u0000", "C:\\\\u0000", "a\\u0000b\\\\", "\\\\\\\\u0000", "u0000"])
def test_the_text_of_a_nul_escape_is_not_a_nul(text: str) -> None:
    assert dump_json({"re": text, text: 1}, "payload", 100, allow_nul=False)


@pytest.mark.parametrize("text", ["\x00", "a\x00b", "\\\x00", "\\\\\x00", "\\u0000\x00"])
def test_a_real_nul_is_refused_whatever_backslashes_precede_it(text: str) -> None:
    for payload in ({"x": text}, {text: 1}, {"x": [{"y": text}]}):
        with pytest.raises(ValueError, match="contains a NUL character"):
            dump_json(payload, "payload", 100, allow_nul=False)


@pytest.mark.parametrize("delay", [-1.0, float("inf"), float("nan"), 1e308 * 86_400, 100 * 365 * 86_400.0 + 1])
def test_a_delay_beyond_a_hundred_years_or_not_a_number_is_refused(delay: float) -> None:
    # `enqueue --delay 1e308d` overflowed PostgreSQL's interval: a traceback, not a usage error.
    with pytest.raises(ValueError, match=r"^delay must be from 0 seconds to 100 years"):
        job_row("mail", delay=delay)
    assert job_row("mail", delay=100 * 365 * 86_400.0)["run_at_delay"] == 100 * 365 * 86_400.0


def test_every_place_a_task_is_named_keeps_the_enqueue_rule() -> None:
    # A schedule, a [task.NAME] table or @task taking a name enqueue refuses: check passed, every job failed.
    from pending_jobs import declared, registry, schedules
    from pending_jobs.errors import ConfigError

    with pytest.raises(ConfigError, match=r"\[schedules.s\] task: must not be blank or start or end with whitespace"):
        schedules.parse({"s": {"every": "1m", "task": "report "}})
    with pytest.raises(ConfigError, match=r"\[task. report\]: the task name must not be blank"):
        declared.spec.parse_one(" report", {"command": ["true"]})
    with pytest.raises(ValueError, match=r"task name must not be blank or start or end with whitespace"):
        registry.task("report\n")


@pytest.mark.parametrize(("option", "value", "reason"), [
    ("max_attempts", "3", r"max_attempts must be an integer in 1\.\.1000, not '3'"),
    ("max_attempts", 2.5, r"max_attempts must be an integer in 1\.\.1000, not 2\.5"),
    ("max_attempts", True, r"max_attempts must be an integer in 1\.\.1000, not True"),
    ("priority", False, r"priority must be an integer in -1000\.\.1000, not False"),
    ("priority", 1.0, r"priority must be an integer in -1000\.\.1000, not 1\.0"),
    ("delay", "5", r"delay must be a number of seconds, not str"),
    ("delay", True, r"delay must be a number of seconds, not bool"),
    ("run_at", "2030-01-01T00:00:00Z", r"run_at must be a timezone-aware datetime, not str"),
    ("callback_url", b"https://example.com/", r"callback_url must be a string, not bytes"),
    ("payload_limit", "1000", r"payload_limit must be an integer of at least 1, not '1000'"),
    ("payload_limit", 0, r"payload_limit must be an integer of at least 1, not 0"),
])
def test_an_argument_of_the_wrong_type_is_a_value_error_naming_it(option: str, value: object, reason: str) -> None:
    # Before, "3" and "5" raised TypeError from a comparison, a str run_at AttributeError ('tzinfo'), and
    # 2.5 or True passed: SQLite stored max_attempts 2.5, MariaDB rounded it to 3.
    with pytest.raises(ValueError, match=f"^{reason}$"):
        job_row("mail", **{option: value})


class _Level(int):
    def __str__(self) -> str:
        return "high"


class _Stamp(dt.datetime):
    def __str__(self) -> str:
        return self.strftime("%d/%m/%Y %H:%M")


def test_subclasses_of_int_and_datetime_are_stored_as_plain_values() -> None:
    # PyMySQL picks its converter by exact type: these reached MariaDB as their str(), 'high' and '02/01/2030'.
    row = job_row("mail", priority=_Level(7), max_attempts=_Level(3), run_at=_Stamp(2030, 1, 2, 3, 4, tzinfo=dt.UTC))
    assert (type(row["priority"]), type(row["max_attempts"]), type(row["run_at"])) == (int, int, dt.datetime)
    assert (row["priority"], row["max_attempts"], row["run_at"]) == (7, 3, dt.datetime(2030, 1, 2, 3, 4))


@pytest.mark.parametrize("run_at", [dt.datetime(9999, 12, 31, 23, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
                                    dt.datetime(1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=5)))])
def test_a_run_at_outside_the_years_1_to_9999_in_utc_is_a_value_error(run_at: dt.datetime) -> None:
    # It raised OverflowError from astimezone, and `pending-jobs enqueue --run-at` printed a traceback.
    with pytest.raises(ValueError, match=r"^run_at must be in the years 1\.\.9999 in UTC, not "):
        job_row("mail", run_at=run_at)


@pytest.mark.parametrize(("job", "reason"), [
    ({"task": "mail", "retries": 3}, r"job 1: unknown option 'retries'; the options are task, payload, queue, "),
    ({"payload": {}}, r"job 1: no task$"),
    ("mail", r"job 1: must be a dict of enqueue's arguments, not str$"),
    ({"task": "mail", "priority": 5000}, r"job 1: priority must be an integer in -1000\.\.1000, not 5000$"),
])
def test_enqueue_many_names_the_job_and_what_is_wrong(job: object, reason: str) -> None:
    # A misspelt key or a missing task raised TypeError ("job_row() got an unexpected keyword argument").
    with pytest.raises(ValueError, match=f"^{reason}"):
        enqueue_many(sa.create_engine("sqlite://"), [{"task": "mail"}, job])  # type: ignore[list-item]
