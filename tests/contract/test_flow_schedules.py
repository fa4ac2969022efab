"""Recurring schedules on every database: each slot enqueued once across hosts, catch-up policies, DST."""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
from collections import Counter

import pytest
import sqlalchemy as sa

from pending_jobs.schedules import parse
from pending_jobs.store import ScheduleStore, Store
from tests.conftest import rows

T0 = dt.datetime(2026, 3, 29, 0, 50, tzinfo=dt.UTC)  # 01:50 in Berlin, 10 minutes before clocks spring forward


def keys(engine: sa.Engine) -> list[str]:
    return [row[0] for row in rows(engine, "SELECT idempotency_key FROM pending_jobs ORDER BY run_at, id")]


def test_three_hosts_racing_for_ten_minutes_enqueue_every_slot_once_across_a_dst_jump(
        store: Store, engine: sa.Engine) -> None:
    plan = parse({
        "every_10s": {"every": "10s", "task": "tick"},
        "berlin": {"cron": "*/5 * * * *", "timezone": "Europe/Berlin", "task": "tick"},
        "half_past_two": {"cron": "30 2 * * *", "timezone": "Europe/Berlin", "task": "tick"},  # 02:30 never exists
    })
    hosts = [ScheduleStore(store) for _ in range(3)]
    for host in hosts:
        host.enqueue_due(plan, now=T0)  # the first look creates the rows: nothing before it is due
    moments = [T0 + dt.timedelta(seconds=s) for s in range(1, 601)]  # 10 minutes of schedule time, 1 s steps
    errors: list[BaseException] = []

    def host(number: int) -> None:
        try:
            for moment in moments:
                hosts[number].enqueue_due(plan, now=moment)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=host, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    found = keys(engine)
    assert [key for key, n in Counter(found).items() if n > 1] == []  # exactly once
    assert {key for key in found if ":every_10s:" in key} == {
        f"schedule:every_10s:{(T0 + dt.timedelta(seconds=s)).strftime('%Y-%m-%dT%H:%M:%S')}Z"
        for s in range(10, 601, 10)}
    # */5 in Berlin: 01:55 CET, then 03:00 CEST (02:00 local never happened), 03:05, … 03:00 CEST is 01:00 UTC
    assert {key for key in found if ":berlin:" in key} == {
        "schedule:berlin:2026-03-29T00:55:00Z", "schedule:berlin:2026-03-29T01:00:00Z"}
    # 02:30 does not exist that night: it fires at the first moment after the jump, 03:00 CEST
    assert [key for key in found if ":half_past_two:" in key] == ["schedule:half_past_two:2026-03-29T01:00:00Z"]
    payload = rows(engine, "SELECT payload FROM pending_jobs WHERE idempotency_key = "
                           "'schedule:half_past_two:2026-03-29T01:00:00Z'")[0][0]
    assert "2026-03-29T01:00:00Z" in str(payload) and "half_past_two" in str(payload)
    listed = hosts[0].rows()
    assert listed["every_10s"].enqueued == 60 and listed["every_10s"].last_job_status == "pending"


def test_catch_up_policies_after_a_gap_where_nothing_ran(store: Store, engine: sa.Engine) -> None:
    plan = parse({
        "skip": {"every": "1m", "task": "tick"},
        "latest": {"every": "1m", "task": "tick", "catch_up": "latest"},
        "all": {"every": "1m", "task": "tick", "catch_up": "all", "catch_up_limit": 5},
    })
    schedules = ScheduleStore(store)
    schedules.enqueue_due(plan, now=T0)
    gap = T0 + dt.timedelta(minutes=10, seconds=30)  # 10 slots came due while nothing ran
    fired = {f.name: f for f in schedules.enqueue_due(plan, now=gap)}
    # skip: only the slot within the 60 s grace (30 s late); the 9 older ones are dropped
    assert fired["skip"].slots == [T0 + dt.timedelta(minutes=10)] and fired["skip"].skipped == 9
    assert fired["latest"].slots == [T0 + dt.timedelta(minutes=10)] and fired["latest"].skipped == 9
    assert fired["all"].slots == [T0 + dt.timedelta(minutes=m) for m in range(6, 11)]
    assert fired["all"].skipped == 5
    on_time = {f.name: f for f in schedules.enqueue_due(plan, now=gap + dt.timedelta(seconds=40))}
    assert {name: len(f.slots) for name, f in on_time.items()} == {"skip": 1, "latest": 1, "all": 1}
    assert schedules.rows()["skip"].skipped == 9 and schedules.rows()["skip"].enqueued == 2


def test_a_schedule_removed_from_the_config_stops(store: Store, engine: sa.Engine) -> None:
    schedules = ScheduleStore(store)
    schedules.enqueue_due(parse({"a": {"every": "1m", "task": "tick"}, "b": {"every": "1m", "task": "tick"}}),
                          now=T0)
    schedules.enqueue_due(parse({"a": {"every": "1m", "task": "tick"}}), now=T0 + dt.timedelta(minutes=1))
    assert keys(engine) == ["schedule:a:2026-03-29T00:51:00Z"]
    assert set(schedules.rows()) == {"a", "b"}  # b's row stays, to be shown as no longer configured


def test_a_schedule_whose_job_cannot_be_inserted_fails_alone(store: Store, engine: sa.Engine,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    # A payload the config check would refuse (a TOML date), given as parsed: every run's first step raised.
    plan = parse({"bad": {"every": "1m", "task": "tick"}, "good": {"every": "1m", "task": "tick"}})
    plan["bad"] = dataclasses.replace(plan["bad"], payload={"at": dt.date(2026, 1, 1)})
    schedules = ScheduleStore(store)
    schedules.enqueue_due(plan, now=T0)
    fired = schedules.enqueue_due(plan, now=T0 + dt.timedelta(minutes=1))
    assert [f.name for f in fired] == ["good"]
    assert keys(engine) == ["schedule:good:2026-03-29T00:51:00Z"]
    assert "schedule bad: could not enqueue its due slots: " in caplog.text
