"""The core commands: migrate, enqueue, status."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from typing import Any, TypeAlias

import sqlalchemy as sa

from .. import db, migrate, validation
from .. import schedules as flow_schedules
from ..enqueue import enqueue
from ..errors import EXIT_OK, ConfigError, DatabaseUnavailable
from ..store import OpsStore, RunStore, Store
from . import common, schedules

Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
STALE_AFTER = 300.0  # cron runs every minute: five minutes without a finished run means it stopped


def register(commands: Commands) -> None:
    """Add migrate, enqueue and status."""
    p = commands.add_parser("migrate", help="create or upgrade the tables (Alembic upgrade to head)")
    common.add_common(p)
    p.add_argument("--sql", action="store_true", help="print the DDL instead of running it (for DBAs)")
    p.add_argument("--revision", default="head", help="target revision (default head)")
    p.set_defaults(func=cmd_migrate)

    p = commands.add_parser("enqueue", help="insert one job")
    common.add_common(p)
    p.add_argument("task", help="the task name a handler is registered under")
    p.add_argument("--payload", default="{}", metavar="JSON|@FILE|-",
                   help="JSON object given to the handler (default {}); @FILE reads it from a file, - from stdin")
    p.add_argument("--queue", dest="job_queue", default="default", help="queue name (default 'default')")
    p.add_argument("--priority", type=common.INTEGER, default=0, help="higher runs first, -1000..1000 (default 0)")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--delay", type=common.DURATION, help="run after this long (seconds or 30s, 5m, 2h)")
    when.add_argument("--run-at", help="run at this ISO 8601 time (UTC unless it has an offset)")
    p.add_argument("--max-attempts", type=common.INTEGER,
                   help="attempts before the job fails (default: the column's, 5)")
    p.add_argument("--callback-url", help="POST the outcome here when the job ends")
    p.add_argument("--idempotency-key", help="a second enqueue with the same key returns the first job's id")
    p.add_argument("--concurrency-key", help="jobs with the same key share a concurrency limit "
                                             "([task.NAME] concurrency_limit)")
    p.set_defaults(func=cmd_enqueue)

    p = commands.add_parser("status", help="counts per queue and status, oldest due job, callbacks, the last run")
    common.add_common(p)
    common.add_json(p)
    p.add_argument("--stale-after", type=common.DURATION, default=STALE_AFTER, metavar="AGE",
                   help="warn when no run finished for this long (default 5m)")
    p.set_defaults(func=cmd_status)


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = common.settings_from(args)
    if args.sql:
        print(migrate.upgrade_sql(settings.database_url, args.revision), end="")
        return EXIT_OK
    engine, store = common.open_database(settings, create=True)
    store.check_version()
    before = migrate.current(engine)
    try:
        migrate.upgrade(engine, args.revision)
    except sa.exc.DBAPIError as error:
        if not (store.sql.timed_out(error) or store.sql.retryable(error)):
            raise
        raise DatabaseUnavailable(
            f"migrate waited {db.MIGRATE_LOCK_WAIT} s for a lock on a pending-jobs table that another transaction "
            "holds (a producer's or a handler's still open, or a long query) and stopped, so INSERTs do not queue "
            f"behind it: run `pending-jobs migrate` again (at {migrate.current(engine) or 'no revision'} now)"
        ) from None
    common.log.info("schema upgraded from %s to %s", before or "empty", migrate.current(engine))
    return EXIT_OK


def _payload_text(value: str, limit: int) -> str:
    """--payload's JSON text: as given, or read from a file (@FILE) or stdin (-). Linux cuts one argument at
    128 KiB (MAX_ARG_STRLEN), far under payload_limit; no JSON text starts with @ or is a lone -. At most
    STORED_INFLATION times the limit is read (room for indentation): @/dev/zero ended in MemoryError."""
    if value != "-" and not value.startswith("@"):
        return value
    most = validation.STORED_INFLATION * limit
    try:
        if value == "-":
            if sys.stdin is None:  # started with stdin closed (<&-)
                raise ConfigError("--payload -: there is no stdin to read")
            data = sys.stdin.buffer.read(most + 1)
        else:
            with open(value[1:], "rb") as file:
                data = file.read(most + 1)
        if len(data) > most:
            raise ConfigError(f"--payload {value}: over {most} bytes, far past the {limit}-byte payload_limit")
        return data.decode("utf-8")
    except OSError as error:
        raise ConfigError(f"--payload {value}: cannot read it: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"--payload {value}: not UTF-8 text ({error.reason} at offset {error.start})") from None


def cmd_enqueue(args: argparse.Namespace) -> int:
    settings = common.settings_from(args)
    try:
        payload = json.loads(_payload_text(args.payload, settings.payload_limit))
    except ValueError as error:
        raise ConfigError(f"--payload is not valid JSON: {error}") from None
    except RecursionError:
        raise ConfigError(f"--payload nests more levels than Python can read; at most {validation.JSON_DEPTH_MAX} "
                          "can be stored on every database (MariaDB's limit)") from None
    run_at = None
    if args.run_at:
        try:
            run_at = dt.datetime.fromisoformat(args.run_at)
        except ValueError:
            raise ConfigError(f"--run-at is not an ISO 8601 time: {args.run_at!r}") from None
        if run_at.tzinfo is None:
            run_at = run_at.replace(tzinfo=dt.UTC)
    engine, _ = common.open_database(settings)
    migrate.require_head(engine)  # as every other command: not migrated was a driver's traceback, exit 1
    try:
        job_id = enqueue(
            engine, args.task, payload, queue=args.job_queue, priority=args.priority, delay=args.delay,
            run_at=run_at, max_attempts=args.max_attempts, callback_url=args.callback_url,
            idempotency_key=args.idempotency_key, payload_limit=settings.payload_limit,
            concurrency_key=args.concurrency_key,
        )
    except ValueError as error:
        raise ConfigError(str(error)) from None
    common.out(str(job_id))
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    settings = common.settings_from(args)
    engine, store = common.open_database(settings)
    migrate.require_head(engine)
    # A schedule with an error is not looked at (`check` names it): `status` shows the rest all the same.
    plan, _ = flow_schedules.parse_each(settings.schedule_tables, settings.payload_limit)
    status = collect_status(store, args.stale_after, late=schedules.late_warnings(store, plan))
    if args.json:
        common.print_json(status)
        return EXIT_OK
    common.print_table(["queue", "status", "jobs"], [(c["queue"], c["status"], c["jobs"]) for c in status["counts"]])
    age = status["oldest_due_age_seconds"]
    common.out(f"\noldest due job waiting: {'none due' if age is None else f'{age:.1f}s'}")
    expired = status["expired_leases"]
    common.out(f"running with expired lease: {len(expired)}")
    for job in expired:
        common.out(f"  job {job['id']} ({job['task']}) held by {job['lease_owner']} since {job['started_at']}")
    for queue in status["paused_queues"]:
        # One line each, its names escaped as the counts table escapes them (cell): a newline or an escape
        # sequence in a queue name would otherwise forge or hide lines of this report.
        why = f": {common.cell(queue['reason'])}" if queue["reason"] else ""
        since = common.cell(queue["paused_at"])
        common.out(f"queue {common.cell(queue['queue'])} is PAUSED since {since} by {common.cell(queue['paused_by'])}"
                   f"{why}")
    cb = status["callbacks"]
    common.out(f"callbacks: {cb['pending']} pending ({cb['due']} due now), {cb['failed']} failed, "
               f"{cb['delivered']} delivered")
    run = status["last_run"]
    if run is None:
        common.out("last run: none recorded")
    else:
        seconds = run["duration_seconds"]
        took = "still running (or killed)" if seconds is None else f"took {seconds:.1f}s, exit {run['exit_code']}"
        started = common.cell(run["started_at"])
        common.out(f"last run: #{run['id']} on {run['host']} pid {run['pid']} started {started}, "
                   f"{took}: claimed {run['claimed']}, succeeded {run['succeeded']}, "
                   f"failed {run['failed']}, retried {run['retried']}, cancelled {run['cancelled']}")
    for warning in status["warnings"]:
        common.eprint(f"warning: {warning}")
    return EXIT_OK


def collect_status(store: Store, stale_after: float = STALE_AFTER, late: list[str] | None = None) -> dict[str, Any]:
    """Everything `status` shows, as plain data (also the `--json` document); `late`: late schedules."""
    runs = RunStore(store)
    health = runs.health()
    paused = OpsStore(store).paused()
    warnings = []
    since = health.since_last_finished
    if since is None:
        warnings.append("no run has finished yet: is cron running `pending-jobs run` "
                        "(or systemd `pending-jobs serve`)?")
    elif since > stale_after:
        ago = f"{since:.0f} seconds" if since < 120 else f"{since / 60:.0f} minutes"  # not "the last 0 minutes"
        warnings.append(f"no run finished in the last {ago}: has cron stopped?")
    never, examples = runs.never_due()
    if never:
        shown = ", ".join(f"job {job_id}: {run_at!r}" for job_id, run_at in examples)
        warnings.append(f"{never} pending job(s) will never run: run_at is not a time that will come ({shown}); "
                        "fix run_at or cancel them")
    warnings.extend(late or [])
    run = health.last_run
    return {
        "counts": [{"queue": q, "status": s, "jobs": n} for q, s, n in health.counts],
        "oldest_due_age_seconds": health.oldest_due_age,
        "expired_leases": [
            {"id": j.id, "task": j.task, "lease_owner": j.lease_owner, "started_at": j.started_at,
             "lease_expires_at": j.lease_expires_at}
            for j in runs.expired_leases()
        ],
        "callbacks": health.callbacks,
        "paused_queues": [{"queue": q.queue, "paused_at": q.paused_at, "paused_by": q.paused_by, "reason": q.reason}
                          for q in paused],
        "last_run": None if run is None else run.as_dict(),
        "seconds_since_last_finished_run": since,
        "last_success_at": health.last_success_at,
        "never_due": [{"id": job_id, "run_at": run_at} for job_id, run_at in examples],
        "warnings": warnings,
    }
