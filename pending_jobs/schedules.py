"""Recurring jobs: `[schedules.NAME]` tables, and which of their slots are due (plain Python, no SQL).

    [schedules.nightly_report]
    cron = "0 2 * * *"              # standard 5 fields (cronsim), or: every = "15m"
    timezone = "Europe/Berlin"      # the zone the cron fields are read in (default UTC)
    task = "report"
    payload = { kind = "daily" }    # the job gets it plus "_schedule": {"name": …, "slot": "…Z"}
    catch_up = "skip"               # skip (default), latest, or all (at most catch_up_limit)

A slot is one moment the schedule fires, in UTC. Each slot is enqueued at most once across every host:
the store (store/schedules.py) keeps the last slot handled per schedule, in a row locked while a run
enqueues, and each job carries the idempotency key `schedule:NAME:SLOT`. Cron times follow the time zone
database as Debian's cron does (cronsim; docs/flow.md says why): a time of day (no `*` starting the minute
or hour field) skipped when clocks spring forward fires once, at the first minute after the jump, and one
repeated when they fall back fires once; a wildcard cron fires at each moment its local time matches (none
in a skipped hour, both passes of a repeated one).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import zoneinfo
from collections.abc import Iterator, Mapping
from typing import Any, Literal

from cronsim import CronSim, CronSimError

from .config import BY_NAME, duration
from .errors import ConfigError
from .validation import (
    JSON_DEPTH_MAX,
    MAX_ATTEMPTS_LIMIT,
    NAME_LIMIT,
    PRIORITY_MAX,
    PRIORITY_MIN,
    QUEUE_LIMIT,
    depth,
    dump_json,
    key_problem,
    task_name_problem,
)

CatchUp = Literal["skip", "latest", "all"]
KEYS = ("cron", "every", "timezone", "task", "payload", "queue", "priority", "max_attempts", "concurrency_key",
        "catch_up", "catch_up_limit", "grace")
NAME_MAX = 100  # pending_job_schedules.name; the idempotency key adds the slot
GRACE = 60.0
"""Seconds a slot may be late and still run under `skip`: runs look every few seconds, and a cron tick's
run starts within a second of the minute, so only a slot missed while nothing ran is older."""
# A serving run looks every second (run.SCHEDULE_STEP): a shorter grace skipped slots it was on time for.
GRACE_MIN = 5.0
HOST_ZONES = frozenset({"localtime", "posixrules"})  # names of the host's /etc/localtime, not of a zone
CATCH_UP_LIMIT = 100
SCHEDULE_KEY = "_schedule"  # the payload key of a job's schedule and slot (declared sql tasks bind its parts)
PAYLOAD_LIMIT: int = BY_NAME["payload_limit"].default  # the setting's default (callers pass the setting)
LONGEST_SLOT = "2026-01-01T00:00:00.000000Z"  # a slot as its job's payload names it, at its longest
COUNT_LIMIT = 10_000  # slots counted at most when saying how many were skipped
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
TICK = dt.timedelta(microseconds=1)
SLOT_SLACK = dt.timedelta(milliseconds=1)
SPAN_DAYS = 35  # how far a wildcard cron's walk looks for a change of UTC offset before cutting its span there
_SPANS: dict[dt.tzinfo, tuple[dt.datetime, dt.datetime]] = {}  # per zone, the span of one offset found last


@dataclasses.dataclass(frozen=True)
class Schedule:
    """One `[schedules.NAME]` table, checked."""

    name: str
    task: str
    payload: Mapping[str, Any]
    cron: str | None
    every: float | None
    timezone: str
    queue: str = "default"
    priority: int = 0
    max_attempts: int | None = None
    concurrency_key: str | None = None
    catch_up: CatchUp = "skip"
    catch_up_limit: int = CATCH_UP_LIMIT
    grace: float = GRACE

    @property
    def zone(self) -> dt.tzinfo:
        return dt.UTC if self.timezone == "UTC" else zoneinfo.ZoneInfo(self.timezone)

    @property
    def wildcard(self) -> bool:
        """A cron whose minute or hour starts with `*`: it fires at every instant its local time matches
        (both passes of a repeated hour, none in a skipped one). Others name times of day, which fire once
        (a skipped one at the first minute after the jump). Debian's rule, and cronsim's."""
        if self.cron is None or self.zone is dt.UTC:
            return False
        minute, hour = self.cron.split()[:2]
        return minute.startswith("*") or hour.startswith("*")

    @property
    def spec(self) -> str:
        """How it fires, as written: `0 2 * * * (Europe/Berlin)` or `every 900s`."""
        if self.cron is not None:
            return f"{self.cron} ({self.timezone})"
        return f"every {self.every:g}s"

    def next_after(self, moment: dt.datetime) -> dt.datetime:
        """The first slot after `moment` (UTC)."""
        if self.every is not None:
            steps = math.floor((moment - EPOCH).total_seconds() / self.every) + 1
            return EPOCH + dt.timedelta(seconds=steps * self.every)
        if self.wildcard:
            return _wild_after(self.cron or "", self.zone, moment)
        return next(CronSim(self.cron or "", moment.astimezone(self.zone))).astimezone(dt.UTC)

    def back_from(self, moment: dt.datetime) -> Iterator[dt.datetime]:
        """Slots at or before `moment`, newest first (UTC)."""
        if self.every is not None:
            steps = math.floor((moment - EPOCH).total_seconds() / self.every)
            while True:
                yield EPOCH + dt.timedelta(seconds=steps * self.every)
                steps -= 1
        if self.wildcard:
            yield from _wild_back(self.cron or "", self.zone, moment)
            return
        start = (moment + TICK).astimezone(self.zone)
        found = (slot.astimezone(dt.UTC) for slot in CronSim(self.cron or "", start, reverse=True))
        if start.fold:  # in the hour repeated when clocks fall back, cronsim reads the start as its first pass
            # (an hour earlier): the slots since then were missed, and a schedule made then started at an older
            # slot, so the one it had missed came due (a false LATE, a job for a slot before its first look).
            older = next(found)
            newer = [older]
            while (ahead := self.next_after(newer[-1])) <= moment:
                newer.append(ahead)
            yield from reversed(newer)
        yield from found

    def due(self, last: dt.datetime, now: dt.datetime) -> tuple[list[dt.datetime], int]:
        """(slots to enqueue oldest first, slots skipped) among those after `last` and at or before `now`,
        by the catch-up policy: `skip` keeps the slots at most `grace` seconds late, `latest` the newest
        slot only, `all` the newest `catch_up_limit`."""
        keep: list[dt.datetime] = []
        skipped = 0
        for slot in self.back_from(now):
            if slot <= last or len(keep) + skipped >= COUNT_LIMIT:
                break
            if self.catch_up == "latest":
                wanted = not keep
            elif self.catch_up == "all":
                wanted = len(keep) < self.catch_up_limit
            else:
                wanted = (now - slot).total_seconds() <= self.grace
            if wanted:
                keep.append(slot)
            else:
                skipped += 1
        return keep[::-1], skipped

    def latest_at(self, now: dt.datetime) -> dt.datetime:
        """The newest slot at or before `now` (where a new schedule starts: nothing before it is due)."""
        return next(self.back_from(now))

    def is_slot(self, moment: dt.datetime) -> bool:
        """Whether `moment` is one of this schedule's slots (within a millisecond: `every` slots are float
        arithmetic). A last slot that is not was handled under other times: the schedule was changed."""
        return abs((self.latest_at(moment + SLOT_SLACK) - moment).total_seconds()) < SLOT_SLACK.total_seconds()

    def payload_for(self, slot: dt.datetime) -> dict[str, Any]:
        """The job's payload: the configured one and `_schedule` (its name and the slot, ISO UTC)."""
        return {**self.payload, SCHEDULE_KEY: {"name": self.name, "slot": iso(slot)}}

    def key_for(self, slot: dt.datetime) -> str:
        """The idempotency key of a slot's job: two hosts enqueueing the same slot insert one job."""
        return f"schedule:{self.name}:{iso(slot)}"


