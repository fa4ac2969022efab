"""Recurring schedules on every database: each slot enqueued once across hosts, catch-up policies, DST."""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
from collections import Counter

import pytest
import sqlalchemy as sa

from pending_jobs.schedules import parse
from pending_jobs.schema import schedules as S
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


def test_a_schedule_whose_times_changed_goes_on_from_its_new_times(store: Store, engine: sa.Engine) -> None:
    # "0 2" became "0 3" at 10:00 while runs looked all along: the 03:00 of that morning was never due. Under
    # catch_up = latest it was enqueued at once (a second daily report that day), under all with every slot of a
    # more frequent cron since the last 02:00, and skip warned of it as missed while nothing ran.
    before = parse({"report": {"cron": "0 2 * * *", "task": "tick", "catch_up": "latest"}})
    after = parse({"report": {"cron": "0 3 * * *", "task": "tick", "catch_up": "latest"}})
    day = dt.datetime(2026, 5, 1, tzinfo=dt.UTC)
    ScheduleStore(store).enqueue_due(before, now=day + dt.timedelta(hours=2, seconds=30))
    schedules = ScheduleStore(store)  # the next run, with the changed config
    assert schedules.enqueue_due(after, now=day + dt.timedelta(hours=10)) == []
    assert keys(engine) == []
    schedules.enqueue_due(after, now=day + dt.timedelta(days=1, hours=3, seconds=5))
    assert keys(engine) == ["schedule:report:2026-05-02T03:00:00Z"]
    assert schedules.rows()["report"].skipped == 0


def test_hosts_on_the_old_and_the_new_times_during_a_deploy_lose_no_slot(store: Store, engine: sa.Engine) -> None:
    before = parse({"report": {"cron": "0 2 * * *", "task": "tick"}})
    after = parse({"report": {"cron": "0 3 * * *", "task": "tick"}})
    day = dt.datetime(2026, 5, 1, tzinfo=dt.UTC)
    old, new = ScheduleStore(store), ScheduleStore(store)
    old.enqueue_due(before, now=day + dt.timedelta(hours=1, minutes=59, seconds=30))
    for seconds in range(0, 3700, 20):  # 01:59:50 to 03:01:30, each host looking in turn
        moment = day + dt.timedelta(hours=1, minutes=59, seconds=50 + seconds)
        old.enqueue_due(before, now=moment)
        new.enqueue_due(after, now=moment + dt.timedelta(seconds=10))
    assert keys(engine) == ["schedule:report:2026-05-01T02:00:00Z", "schedule:report:2026-05-01T03:00:00Z"]


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


def test_a_schedule_whose_row_is_deleted_while_a_run_serves_starts_afresh(store: Store, engine: sa.Engine) -> None:
    # docs/flow.md: "to start afresh, delete its row first". A serving run remembered the row as created and
    # took the missing row for one another host was busy with: the schedule never fired again in that run.
    plan = parse({"a": {"every": "1m", "task": "tick"}})
    schedules = ScheduleStore(store)  # one per serving run: it keeps looking while the row is deleted
    schedules.enqueue_due(plan, now=T0)
    schedules.enqueue_due(plan, now=T0 + dt.timedelta(minutes=1, seconds=10))
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM pending_job_schedules WHERE name = 'a'"))
    for minutes in range(2, 6):
        schedules.enqueue_due(plan, now=T0 + dt.timedelta(minutes=minutes, seconds=10))
    found = keys(engine)
    assert found[0] == "schedule:a:2026-03-29T00:51:00Z"
    assert "schedule:a:2026-03-29T00:55:00Z" in found  # recreated at a look, then fired on as a new schedule
    assert len(found) == len(set(found))
    assert "a" in schedules.rows()


def test_a_database_clock_stepped_back_does_not_hold_a_schedule_until_it_gets_there(
        store: Store, engine: sa.Engine) -> None:
    # The clock two hours ahead (the host's, for SQLite; the server's otherwise) when the row was last moved, then
    # set right: no slot was enqueued for two hours, and `schedules` said "ok".
    plan = parse({"a": {"every": "1m", "task": "tick"}})
    schedules = ScheduleStore(store)
    schedules.enqueue_due(plan)
    now = schedules.now()
    with engine.begin() as conn:
        conn.execute(sa.update(S).values(last_slot=(now + dt.timedelta(hours=2)).replace(tzinfo=None)))
    schedules.enqueue_due(plan)  # the database clock, as a run's looks read it
    last = schedules.rows()["a"].last_slot
    assert last is not None and now - dt.timedelta(minutes=1) <= last <= schedules.now()
    fired = schedules.enqueue_due(plan, now=now + dt.timedelta(seconds=61))
    assert [len(f.slots) for f in fired] == [1]


def test_a_last_slot_a_little_ahead_of_the_database_clock_changes_nothing(store: Store, engine: sa.Engine) -> None:
    plan = parse({"a": {"every": "10s", "task": "tick"}})
    schedules = ScheduleStore(store)
    schedules.enqueue_due(plan)
    ahead = plan["a"].latest_at(schedules.now() + dt.timedelta(seconds=30))  # a host with a later clock moved it on
    with engine.begin() as conn:
        conn.execute(sa.update(S).values(last_slot=ahead.replace(tzinfo=None)))
    assert schedules.enqueue_due(plan) == []
    assert schedules.rows()["a"].last_slot == ahead


def test_clocks_moving_by_half_an_hour_or_off_the_hour_enqueue_each_slot_once_and_none_ahead(
        store: Store, engine: sa.Engine) -> None:
    # Chatham falls back at 03:45 +13:45 (14:00 UTC) to 02:45 +12:45. A look at 03:00:11, before the change,
    # enqueued the 15 slots 02:45-02:59 of the second pass an hour early (counting 10,000 jobs) and moved the
    # schedule's last slot an hour ahead of the clock.
    chatham = parse({"chatham": {"cron": "* 2 * * *", "timezone": "Pacific/Chatham", "task": "tick"}})
    hosts = [ScheduleStore(store) for _ in range(2)]
    hosts[0].enqueue_due(chatham, now=dt.datetime(2026, 4, 4, 13, 14, 30, tzinfo=dt.UTC))  # 02:59:30 +13:45
    for moment in range(41, 3661, 60):  # each host in turn until 03:00:11 +12:45 (the second pass's 02:xx)
        hosts[moment // 60 % 2].enqueue_due(chatham, now=dt.datetime(2026, 4, 4, 13, 14, tzinfo=dt.UTC)
                                            + dt.timedelta(seconds=moment))
    assert keys(engine) == [f"schedule:chatham:2026-04-04T14:{minute:02}:00Z" for minute in range(15)]
    assert hosts[0].rows()["chatham"].enqueued == 15
    # Lord Howe springs forward at 02:00 +10:30 (15:30 UTC) to 02:30 +11. A run that last looked at 23:40 and
    # next at 04:45 (catch_up = all) missed 23:41-23:59 +10:30: the look-back lost them, and enqueued nothing.
    lord_howe = parse({"lord_howe": {"cron": "* 23 * * *", "timezone": "Australia/Lord_Howe", "task": "tick",
                                     "catch_up": "all"}})
    hosts[0].enqueue_due(lord_howe, now=dt.datetime(2026, 10, 3, 13, 10, tzinfo=dt.UTC))
    fired = hosts[1].enqueue_due(lord_howe, now=dt.datetime(2026, 10, 3, 17, 45, tzinfo=dt.UTC))
    assert [len(f.slots) for f in fired] == [19]
    assert [key for key in keys(engine) if ":lord_howe:" in key][-1] == "schedule:lord_howe:2026-10-03T13:29:00Z"
