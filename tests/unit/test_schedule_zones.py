"""Cron slots where a zone's clocks change (real zoneinfo, explicit times): a time of day skipped when clocks
spring forward fires once right after the jump, one repeated when they fall back fires once, and a wildcard
cron fires at every instant its local time matches, also where the change is half an hour (Lord Howe) or
not on the hour (Chatham, 03:45)."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest

from pending_jobs import schedules
from pending_jobs.cli.schedules import late_by

UTC = dt.UTC


def slot(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


def plan(cron: str, zone: str, catch_up: str = "all") -> schedules.Schedule:
    return schedules.parse({"s": {"cron": cron, "timezone": zone, "task": "t", "catch_up": catch_up,
                                  "catch_up_limit": 10_000}})["s"]


def local(moments: list[dt.datetime], zone: str) -> list[str]:
    return [moment.astimezone(plan("0 0 * * *", zone).zone).strftime("%H:%M%z") for moment in moments]


def test_lord_howe_falls_back_half_an_hour_a_time_of_day_fires_once_and_a_look_then_is_not_late() -> None:
    # 2026-04-05 02:00 +11 (15:00 UTC) becomes 01:30 +10:30: 01:30 to 02:00 local happens twice.
    zone = "Australia/Lord_Howe"
    nightly = plan("45 1 * * *", zone)
    assert nightly.due(slot("2026-04-04T12:00:00"), slot("2026-04-04T18:00:00"))[0] == [slot("2026-04-04T14:45:00")]
    for look in ("2026-04-04T15:05:00", "2026-04-04T15:20:00"):  # 01:35 and 01:50, the second pass
        first = nightly.latest_at(slot(look))  # where a schedule first looked at now starts
        assert first == slot("2026-04-04T14:45:00")
        later = slot(look) + dt.timedelta(minutes=5)
        assert nightly.due(first, later) == ([], 0)
        assert late_by(nightly, first, later) is None
    quarterly, _ = plan("*/15 * * * *", zone).due(slot("2026-04-04T14:00:00"), slot("2026-04-04T15:30:00"))
    assert local(quarterly, zone) == ["01:15+1100", "01:30+1100", "01:45+1100", "01:30+1030", "01:45+1030",
                                      "02:00+1030"]
    assert list(itertools.islice(plan("*/15 * * * *", zone).back_from(slot("2026-04-04T15:10:00")), 3)) == [
        slot("2026-04-04T15:00:00"), slot("2026-04-04T14:45:00"), slot("2026-04-04T14:30:00")]


def test_lord_howe_springs_forward_half_an_hour_and_keeps_every_slot_of_the_hour_before() -> None:
    # 2026-10-04 02:00 +10:30 (2026-10-03 15:30 UTC) becomes 02:30 +11: 02:00 to 02:30 local never happens.
    zone = "Australia/Lord_Howe"
    since, now = slot("2026-10-03T12:00:00"), slot("2026-10-03T17:45:00")  # 22:30 to 04:45 local
    fired, _ = plan("15 2 * * *", zone).due(since, now)
    assert local(fired, zone) == ["02:30+1100"]
    fired, _ = plan("* 2 * * *", zone).due(since, now)
    assert local(fired[:1] + fired[-1:], zone) == ["02:30+1100", "02:59+1100"] and len(fired) == 30
    # Looking back across the jump, cronsim's walk in the zone lost the hour's last 30 minutes (it moved back by
    # whole hours, landing at :29): catch_up = all enqueued 30 of 60, a new schedule started 30 minutes back.
    fired, _ = plan("* 1 * * *", zone).due(since, now)
    assert len(fired) == 60 and local(fired[-1:], zone) == ["01:59+1030"]
    assert plan("* 23 * * *", zone).latest_at(now) == slot("2026-10-03T13:29:00")  # 23:59 +10:30
    assert plan("*/10 1 * * *", zone).latest_at(now) == slot("2026-10-03T15:20:00")  # 01:50 +10:30


def test_chatham_falls_back_at_a_quarter_to_four_and_no_look_finds_a_slot_ahead_of_it() -> None:
    # 2026-04-05 03:45 +13:45 (14:00 UTC) becomes 02:45 +12:45: 02:45 to 03:45 local happens twice. A look at
    # 03:00 +13:45, before the change, made cronsim walk past it and back again: 10,000 slots 'due', 15 distinct,
    # all an hour ahead, and the schedule's last slot moved an hour into the future.
    zone = "Pacific/Chatham"
    every_minute = plan("* 2 * * *", zone, catch_up="skip")
    now = slot("2026-04-04T13:15:11")
    assert every_minute.latest_at(now) == slot("2026-04-04T13:14:00")  # 02:59 +13:45
    assert every_minute.due(slot("2026-04-04T13:14:00"), now) == ([], 0)
    assert every_minute.next_after(now) == slot("2026-04-04T14:00:00")  # 02:45 +12:45, the second pass
    fired, _ = plan("* 2 * * *", zone).due(slot("2026-04-04T12:00:00"), slot("2026-04-04T15:00:00"))
    assert len(fired) == len(set(fired)) == 75 and max(fired) == slot("2026-04-04T14:14:00")


@pytest.mark.parametrize("zone", ["Australia/Lord_Howe", "Pacific/Chatham", "Europe/Berlin", "America/New_York"])
def test_slots_walked_back_are_those_walked_forward(zone: str) -> None:
    # Over 2 days around each change of 2026: back_from lists exactly the slots next_after steps through.
    for cron in ("* 1 * * *", "* 2 * * *", "*/10 * * * *", "0 */2 * * *", "30 2 * * *", "45 1 * * *"):
        schedule = plan(cron, zone)
        for change in ("2026-04-05T00:00:00", "2026-10-04T00:00:00", "2026-03-29T00:00:00", "2026-03-08T00:00:00",
                       "2026-10-25T00:00:00", "2026-11-01T00:00:00", "2026-09-27T00:00:00"):
            start, end = slot(change) - dt.timedelta(days=1), slot(change) + dt.timedelta(days=1)
            forward = [schedule.next_after(start)]
            while (ahead := schedule.next_after(forward[-1])) <= end:
                forward.append(ahead)
            first = forward[0]
            backward = list(itertools.takewhile(first.__le__, schedule.back_from(end)))
            assert backward[::-1] == forward, (cron, change)
