"""A `[schedules.NAME]` table's rules at their limits: each value just inside is kept, just outside refused with
the key named; values of the wrong kind are a ConfigError, not a TypeError. Found missing by mutation testing
(the contract tests that check tables do not run under it)."""

from __future__ import annotations

from typing import Any

import pytest

from pending_jobs import schedules
from pending_jobs.errors import ConfigError
from pending_jobs.validation import JSON_DEPTH_MAX, MAX_ATTEMPTS_LIMIT, NAME_LIMIT, PRIORITY_MAX, PRIORITY_MIN

YEAR = 366 * 86400
MINUTES = ",".join(str(minute) for minute in range(60))
CRON_200 = f"{MINUTES} {','.join(str(hour) for hour in range(11))} 1 * 1,2"  # 200 characters
CRON_201 = f"{MINUTES} {','.join(str(hour) for hour in range(11))} 10 * 1,2"


def one(table: dict[str, Any], name: str = "s") -> schedules.Schedule:
    return schedules.parse_one(name, {"task": "t", **table})


def refused(table: dict[str, Any], name: str = "s") -> str:
    with pytest.raises(ConfigError) as caught:
        one(table, name)
    return str(caught.value)


def nested(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


def test_values_at_their_limits_are_kept() -> None:
    assert len(CRON_200) == 200 and one({"cron": CRON_200}).cron == CRON_200
    assert one({"every": "1m"}, "n" * schedules.NAME_MAX).name == "n" * schedules.NAME_MAX
    assert one({"every": "1m", "task": "t" * NAME_LIMIT}).task == "t" * NAME_LIMIT
    assert one({"every": YEAR, "grace": YEAR}).every == YEAR
    assert one({"every": "1m", "grace": YEAR}).grace == YEAR
    low = one({"every": "1m", "priority": PRIORITY_MIN, "max_attempts": 1, "catch_up_limit": 1})
    assert (low.priority, low.max_attempts, low.catch_up_limit) == (PRIORITY_MIN, 1, 1)
    high = one({"every": "1m", "priority": PRIORITY_MAX, "max_attempts": MAX_ATTEMPTS_LIMIT})
    assert (high.priority, high.max_attempts) == (PRIORITY_MAX, MAX_ATTEMPTS_LIMIT)
    assert one({"every": "1m", "payload": nested(JSON_DEPTH_MAX)}).payload == nested(JSON_DEPTH_MAX)
    keyed = one({"every": "1m", "queue": "mail", "concurrency_key": "tenant-7"})
    assert (keyed.queue, keyed.concurrency_key) == ("mail", "tenant-7")


def test_what_a_table_leaves_out_takes_its_default() -> None:
    plain = one({"cron": "0 2 * * *"})
    assert (plain.task, plain.queue, plain.priority, plain.max_attempts, plain.concurrency_key) == (
        "t", "default", 0, None, None)
    assert (plain.catch_up, plain.catch_up_limit, plain.grace, plain.timezone) == ("skip", 100, 60.0, "UTC")


@pytest.mark.parametrize(("name", "table", "message"), [
    ("", {"every": "1m"}, "[schedules.]: a schedule name must be 1 to 100 characters, without spaces or ':'"),
    ("n" * 101, {"every": "1m"}, f"[schedules.{'n' * 101}]: a schedule name must be 1 to 100 characters"),
    ("a b", {"every": "1m"}, "[schedules.a b]: a schedule name must be 1 to 100 characters"),
    ("a:b", {"every": "1m"}, "[schedules.a:b]: a schedule name must be 1 to 100 characters"),
    ("s", {"every": "1m", "when": 1}, "[schedules.s]: unknown key 'when' (allowed: cron, every, timezone, task, "
                                      "payload, queue, priority, max_attempts, concurrency_key, catch_up, "
                                      "catch_up_limit, grace)"),
    ("s", {"every": "1m", "task": "t" * (NAME_LIMIT + 1)},
     f"[schedules.s] task: must be a non-empty string of at most {NAME_LIMIT} characters"),
    ("s", {"every": "1m", "task": "   "}, "[schedules.s] task: must be a non-empty string of at most"),
    ("s", {"every": "1m", "task": 5}, "[schedules.s] task: must be a non-empty string of at most"),
    ("s", {"cron": "0 2 * * *", "timezone": "Z" * 65},
     "[schedules.s] timezone: must be a non-empty string of at most 64 characters"),
    ("s", {"cron": "0 2 * * *", "timezone": "localtime"},
     "[schedules.s] timezone: 'localtime' is each host's own zone, so hosts would enqueue different slots: "
     "name the zone (e.g. Europe/Berlin)"),
    ("s", {"cron": CRON_201}, "[schedules.s] cron: must be a non-empty string of at most 200 characters"),
    ("s", {"cron": 5}, "[schedules.s] cron: must be a non-empty string of at most 200 characters, not 5"),
    ("s", {"cron": "0 0 * * * 0"},
     "[schedules.s] cron: '0 0 * * * 0' must have 5 fields: minute hour day-of-month month day-of-week"),
    ("s", {"every": YEAR + 1}, "[schedules.s] every: must be from 1 s to 366 d"),
    ("s", {"every": True}, "[schedules.s] every: must be from 1 s to 366 d, not True"),
    ("s", {"every": "abc"}, "[schedules.s] every: not a duration: 'abc'"),
    ("s", {"every": "1m", "grace": YEAR + 1}, "[schedules.s] grace: must be from 5 s to 366 d"),
    ("s", {"every": "1m", "timezone": "Europe/Berlin"},
     "[schedules.s] timezone: applies to cron only (every = … counts from 1970-01-01 UTC)"),
    ("s", {"every": "1m", "payload": [1]}, "[schedules.s] payload: must be a table (a JSON object), not list"),
    ("s", {"every": "1m", "payload": {"x": float("nan")}},
     "[schedules.s] payload: must hold JSON values only (write dates and times as strings)"),
    ("s", {"every": "1m", "payload": nested(JSON_DEPTH_MAX + 1)},
     f"[schedules.s] payload: nests {JSON_DEPTH_MAX + 1} levels deep"),
    ("s", {"every": "1m", "priority": PRIORITY_MIN - 1},
     f"[schedules.s] priority: must be a whole number from {PRIORITY_MIN} to {PRIORITY_MAX}, not {PRIORITY_MIN - 1}"),
    ("s", {"every": "1m", "priority": PRIORITY_MAX + 1}, "[schedules.s] priority: must be a whole number"),
    ("s", {"every": "1m", "priority": "1"}, "[schedules.s] priority: must be a whole number"),
    ("s", {"every": "1m", "priority": True}, "[schedules.s] priority: must be a whole number"),
    ("s", {"every": "1m", "max_attempts": 0},
     f"[schedules.s] max_attempts: must be a whole number from 1 to {MAX_ATTEMPTS_LIMIT}, not 0"),
    ("s", {"every": "1m", "max_attempts": MAX_ATTEMPTS_LIMIT + 1}, "[schedules.s] max_attempts: must be a whole"),
    ("s", {"every": "1m", "catch_up_limit": 0},
     f"[schedules.s] catch_up_limit: must be a whole number from 1 to {schedules.COUNT_LIMIT}, not 0"),
])
def test_a_value_just_outside_its_rule_is_refused_naming_the_key(name: str, table: dict[str, Any],
                                                                  message: str) -> None:
    assert refused(table, name).startswith(message)
