"""A wildcard cron's slots checked minute by minute against zoneinfo itself (a UTC minute is a slot when its local
time matches the cron's minute and hour), the spans of one UTC offset the walk goes by, the catch-up rules at
their limits, and slots and keys on a host whose own zone is not UTC. Found missing by mutation testing."""

from __future__ import annotations

import datetime as dt
import itertools
import time
import zoneinfo
from collections.abc import Iterator

import pytest

from pending_jobs import schedules

UTC = dt.UTC
MINUTE = dt.timedelta(minutes=1)


def slot(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


def plan(table: dict[str, object]) -> schedules.Schedule:
    return schedules.parse({"s": {"task": "t", **table}})["s"]


def matching(zone: str, minutes: set[int], hours: set[int], start: dt.datetime, end: dt.datetime) -> list[dt.datetime]:
    """Every UTC minute in (start, end] whose local time in `zone` has one of `minutes` and `hours`."""
    tz = zoneinfo.ZoneInfo(zone)
    found, moment = [], start.replace(second=0, microsecond=0) + MINUTE
    while moment <= end:
        local = moment.astimezone(tz)
        if local.minute in minutes and local.hour in hours:
            found.append(moment)
        moment += MINUTE
    return found


# Changes of UTC offset in 2026 (checked against zoneinfo below): Europe/London and Europe/Dublin are at +00:00
# in winter (Dublin's winter time is its negative DST), St John's is at -03:30, Lord Howe shifts by 30 minutes,
# Chatham changes at 02:45 / 03:45 local.
CHANGES = [
    ("Europe/London", "2026-03-29T01:00:00"), ("Europe/London", "2026-10-25T01:00:00"),
    ("Europe/Dublin", "2026-03-29T01:00:00"), ("Europe/Dublin", "2026-10-25T01:00:00"),
    ("America/St_Johns", "2026-03-08T05:30:00"), ("America/St_Johns", "2026-11-01T04:30:00"),
    ("Australia/Lord_Howe", "2026-04-04T15:00:00"), ("Australia/Lord_Howe", "2026-10-03T15:30:00"),
    ("Pacific/Chatham", "2026-04-04T14:00:00"), ("Pacific/Chatham", "2026-09-26T14:00:00"),
]


def offset(zone: str, moment: dt.datetime) -> dt.timedelta | None:
    return moment.astimezone(zoneinfo.ZoneInfo(zone)).utcoffset()


@pytest.mark.parametrize(("zone", "change"), CHANGES)
def test_a_wildcard_cron_fires_at_each_utc_minute_whose_local_time_matches(zone: str, change: str) -> None:
    at = slot(change)
    assert offset(zone, at - dt.timedelta(seconds=1)) != offset(zone, at)  # the table above is the zone's
    start, end = at - dt.timedelta(hours=30), at + dt.timedelta(hours=30)
    for cron, minutes, hours in (("*/20 * * * *", {0, 20, 40}, set(range(24))),
                                 ("*/15 0-3 * * *", {0, 15, 30, 45}, {0, 1, 2, 3})):
        schedule = plan({"cron": cron, "timezone": zone})
        expected = matching(zone, minutes, hours, start, end)
        forward = [schedule.next_after(start)]
        while (ahead := schedule.next_after(forward[-1])) <= end:
            forward.append(ahead)
        assert forward == expected, (cron, zone)
        backward = list(itertools.takewhile(lambda moment: moment > start, schedule.back_from(end)))
        assert backward[::-1] == expected, (cron, zone)


@pytest.mark.parametrize("pair", range(0, len(CHANGES), 2))
def test_a_span_of_one_offset_starts_and_ends_at_the_second_the_offset_changes(pair: int) -> None:
    (zone, first), (_, second) = CHANGES[pair], CHANGES[pair + 1]
    begin, end = slot(first), slot(second)
    tz = zoneinfo.ZoneInfo(zone)
    for moment in (begin, begin + dt.timedelta(days=3, seconds=17), end - dt.timedelta(seconds=1)):
        assert offset(zone, begin - dt.timedelta(seconds=1)) != offset(zone, moment) == offset(zone, begin)
        assert offset(zone, end - dt.timedelta(seconds=1)) == offset(zone, moment) != offset(zone, end)
        schedules._SPANS.clear()
        spanned = schedules._span(tz, moment)
        assert offset(zone, spanned[0]) == offset(zone, moment) == offset(zone, spanned[1] - dt.timedelta(seconds=1))
        assert spanned[0] <= moment < spanned[1]
        # Cut at most SPAN_DAYS from the moment, never past a change: a span ends where the offset changes
        # when that is near, and the change of `first` is found from any moment after it.
        assert spanned[0] == begin or moment - spanned[0] >= dt.timedelta(days=schedules.SPAN_DAYS - 1)
        if end - moment < dt.timedelta(days=schedules.SPAN_DAYS - 1):
            assert spanned[1] == end
        if moment - begin < dt.timedelta(days=schedules.SPAN_DAYS - 1):
            assert spanned[0] == begin


def test_skip_keeps_a_slot_exactly_grace_seconds_late() -> None:
    minutely = plan({"every": "1m"})  # grace 60 s
    assert minutely.due(slot("2026-05-01T09:58:00"), slot("2026-05-01T10:01:00")) == (
        [slot("2026-05-01T10:00:00"), slot("2026-05-01T10:01:00")], 1)


def test_latest_keeps_the_newest_slot_however_late_it_is() -> None:
    hourly = plan({"every": "1h", "catch_up": "latest"})
    assert hourly.due(slot("2026-05-01T00:00:00"), slot("2026-05-01T05:30:00")) == ([slot("2026-05-01T05:00:00")], 4)


def test_slots_are_counted_up_to_the_count_limit_and_no_further() -> None:
    every_second = plan({"every": "1s"})
    now = slot("2026-05-01T12:00:00")
    kept, skipped = every_second.due(now - dt.timedelta(days=1), now)
    assert len(kept) == 61 and kept[-1] == now  # the slots at most 60 s late
    assert len(kept) + skipped == schedules.COUNT_LIMIT


def test_a_moment_a_millisecond_off_a_slot_is_not_a_slot() -> None:
    minutely = plan({"every": "1m"})
    assert minutely.is_slot(slot("2026-05-01T10:00:00"))
    assert not minutely.is_slot(slot("2026-05-01T10:00:00") + schedules.SLOT_SLACK)
    assert not minutely.is_slot(slot("2026-05-01T10:00:00") - schedules.SLOT_SLACK)


@pytest.fixture
def berlin_host(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The process's own zone (TZ) is Europe/Berlin, as on a host whose clock is set to local time."""
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("berlin_host")
def test_slots_and_keys_are_utc_whatever_the_hosts_own_zone() -> None:
    assert time.localtime(0).tm_hour == 1  # the fixture took effect: 1970-01-01 01:00 in Berlin
    moment = slot("2026-01-15T09:10:00")
    for table in ({"cron": "*/5 * * * *", "timezone": "Australia/Lord_Howe"},  # wildcard: walked by span
                  {"cron": "10 9 * * *"}, {"cron": "10 20 * * *", "timezone": "Australia/Lord_Howe"}):
        schedule = plan(table)
        assert schedule.latest_at(moment) == moment
        assert schedule.latest_at(moment).utcoffset() == dt.timedelta(0), table
        assert schedule.next_after(moment).utcoffset() == dt.timedelta(0), table
        assert schedule.key_for(moment) == "schedule:s:2026-01-15T09:10:00Z"
        assert schedule.payload_for(moment)["_schedule"]["slot"] == "2026-01-15T09:10:00Z"
