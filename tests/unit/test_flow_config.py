"""Limits and schedules from the config file: parsed strictly, errors naming the table and key; slot
arithmetic (catch-up policies, DST) without a database."""

from __future__ import annotations

import datetime as dt
import itertools
from pathlib import Path

import pytest

from pending_jobs import config, declared, limits, schedules
from pending_jobs.errors import ConfigError

UTC = dt.UTC


def test_queue_and_task_limits_become_scopes() -> None:
    parsed = limits.parse({"mail": {"max_running": 3, "rate_limit": "50/s", "concurrency_limit": 1}},
                          {"report": {"concurrency_limit": 2, "rate_limit": "10/m"}, "sql_task": {"sql": "SELECT 1"}})
    assert parsed.applies("other")  # a task limit may bind in any queue
    names = [scope.name for scope in parsed.scopes("mail", "report", "user-7")]
    assert names == ["queue:mail", "key:queue:mail:user-7", "rate:queue:mail", "key:task:report:user-7",
                     "rate:task:report"]
    assert [s.name for s in parsed.scopes("mail", "report", None)] == ["queue:mail", "rate:queue:mail",
                                                                       "rate:task:report"]
    assert parsed.tasks["report"].rate == limits.Rate(10, 60.0, "10/m")
    assert not limits.parse({}, {"sql_task": {"sql": "SELECT 1"}})  # no limit: every claim is the plain one