# cronsim walks a wildcard cron in the zone itself, and moves within an hour by replacing its minutes: across a
# change of offset that is not a whole hour (Lord Howe's 30 minutes) or not on the hour (Chatham's 03:45) it
# skipped the slots of half an hour, or went back to slots after its start again and again (10,000 future
# slots due at once). Within a span of one offset a fixed-offset zone has no such change: walk span by span.

def _wild_after(cron: str, zone: dt.tzinfo, moment: dt.datetime) -> dt.datetime:
    """The first slot of a wildcard cron after `moment` (UTC)."""
    after = at = moment
    while True:
        offset, end = _offset(zone, at), _span(zone, at)[1]
        slot = next(CronSim(cron, after.astimezone(dt.timezone(offset)))).astimezone(dt.UTC)
        if slot < end:
            return slot
        after, at = end - dt.timedelta(seconds=1), end


def _wild_back(cron: str, zone: dt.tzinfo, moment: dt.datetime) -> Iterator[dt.datetime]:
    """A wildcard cron's slots at or before `moment`, newest first (UTC)."""
    before = moment + TICK
    while True:
        offset, start = _offset(zone, before - TICK), _span(zone, before - TICK)[0]
        for slot in CronSim(cron, before.astimezone(dt.timezone(offset)), reverse=True):
            if slot < start:
                break
            yield slot.astimezone(dt.UTC)
        before = start


