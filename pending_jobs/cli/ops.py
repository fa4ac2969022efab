"""Operator commands: list, show, retry, cancel, pause, resume, purge and check."""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import json
import os
import socket
from typing import TypeAlias

import sqlalchemy as sa

from .. import callbacks, config, declared, logs, migrate, registry, schedules, validation
from ..callbacks import redact
from ..config import Settings
from ..errors import EXIT_FAILURE, EXIT_OK, ConfigError, DatabaseUnavailable
from ..states import CallbackStatus, JobStatus
from ..store import CallbackStore, JobFilter, OpsStore, RunStore, Store
from ..web.views import job_data
from . import common
from .schedules import late_warnings

Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

# `check` exits with the code of the first check that failed.
CHECK_CODES = {"configuration": 2, "database": 3, "schema": 4, "handlers": 5, "callbacks": 6, "rows": 7,
               "schedules": 8}
OPTIONAL_CHECKS = {"schedules"}  # listed only when the config has some
STATUSES = [s.value for s in JobStatus]
AGE_RANGE = validation.AGE.range_text()


def register(commands: Commands) -> None:
    """Add list, show, retry, cancel, pause, resume, purge and check."""
    p = commands.add_parser("list", help="jobs, newest first, with filters")
    common.add_common(p)
    common.add_json(p)
    add_filters(p)
    p.add_argument("--status", type=_statuses, help=f"comma-separated statuses ({', '.join(STATUSES)})")
    p.add_argument("--callback-status", choices=[*[s.value for s in CallbackStatus], "none"],
                   help="only jobs whose callback is in this state (none: no callback)")
    p.add_argument("--limit", type=common.LIMIT, default=50,
                   help=f"at most this many rows, 1 to {common.LIST_LIMIT:,} (default 50)")
    p.set_defaults(func=cmd_list)

    p = commands.add_parser("show", help="one job: the whole row, payload, result, last error, callback attempts")
    common.add_common(p)
    common.add_json(p)
    p.add_argument("job_id", type=common.JOB_ID, metavar="ID")
    p.set_defaults(func=cmd_show)

    p = commands.add_parser("retry", help="put a finished job (or every failed one) back to pending, attempts reset")
    common.add_common(p)
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("job_id", type=common.JOB_ID, nargs="?", metavar="ID", help="the job's id")
    target.add_argument("--failed", action="store_true", help="every failed job that matches the filters")
    add_filters(p)
    p.set_defaults(func=cmd_retry)

    p = commands.add_parser("cancel", help="cancel a pending job; a running one is marked and its handler can see it")
    common.add_common(p)
    p.add_argument("job_id", type=common.JOB_ID, metavar="ID")
    p.set_defaults(func=cmd_cancel)

    p = commands.add_parser("pause", help="stop every runner claiming a queue's jobs (running ones finish)")
    common.add_common(p)
    p.add_argument("queue", type=common.QUEUE, metavar="QUEUE")
    p.add_argument("--reason", help="why, shown by `status`")
    p.set_defaults(func=cmd_pause)

    p = commands.add_parser("resume", help="let runners claim a paused queue's jobs again")
    common.add_common(p)
    p.add_argument("queue", type=common.QUEUE, metavar="QUEUE")
    p.set_defaults(func=cmd_resume)

    p = commands.add_parser("purge", help="delete finished jobs older than an age")
    common.add_common(p)
    p.add_argument("--older-than", type=common.AGE, required=True, metavar="AGE",
                   help=f"finished more than this long ago (seconds or 30m, 12h, 7d; {AGE_RANGE})")
    p.add_argument("--status", type=common.argument(validation.finished_statuses), default=["succeeded", "cancelled"],
                   help="comma-separated: succeeded, failed, cancelled (default succeeded,cancelled)")
    p.set_defaults(func=cmd_purge)

    p = commands.add_parser(
        "check", help="check settings, database, schema, handlers and callback secret (run once after deploying)",
        epilog="Exit codes: 0 all good; the first failed check: " + ", ".join(
            f"{code} {name}" for name, code in CHECK_CODES.items()) + ".",
    )
    common.add_common(p)
    common.add_json(p)
    p.add_argument("--no-callbacks", action="store_true", help="skip the callback check (no job has a callback)")
    p.set_defaults(func=cmd_check)