@pytest.mark.parametrize(("queues", "tasks", "error"), [
    ({"mail": {"max_running": 0}}, {}, r"\[queue.mail\] max_running: must be a whole number from 1"),
    ({"mail": {"max_running": True}}, {}, r"\[queue.mail\] max_running"),
    ({"mail": {"rate_limit": "fast"}}, {}, r"\[queue.mail\] rate_limit: must be a string like"),
    ({"mail": {"rate_limit": "5/d"}}, {}, r"\[queue.mail\] rate_limit: the period must be s, m or h"),
    ({"mail": {"rate_limit": "1/1e300h"}}, {}, r"\[queue.mail\] rate_limit: the period must be at most a day"),
    ({"mail": {"rate_limit": "1/25h"}}, {}, r"the period must be at most a day \(24h\), not '25h'"),
    ({"mail": {"max_runing": 3}}, {}, r"\[queue.mail\]: unknown key 'max_runing'"),
    ({}, {"t": {"concurrency_limit": 2.5}}, r"\[task.t\] concurrency_limit"),
    ({"q\x00": {"max_running": 1}}, {}, r"\[queue.q\x00\]: a queue name must not contain NUL"),
    ({"q" * 65: {"max_running": 1}}, {}, r"a queue name of 1 to 64 characters"),
    ({"mail ": {"max_running": 1}}, {}, r"\[queue.mail \]: a queue name must not start or end with whitespace"),
    ({" ": {"max_running": 1}}, {}, r"\[queue. \]: a queue name must not start or end with whitespace"),
])
def test_bad_limits_name_the_table_and_key(queues: dict, tasks: dict, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        limits.parse(queues, tasks)


def test_each_table_is_read_alone_so_one_mistake_costs_only_its_own_table(tmp_path: Path) -> None:
    applied, queue_errors, task_errors = limits.parse_each(
        {"mail": {"max_running": 0}, "sms": {"max_running": 2}},
        {"report": {"rate_limit": "fast"}, "export": {"concurrency_limit": 1}})
    assert set(applied.queues) == {"sms"} and set(applied.tasks) == {"export"}
    assert list(queue_errors) == ["mail"] and queue_errors["mail"].startswith("[queue.mail] max_running")
    assert list(task_errors) == ["report"] and task_errors["report"].startswith("[task.report] rate_limit")

    plan, schedule_errors = schedules.parse_each({"a": {"cron": "every day", "task": "t"},
                                                  "b": {"every": "1m", "task": "t"}})
    assert set(plan) == {"b"} and schedule_errors["a"].startswith("[schedules.a] cron")

    path = tmp_path / "jobs.toml"
    path.write_text('[task.good]\ncommand = ["true"]\n[task.bad]\ncommand = ["true"]\ntimeout = "soon"\n'
                    '[queue.mail]\nmax_running = 0\n[schedules.x]\nevery = "1m"\ntask = "good"\ncolour = 1\n')
    settings = config.load({}, environ={}, config_file=str(path))
    tasks = declared.load(settings)
    assert not tasks["good"].held and tasks["bad"].held.startswith("[task.bad] timeout")
    assert [error.split(":")[0] for error in declared.table_errors(settings)] == [
        "[task.bad] timeout", "[queue.mail] max_running", "[schedules.x]"]
    with pytest.raises(ConfigError, match=r"\[queue.mail\] max_running"):  # the strict reading raises the first
        limits.parse(settings.queue_tables, settings.declared_tasks)


def test_rates_with_a_period_size() -> None:
    assert limits.parse_rate("10/5m").per_second == pytest.approx(10 / 300)
    assert limits.parse_rate("50/s").burst == 5.0 and limits.parse_rate("3/h").burst == 1.0


def test_a_task_table_holding_only_limits_is_a_python_tasks_settings() -> None:
    assert declared.spec.parse_all({"report": {"concurrency_limit": 2}}) == {}
    spec = declared.spec.parse_all({"q": {"sql": "SELECT 1", "rate_limit": "5/s"}})["q"]
    assert isinstance(spec, declared.SqlSpec)
    with pytest.raises(ConfigError, match=r"\[task.t\]: needs one of sql, url or command \(a table holding only"):
        declared.spec.parse_all({"t": {"concurrency_limit": 2, "timeout": 5}})


def test_the_config_file_holds_queue_and_schedule_tables(tmp_path: Path) -> None:
    path = tmp_path / "jobs.toml"
    path.write_text('[pending_jobs]\nbatch_size = 10\n\n[queue.mail]\nmax_running = 2\n\n'
                    '[schedules.nightly]\ncron = "0 2 * * *"\ntask = "report"\n')
    settings = config.load({}, environ={}, config_file=str(path))
    assert settings.queue_tables == {"mail": {"max_running": 2}}
    assert schedules.parse(settings.schedule_tables)["nightly"].spec == "0 2 * * * (UTC)"
    path.write_text("[queue]\nmail = 3\n")
    with pytest.raises(ConfigError, match=r"queue must hold one table per name"):
        config.load({}, environ={}, config_file=str(path))


@pytest.mark.parametrize(("table", "error"), [
    ({"task": "t"}, r"needs cron = .* or every"),
    ({"cron": "0 2 * *", "task": "t"}, r"\[schedules.s\] cron: '0 2 \* \*' "),
    ({"cron": "61 * * * *", "task": "t"}, r"\[schedules.s\] cron: .*Bad minute"),
    ({"every": "0s", "task": "t"}, r"\[schedules.s\] every: must be from 1 s"),
    ({"every": "1m"}, r"\[schedules.s\] task: is required"),
    ({"every": "1m", "task": "t", "timezone": "UTC"}, r"timezone: applies to cron only"),
    ({"cron": "* * * * *", "task": "t", "timezone": "Mars/Olympus"}, r"timezone: 'Mars/Olympus' is not in"),
    ({"every": "1m", "task": "t", "catch_up": "some"}, r"catch_up: must be skip, latest or all"),
    ({"every": "1m", "task": "t", "payload": {"_schedule": 1}}, r"payload: _schedule is reserved"),
    ({"every": "1m", "task": "t", "payload": {"at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC)}},
     r"\[schedules.s\] payload: must hold JSON values only \(write dates and times as strings\)"),
    ({"every": "1m", "task": "t", "payload": {"day": {"d": dt.date(2026, 1, 1)}}}, r"payload: must hold JSON"),
    ({"every": "1m", "task": "t", "run_at": 1}, r"unknown key 'run_at'"),
    ({"every": "1m", "task": "t", "queue": "q\x00"}, r"queue: must not contain NUL"),
    ({"every": "1m", "task": "t", "queue": ""}, r"queue: must be a non-empty string of at most 64 characters, not ''"),
    ({"every": "1m", "task": "t", "queue": "mail "}, r"queue: must not start or end with whitespace"),
    ({"every": "1m", "task": "t", "concurrency_key": "k\x00"}, r"concurrency_key: must not contain NUL"),
    ({"every": "1m", "task": "t", "concurrency_key": "k "}, r"concurrency_key: must not start or end with white"),
    ({"every": "1m", "task": "t\x00"}, r"task: must not contain NUL"),
    ({"every": "1m", "task": "t", "payload": {"a": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}},
     r"payload: nests 32 levels deep; at most 31"),
    # A folder of the zone database: IsADirectoryError, a traceback in every command, no run at all.
    ({"cron": "* * * * *", "task": "t", "timezone": "Europe"}, r"timezone: 'Europe' is not in the time zone"),
    ({"cron": "* * * * *", "task": "t", "timezone": "America/Argentina"}, r"timezone: 'America/Argentina' is not"),
    # Each host's own /etc/localtime: two hosts in different zones enqueued two jobs for one 02:00.
    ({"cron": "0 2 * * *", "task": "t", "timezone": "localtime"}, r"timezone: 'localtime' is each host's own zone"),
    ({"cron": "0 2 * * *", "task": "t", "timezone": "posixrules"}, r"timezone: 'posixrules' is each host's own"),
    # A grace of 0 never enqueued: a serving run looks every second, so a slot was always late by then; the
    # floor is 5 s, a margin over that step.
    ({"every": "2s", "task": "t", "grace": 0}, r"grace: must be from 5 s to 366 d, not 0"),
    ({"every": "2s", "task": "t", "grace": "4.9s"}, r"grace: must be from 5 s"),
    # PostgreSQL refused the job's INSERT at every look; the look logged it, check said ok.
    ({"every": "1m", "task": "t", "payload": {"a": "\x00"}},
     r"payload: its job's payload contains a NUL character, which PostgreSQL jsonb cannot store"),
])
def test_bad_schedules_name_the_table_and_key(table: dict, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        schedules.parse({"s": table})


def test_a_schedule_whose_job_would_be_over_the_payload_limit_is_refused() -> None:
    # Each of its jobs failed at its claim (payload is 141 bytes, over the 50-byte limit); check said ok.
    table = {"every": "1m", "task": "t", "payload": {"text": "x" * 30}}
    with pytest.raises(ConfigError, match=r"^\[schedules.s\] payload: its job's payload is 103 bytes, over the "
                                          r"102-byte limit$"):  # _schedule with the longest slot included
        schedules.parse({"s": table}, 102)
    assert schedules.parse({"s": table}, 103)["s"].payload == {"text": "x" * 30}
    assert schedules.parse({"s": {**table, "grace": "5s"}})["s"].grace == 5.0


def slot(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_every_counts_from_the_epoch_so_every_host_agrees() -> None:
    every = schedules.parse({"s": {"every": "15m", "task": "t"}})["s"]
    assert every.next_after(slot("2026-05-01T10:07:00")) == slot("2026-05-01T10:15:00")
    assert every.latest_at(slot("2026-05-01T10:15:00")) == slot("2026-05-01T10:15:00")
    assert every.key_for(slot("2026-05-01T10:15:00")) == "schedule:s:2026-05-01T10:15:00Z"
    assert every.payload_for(slot("2026-05-01T10:15:00"))["_schedule"] == {"name": "s", "slot": "2026-05-01T10:15:00Z"}


def test_a_schedules_own_slots_are_its_slots_whatever_the_float_arithmetic() -> None:
    # A last slot that is not one of its slots means the schedule was changed (store/schedules.py goes on from its
    # newest past slot): a slot of its own read as foreign would hold the schedule back at every look.
    for every in ("1.1s", "2.5s", "13.37s", "1.5d"):
        plan = schedules.parse({"s": {"every": every, "task": "t"}})["s"]
        moment = slot("2026-05-01T10:07:00")
        for _ in range(500):
            moment = plan.next_after(moment)
            assert plan.is_slot(moment) and not plan.is_slot(moment + dt.timedelta(milliseconds=2))
    daily = schedules.parse({"s": {"cron": "0 2 * * *", "task": "t"}})["s"]
    assert daily.is_slot(slot("2026-05-01T02:00:00")) and not daily.is_slot(slot("2026-05-01T03:00:00"))


def test_catch_up_policies() -> None:
    def due(policy: str, **extra: object) -> tuple[list[dt.datetime], int]:
        plan = schedules.parse({"s": {"every": "1m", "task": "t", "catch_up": policy, **extra}})["s"]
        return plan.due(slot("2026-05-01T10:00:00"), slot("2026-05-01T10:10:20"))

    assert due("skip") == ([slot("2026-05-01T10:10:00")], 9)  # 20 s late: within the 60 s grace
    assert due("skip", grace="5s") == ([], 10)
    assert due("latest") == ([slot("2026-05-01T10:10:00")], 9)
    assert due("all") == ([slot(f"2026-05-01T10:{m:02}:00") for m in range(1, 11)], 0)
    assert due("all", catch_up_limit=3) == ([slot(f"2026-05-01T10:{m:02}:00") for m in (8, 9, 10)], 7)


def test_daylight_saving_time_follows_the_zone_database() -> None:
    berlin = schedules.parse({"s": {"cron": "30 2 * * *", "timezone": "Europe/Berlin", "task": "t",
                                    "catch_up": "all"}})["s"]
    # Spring forward (2026-03-29): 02:30 does not exist; it fires at 03:00 CEST = 01:00 UTC.
    assert berlin.next_after(slot("2026-03-28T12:00:00")) == slot("2026-03-29T01:00:00")
    # Fall back (2026-10-25): 02:30 happens twice; it fires once, at the first (CEST, 00:30 UTC).
    fired, _ = berlin.due(slot("2026-10-24T12:00:00"), slot("2026-10-26T12:00:00"))
    assert fired == [slot("2026-10-25T00:30:00"), slot("2026-10-26T01:30:00")]
    hourly = schedules.parse({"s": {"cron": "0 * * * *", "timezone": "Europe/Berlin", "task": "t",
                                    "catch_up": "all"}})["s"]
    fired, _ = hourly.due(slot("2026-10-24T23:30:00"), slot("2026-10-25T02:30:00"))
    assert fired == [slot("2026-10-25T00:00:00"), slot("2026-10-25T01:00:00"), slot("2026-10-25T02:00:00")]


def _plan(cron: str, zone: str, catch_up: str = "all") -> schedules.Schedule:
    return schedules.parse({"s": {"cron": cron, "timezone": zone, "task": "t", "catch_up": catch_up}})["s"]


@pytest.mark.parametrize(("zone", "night", "jump"), [
    ("Europe/Berlin", "2026-03-28T12:00:00", "2026-03-29T01:00:00"),
    ("America/New_York", "2026-03-07T12:00:00", "2026-03-08T07:00:00"),
])
def test_a_time_of_day_skipped_when_clocks_spring_forward_fires_once_at_the_first_minute_after(
        zone: str, night: str, jump: str) -> None:
    start, end = slot(night), slot(night) + dt.timedelta(days=1)  # `jump` is 03:00 local, the first after 01:59
    for cron in ("30 2 * * *", "0 2 * * *", "59 2 * * *", "0-59 2 * * *", "0,30 2 * * *", "0 2,3 * * *"):
        # once (one idempotency key): also where 02:00 and 03:00 are one moment that night
        assert _plan(cron, zone).due(start, end) == ([slot(jump)], 0), cron
        assert _plan(cron, zone, "skip").due(slot(jump) - dt.timedelta(seconds=1), slot(jump)) == ([slot(jump)], 0)
        assert _plan(cron, zone).is_slot(slot(jump))  # as a last slot it is one of the schedule's own, not a change
        assert _plan(cron, zone).next_after(slot(jump) - dt.timedelta(hours=1)) == slot(jump)
    # A wildcard minute or hour names instants, not a time of day: that night has no 02:xx, so nothing fires
    # (not 60 jobs at 03:00); hourly and */N crons go on at 03:00 as at any hour.
    assert _plan("* 2 * * *", zone).due(start, end) == ([], 0)
    assert _plan("*/15 2 * * *", zone).due(start, end) == ([], 0)
    hourly, _ = _plan("0 * * * *", zone).due(start, end)
    assert hourly == [start + dt.timedelta(hours=hour) for hour in range(1, 25)]


def test_the_hour_repeated_when_clocks_fall_back_keeps_the_slots_of_its_first_pass() -> None:
    nightly = schedules.parse({"s": {"cron": "30 2 * * *", "timezone": "Europe/Berlin", "task": "t",
                                     "catch_up": "all"}})["s"]
    # 01:10 UTC is 02:10 CET, the second pass: 02:30 CEST (00:30 UTC) has passed, before a look made now.
    assert nightly.latest_at(slot("2026-10-25T01:10:00")) == slot("2026-10-25T00:30:00")
    assert nightly.due(nightly.latest_at(slot("2026-10-25T01:10:00")), slot("2026-10-25T01:30:10")) == ([], 0)
    hourly = schedules.parse({"s": {"cron": "0 * * * *", "timezone": "Europe/Berlin", "task": "t"}})["s"]
    assert hourly.latest_at(slot("2026-10-25T01:10:00")) == slot("2026-10-25T01:00:00")  # 02:00 CET
    assert list(itertools.islice(hourly.back_from(slot("2026-10-25T01:10:00")), 3)) == [
        slot("2026-10-25T01:00:00"), slot("2026-10-25T00:00:00"), slot("2026-10-24T23:00:00")]