def _span(zone: dt.tzinfo, moment: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """The span of one UTC offset holding `moment`: its first second, and the first second after it. The last one
    found per zone is kept: a run looks every second, and finding it each time made a look at a `*/5` schedule
    0.25 ms instead of 0.07 (measured on a loaded 2-core machine)."""
    known = _SPANS.get(zone)
    if known is None or not known[0] <= moment < known[1]:
        known = _SPANS[zone] = (_span_edge(zone, moment, -1), _span_edge(zone, moment, 1))
    return known


def _offset(zone: dt.tzinfo, moment: dt.datetime) -> dt.timedelta:
    return moment.astimezone(zone).utcoffset() or dt.timedelta(0)


def _span_edge(zone: dt.tzinfo, moment: dt.datetime, direction: int) -> dt.datetime:
    """Where the span of `moment`'s UTC offset ends (direction 1: the first second of the next offset) or
    starts (-1: its first second). Probed a day apart (no zone changes twice within a day), SPAN_DAYS at most:
    a span cut there is still a span of one offset."""
    offset = _offset(zone, moment)
    inside = math.floor((moment - EPOCH).total_seconds())  # changes fall on whole seconds
    for _ in range(SPAN_DAYS):
        outside = inside + direction * 86400
        if _offset(zone, EPOCH + dt.timedelta(seconds=outside)) != offset:
            break
        inside = outside
    else:
        return EPOCH + dt.timedelta(seconds=inside)
    while abs(outside - inside) > 1:
        middle = (inside + outside) // 2
        if _offset(zone, EPOCH + dt.timedelta(seconds=middle)) == offset:
            inside = middle
        else:
            outside = middle
    return EPOCH + dt.timedelta(seconds=outside if direction > 0 else inside)


def iso(moment: dt.datetime) -> str:
    """A UTC time as `2026-03-29T01:00:00Z` (microseconds only when there are some)."""
    text = moment.astimezone(dt.UTC).replace(tzinfo=None).isoformat()
    return text + "Z"


def parse(tables: Mapping[str, Mapping[str, Any]], payload_limit: int = PAYLOAD_LIMIT) -> dict[str, Schedule]:
    """Every `[schedules.NAME]` table; raises ConfigError naming the table and the key."""
    plan, problems = parse_each(tables, payload_limit)
    if problems:
        raise ConfigError(next(iter(problems.values())))
    return plan


def parse_each(tables: Mapping[str, Mapping[str, Any]],
               payload_limit: int = PAYLOAD_LIMIT) -> tuple[dict[str, Schedule], dict[str, str]]:
    """(schedules, errors by name): each table alone, so one with an error never stops the others (a run
    skips it, and says why)."""
    plan: dict[str, Schedule] = {}
    problems: dict[str, str] = {}
    for name, table in tables.items():
        try:
            plan[name] = parse_one(name, table, payload_limit)
        except ConfigError as error:
            problems[name] = str(error)
    return plan, problems


def parse_one(name: str, table: Mapping[str, Any], payload_limit: int = PAYLOAD_LIMIT) -> Schedule:
    """One `[schedules.NAME]` table; `payload_limit`: the bytes its job's payload may have."""
    where = f"[schedules.{name}]"

    def error(key: str, problem: str) -> ConfigError:
        return ConfigError(f"{where} {key}: {problem}")

    if not name or len(name) > NAME_MAX or any(ch.isspace() or ch == ":" for ch in name):
        raise ConfigError(f"{where}: a schedule name must be 1 to {NAME_MAX} characters, without spaces or ':'")
    unknown = sorted(set(table) - set(KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(KEYS)})")
    if ("cron" in table) == ("every" in table):
        raise ConfigError(f"{where}: needs cron = \"…\" or every = \"15m\" (one of them)")
    task = _text(table, "task", error, required=True, limit=NAME_LIMIT)
    problem = task_name_problem(task)  # the rule enqueue keeps: its jobs would name no handler
    if problem:
        raise error("task", f"{problem}, not {task!r}")
    timezone = _text(table, "timezone", error, limit=64) or "UTC"
    if timezone in HOST_ZONES:
        raise error("timezone", f"{timezone!r} is each host's own zone, so hosts would enqueue different slots: "
                                "name the zone (e.g. Europe/Berlin)")
    if timezone != "UTC":
        try:
            zoneinfo.ZoneInfo(timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a folder of zones (Europe)
            raise error("timezone", f"{timezone!r} is not in the time zone database (e.g. Europe/Berlin)") from None
    cron = every = None
    if "cron" in table:
        cron = _text(table, "cron", error, required=True, limit=200) or ""
        try:
            CronSim(cron, dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
        except CronSimError as problem:
            raise error("cron", f"{cron!r} is not a cron expression cron would take: {problem}") from None
        if len(cron.split()) != 5:
            raise error("cron", f"{cron!r} must have 5 fields: minute hour day-of-month month day-of-week")
    else:
        every = _duration(table, "every", error, 1.0, 366 * 86400.0)
        if "timezone" in table:
            raise error("timezone", "applies to cron only (every = … counts from 1970-01-01 UTC)")
    payload = table.get("payload", {})
    if not isinstance(payload, dict):
        raise error("payload", f"must be a table (a JSON object), not {type(payload).__name__}")
    if SCHEDULE_KEY in payload:
        raise error("payload", "_schedule is reserved: the job receives its schedule and slot there")
    try:  # TOML has dates and times, JSON has not: the job's INSERT failed at every run's start
        json.dumps(payload, allow_nan=False)
    except (TypeError, ValueError) as problem:
        raise error("payload", f"must hold JSON values only (write dates and times as strings): {problem}") from None
    if depth(payload) > JSON_DEPTH_MAX:  # MariaDB's JSON check would refuse every job's INSERT
        raise error("payload", f"nests {depth(payload)} levels deep; at most {JSON_DEPTH_MAX} can be stored")
    try:  # as its jobs are stored: PostgreSQL refused a NUL at every look, a run failed each job over the limit
        dump_json({**payload, SCHEDULE_KEY: {"name": name, "slot": LONGEST_SLOT}}, "its job's payload",
                  payload_limit, allow_nul=False)
    except ValueError as problem:
        raise error("payload", str(problem)) from None
    queue = table.get("queue", "default")
    wrong = key_problem(queue, QUEUE_LIMIT)  # the rule of enqueue: its jobs are inserted as enqueue's are
    if wrong:
        raise error("queue", f"{wrong}, not {queue!r}")
    key = table.get("concurrency_key")
    wrong = None if key is None else key_problem(key)
    if wrong:
        raise error("concurrency_key", f"{wrong}, not {key!r}")
    catch_up = table.get("catch_up", "skip")
    if catch_up not in ("skip", "latest", "all"):
        raise error("catch_up", f"must be skip, latest or all, not {catch_up!r}")
    return Schedule(
        name=name, task=task or "", payload=dict(payload), cron=cron, every=every, timezone=timezone,
        queue=queue,
        priority=_integer(table, "priority", error, PRIORITY_MIN, PRIORITY_MAX) or 0,
        max_attempts=_integer(table, "max_attempts", error, 1, MAX_ATTEMPTS_LIMIT),
        concurrency_key=key,
        catch_up=catch_up,
        catch_up_limit=_integer(table, "catch_up_limit", error, 1, COUNT_LIMIT) or CATCH_UP_LIMIT,
        grace=_duration(table, "grace", error, GRACE_MIN, 366 * 86400.0) if "grace" in table else GRACE,
    )


def _text(table: Mapping[str, Any], key: str, error: Any, required: bool = False, limit: int = 255) -> str | None:
    if key not in table:
        if required:
            raise error(key, "is required")
        return None
    value = table[key]
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise error(key, f"must be a non-empty string of at most {limit} characters, not {value!r}")
    return value


def _integer(table: Mapping[str, Any], key: str, error: Any, low: int, high: int) -> int | None:
    if key not in table:
        return None
    value = table[key]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise error(key, f"must be a whole number from {low} to {high}, not {value!r}")
    return value


def _duration(table: Mapping[str, Any], key: str, error: Any, low: float, high: float) -> float:
    value = table.get(key)
    try:
        seconds = duration(value) if not isinstance(value, bool) else math.nan
    except ValueError as problem:
        raise error(key, str(problem)) from None
    if not low <= seconds <= high:
        raise error(key, f"must be from {_seconds(low)} to {_seconds(high)}, not {value!r}")
    return seconds


def _seconds(value: float) -> str:
    """A bound as the config writes durations: 366 d, not 3.16224e+07 s."""
    return f"{value / 86400:g} d" if value >= 86400 and value % 86400 == 0 else f"{value:g} s"