def add_filters(p: argparse.ArgumentParser) -> None:
    """The filters `list` and `retry --failed` share."""
    p.add_argument("--queue", dest="job_queue", type=common.QUEUE, metavar="NAME", help="only this queue")
    p.add_argument("--task", dest="job_task", type=common.TEXT, metavar="NAME", help="only this task")
    p.add_argument("--since", type=common.AGE, metavar="AGE",
                   help=f"only jobs created within this age (2h, 7d; {AGE_RANGE})")


def _statuses(value: str) -> list[str]:
    wanted = config.str_list(value)
    unknown = sorted(set(wanted) - set(STATUSES))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown status {', '.join(unknown)} (use {', '.join(STATUSES)})")
    return wanted


def _open(args: argparse.Namespace) -> tuple[Settings, Store]:
    settings = common.settings_from(args)
    engine, store = common.open_database(settings)
    migrate.require_head(engine)
    return settings, store


def _filter(args: argparse.Namespace) -> JobFilter:
    return JobFilter(
        statuses=tuple(getattr(args, "status", None) or ()), queue=args.job_queue, task=args.job_task,
        since=args.since, callback_status=getattr(args, "callback_status", None),
        limit=getattr(args, "limit", 50),
    )


def _first_line(text: str | None, width: int = 60) -> str | None:
    return text.strip().splitlines()[0][:width] if text and text.strip() else None


def cmd_list(args: argparse.Namespace) -> int:
    _, store = _open(args)
    jobs = OpsStore(store).list_jobs(_filter(args))
    if args.json:
        common.print_json([job_data(job) for job in jobs])
        return EXIT_OK
    common.print_table(
        ["id", "queue", "task", "status", "attempts", "run at", "finished at", "callback", "last error"],
        [(j.id, j.queue, j.task, j.status, f"{j.attempts}/{j.max_attempts}", j.unreadable.get("run_at", j.run_at),
          j.unreadable.get("finished_at", j.finished_at), j.callback_status, _first_line(j.last_error)) for j in jobs],
    )
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    _, store = _open(args)
    job = store.get(args.job_id)
    if job is None:
        common.eprint(f"job {args.job_id} does not exist")
        return EXIT_FAILURE
    attempts = [dataclasses.asdict(a) for a in CallbackStore(store).attempts(job.id)]
    for attempt in attempts:
        attempt["url"] = redact(attempt["url"])
    data = job_data(job)
    if args.json:
        common.print_json({**data, "callback_attempts_log": attempts})
        return EXIT_OK
    long_fields = ("payload", "result", "last_error", "callback_last_error")
    common.print_table(["field", "value"], [(k, v) for k, v in data.items() if k not in long_fields])
    for name in ("payload", "result"):
        common.out(f"\n{name}:\n{json.dumps(data[name], indent=2, ensure_ascii=False, default=str)}")
    for name in ("last_error", "callback_last_error"):
        if data[name]:
            common.out(f"\n{name}:\n{data[name]}")
    if attempts:
        common.out("\ncallback attempts:")
        common.print_table(
            ["attempt", "at", "status", "ms", "error"],
            [(a["attempt"], a["attempted_at"], a["status_code"], a["duration_ms"], _first_line(a["error"]))
             for a in attempts],
        )
    return EXIT_OK


def cmd_retry(args: argparse.Namespace) -> int:
    _, store = _open(args)
    ops = OpsStore(store)
    if args.job_id is not None:
        if any(v is not None for v in (args.job_queue, args.job_task, args.since)):
            raise ConfigError("--queue, --task and --since go with --failed, not with an ID")
        if not ops.retry(args.job_id):
            job = store.get(args.job_id)
            state = f"is {job.status}" if job else "does not exist"
            common.eprint(f"job {args.job_id} {state}: only succeeded, failed or cancelled jobs can be retried")
            return EXIT_FAILURE
        common.out(f"job {args.job_id} is pending again")
        return EXIT_OK
    common.out(f"{ops.retry_failed(_filter(args))} failed job(s) pending again")
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace) -> int:
    _, store = _open(args)
    outcome = OpsStore(store).cancel(args.job_id)
    if outcome == "done":
        common.out(f"job {args.job_id} cancelled")
    elif outcome == "requested":
        common.out(f"job {args.job_id} is running: marked to be cancelled (a Python handler sees "
                   "ctx.cancel_requested(), a declared command's process group gets SIGTERM; claimed but not "
                   "started yet, it ends cancelled within about a second)")
    else:
        state = "does not exist" if outcome == "missing" else f"is already {outcome}"
        common.eprint(f"job {args.job_id} {state}: nothing to cancel")
        return EXIT_FAILURE
    return EXIT_OK


