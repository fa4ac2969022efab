"""`pending-jobs schedules`: each recurring schedule's last and next slot, what it enqueued, and which are
late; `--enqueue` enqueues the slots due now (what every run does at its start and while it serves)."""

from __future__ import annotations

import argparse
import datetime as dt
from collections.abc import Mapping
from typing import Any, TypeAlias

from .. import declared, limits, migrate, schedules
from ..errors import EXIT_FAILURE, EXIT_OK
from ..run import enqueue_schedules
from ..schedules import Schedule
from ..store import ScheduleStore, Store
from . import common

Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
LATE_SLACK = 60.0
"""Seconds beyond a schedule's grace before its slot counts as late: a cron tick's run (`--drain`) looks
once a minute."""


def register(commands: Commands) -> None:
    """Add `schedules`."""
    p = commands.add_parser("schedules", help="recurring schedules: last and next slot, what they enqueued, "
                                              "which are late")
    common.add_common(p)
    common.add_json(p)
    p.add_argument("--enqueue", action="store_true", help="enqueue the slots due now first (each once across "
                                                          "every host, as runs do)")
    p.set_defaults(func=cmd_schedules)


def cmd_schedules(args: argparse.Namespace) -> int:
    settings = common.settings_from(args)
    plan = schedules.parse(settings.schedule_tables, settings.payload_limit)
    engine, store = common.open_database(settings)
    migrate.require_head(engine)
    if args.enqueue:  # as a run would: a [task.NAME] table with a typo is a configuration error, not jobs enqueued
        declared.specs(settings)
        limits.parse(settings.queue_tables, settings.declared_tasks)
        count = enqueue_schedules(ScheduleStore(store), plan)
        common.log.info("enqueued %d job(s) for due schedule slots", count)
    states = schedule_states(store, plan)
    if args.json:
        common.print_json(states)
        return EXIT_OK
    if not states:
        common.out("no schedules: add [schedules.NAME] tables to the config file")
        return EXIT_OK
    common.print_table(
        ["schedule", "fires", "task", "catch up", "last slot", "next slot", "last job", "enqueued", "skipped",
         "state"],
        [(s["name"], s["fires"], s["task"], s["catch_up"], s["last_slot"], s["next_slot"],
          f"{s['last_job_id']} {s['last_job_status'] or 'purged'}" if s["last_job_id"] else None,
          s["enqueued"], s["skipped"], s["state"]) for s in states])
    return EXIT_FAILURE if any(s["late_seconds"] for s in states) else EXIT_OK


def schedule_states(store: Store, plan: Mapping[str, Schedule]) -> list[dict[str, Any]]:
    """Every configured schedule (and every row of one no longer configured, even when none is left) as plain
    data."""
    reads = ScheduleStore(store)
    rows = reads.rows()
    now = reads.now()
    states = []
    for name in sorted(set(plan) | set(rows)):
        schedule, row = plan.get(name), rows.get(name)
        state: dict[str, Any] = {
            "name": name, "fires": schedule.spec if schedule else None, "task": schedule.task if schedule else None,
            "queue": schedule.queue if schedule else None, "catch_up": schedule.catch_up if schedule else None,
            "last_slot": row.last_slot if row else None, "next_slot": None,
            "last_job_id": row.last_job_id if row else None, "last_job_status": row.last_job_status if row else None,
            "last_enqueued_at": row.last_enqueued_at if row else None,
            "enqueued": row.enqueued if row else 0, "skipped": row.skipped if row else 0, "late_seconds": None,
        }
        if schedule is None:
            state["state"] = "removed from the config: stopped"
        elif row is None or row.last_slot is None:
            state["next_slot"] = schedule.next_after(now)
            state["state"] = "no run has looked at it yet"
        else:
            state["next_slot"] = schedule.next_after(row.last_slot)
            late = late_by(schedule, row.last_slot, now)
            state["late_seconds"] = late
            state["state"] = f"LATE by {late:.0f}s: is a run serving?" if late else "ok"
        states.append(state)
    return states


def late_by(schedule: Schedule, last_slot: dt.datetime, now: dt.datetime) -> float | None:
    """Seconds a schedule's next slot is overdue beyond its grace and a cron tick; None when on time."""
    overdue = (now - schedule.next_after(last_slot)).total_seconds()
    return overdue if overdue > schedule.grace + LATE_SLACK else None


def late_warnings(store: Store, plan: Mapping[str, Schedule]) -> list[str]:
    """One line per late schedule (status and check show them)."""
    return [f"schedule {s['name']} is late: its slot {common.cell(s['next_slot'])} is {s['late_seconds']:.0f}s "
            "overdue and not enqueued (is a run serving, or cron running `pending-jobs run`?)"
            for s in (schedule_states(store, plan) if plan else []) if s["late_seconds"]]  # only a configured one