def cmd_pause(args: argparse.Namespace) -> int:
    _, store = _open(args)
    queue = logs.printable(args.queue, newlines=False)  # as the tables show it: a newline would split the line
    if OpsStore(store).pause(args.queue, f"{getpass.getuser()}@{socket.gethostname()}", args.reason):
        common.out(f"queue {queue} paused: no runner claims its jobs until `pending-jobs resume {queue}`")
    else:
        common.out(f"queue {queue} was already paused")
    return EXIT_OK


def cmd_resume(args: argparse.Namespace) -> int:
    _, store = _open(args)
    queue = logs.printable(args.queue, newlines=False)
    if OpsStore(store).resume(args.queue):
        common.out(f"queue {queue} resumed")
        return EXIT_OK
    common.eprint(f"queue {queue} is not paused")
    return EXIT_FAILURE


def cmd_purge(args: argparse.Namespace) -> int:
    _, store = _open(args)
    common.out(f"{OpsStore(store).purge(args.older_than, args.status)} job(s) deleted")
    return EXIT_OK


# -- check -------------------------------------------------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    results = run_checks(args)
    code = next((CHECK_CODES[name] for name, ok, _ in results if ok is False), EXIT_OK)
    if args.json:
        common.print_json({"checks": [{"name": n, "ok": ok, "detail": d} for n, ok, d in results],
                           "exit_code": code})
    else:
        labels = {True: "ok", False: "FAIL", None: "skipped"}
        common.print_table(["check", "result", "detail"], [(n, labels[ok], d) for n, ok, d in results])
    return code


def run_checks(args: argparse.Namespace) -> list[tuple[str, bool | None, str]]:
    """(check, passed — None when skipped because an earlier one failed, detail) in order."""
    results: list[tuple[str, bool | None, str]] = []
    plan: dict[str, schedules.Schedule] = {}

    def skip_rest() -> list[tuple[str, bool | None, str]]:
        done = {name for name, _, _ in results}
        return results + [(name, None, "not checked") for name in CHECK_CODES
                          if name not in done and (name not in OPTIONAL_CHECKS or plan)]

    try:
        settings = common.settings_from(args)
        # [task.NAME], [queue.NAME] and [schedules.NAME] tables are configuration too: a run holds back or skips
        # each one with an error (held.py), and ends with exit 2; `check` names them all.
        wrong = declared.table_errors(settings)
        if wrong:
            raise ConfigError("; ".join(wrong))
        plan = schedules.parse(settings.schedule_tables, settings.payload_limit)
        # The [web] table and PENDING_JOBS_WEB_* too: a typo there passed `check`, and `web` then refused to start.
        config.load_web({}, config_file=getattr(args, "config", None))
        engine, store = common.open_database(settings)  # a URL no engine can be made of (a missing folder)
    except ConfigError as error:
        results.append(("configuration", False, str(error)))
        return skip_rest()
    source = getattr(args, "config", None) or os.environ.get("PENDING_JOBS_CONFIG") or "defaults and environment"
    results.append(("configuration", True, f"settings from {source}"))

    try:
        store.ping()
        store.check_version()
    except (DatabaseUnavailable, ConfigError) as error:
        results.append(("database", False, str(error)))
        return skip_rest()
    results.append(("database", True, f"{store.dialect} reachable and writable"))

    try:
        migrate.require_head(engine)
        # Grants are probed on the tables of head, before their presence: MySQL hides a table its user may not use,
        # and "this database has no table …: restore them or migrate a new database" was said of a missing grant.
        denied = OpsStore(store).missing_privileges()
        unusable = OpsStore(store).sequence_problem()
        missing = [] if denied else migrate.missing_objects(engine)
        if missing:
            raise ConfigError(f"at {migrate.head()}, but this database has no {', '.join(missing)}: restore them (the "
                              f"DDL of `pending-jobs migrate --sql` names each) or migrate a new database")
        results.append(("schema", True, f"at {migrate.head()}"))
    except ConfigError as error:
        results.append(("schema", False, str(error)))
        return skip_rest()
    if denied or unusable:  # a database failure
        tables = [f"the database user may not: {', '.join(denied)} (a run reads, inserts, updates and deletes in "
                  "pending-jobs' tables: grant those on every pending_job* table)"] if denied else []
        results[1] = ("database", False, "; ".join([*tables, *([unusable] if unusable else [])]))
        return skip_rest()

    results.append(_check_handlers(settings, OpsStore(store), engine, plan))
    if args.no_callbacks:
        results.append(("callbacks", None, "skipped (--no-callbacks)"))
    else:
        warnings = callbacks.config_warnings(settings)
        results.append(("callbacks", not warnings, "; ".join(warnings) or "secret set"))
    never, examples = RunStore(store).never_due()
    shown = ", ".join(f"job {job_id}: run_at {run_at!r}" for job_id, run_at in examples)
    results.append(("rows", never == 0, f"{never} pending job(s) no run will pick up ({shown})" if never
                    else "every pending job can be claimed when due"))
    if plan:
        late = late_warnings(store, plan)
        results.append(("schedules", not late, "; ".join(late) or f"{len(plan)} schedule(s), none late"))
    return results


def _check_handlers(settings: Settings, ops: OpsStore, engine: sa.Engine,
                    plan: dict[str, schedules.Schedule]) -> tuple[str, bool, str]:
    if not settings.tasks and not settings.declared_tasks:
        return "handlers", False, "no task modules configured (PENDING_JOBS_TASKS) and no [task.NAME] declared"
    try:
        tasks = declared.merge(registry.load(settings.tasks, settings.python_path), declared.load(settings))
        problems, notes = declared.check(settings, engine)
    except ConfigError as error:
        return "handlers", False, str(error)
    problems += [task.held for _, task in sorted(tasks.items()) if task.held]  # a run would hold their jobs
    # Every problem of this check at once: one hidden behind another cost a second round of fixes.
    missing = sorted(set(ops.pending_tasks()) - set(tasks))
    if missing:
        problems.append(f"pending jobs name tasks without a handler: {', '.join(missing)}")
    # A misspelt name would otherwise go unnoticed: limits that never apply, jobs that fail at every firing.
    unlimited = sorted(name for name, table in settings.declared_tasks.items()
                       if declared.limits_only(table) and name not in tasks)
    if unlimited:
        problems.append(f"[task.NAME] limits name tasks without a handler, so they limit nothing: "
                        f"{', '.join(unlimited)}")
    unscheduled = sorted(f"[schedules.{name}] task {schedule.task!r}" for name, schedule in plan.items()
                         if schedule.task not in tasks)
    if unscheduled:
        problems.append(f"schedules name tasks without a handler: {', '.join(unscheduled)}")
    problems += declared.schedule_problems(settings, plan)
    if problems:
        return "handlers", False, "; ".join(dict.fromkeys(problems))
    sources = [*settings.tasks, *(["the config's [task.NAME] tables"] if settings.declared_tasks else [])]
    where = [f"{name} → {registry.source_of(task)}" for name, task in sorted(tasks.items())]
    unbounded = sorted(name for name, task in tasks.items() if task.timeout is None)
    if unbounded:  # the heartbeat keeps a hung handler's lease for ever: only a timeout ends it
        notes.append(f"no timeout: {', '.join(unbounded)} (a handler that hangs keeps its worker, and through the "
                     "heartbeat its lease, until the run ends; give it timeout=)")
    outlive = sorted(f"{name} ({task.timeout:g} s)" for name, task in tasks.items()
                     if task.timeout is not None and task.timeout > settings.lease)
    if outlive:  # past its lease only the heartbeat keeps the job: a run that stops renewing loses it mid-run
        notes.append(f"timeout longer than the lease ({settings.lease:g} s): {', '.join(outlive)} (such a job "
                     "keeps its lease only through the run's heartbeat; if that stops, another run may start it "
                     "again while it still runs: raise lease or lower timeout)")
    return "handlers", True, "; ".join([f"{len(tasks)} task(s) from {', '.join(sources)}", *where, *notes])
