"""The core commands: migrate, enqueue, run, status."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
from typing import Any, TypeAlias

from .. import config, declared, migrate, registry
from ..enqueue import enqueue
from ..errors import ConfigError
from ..runner import Runner
from ..store import Store
from ..store.ops import OpsStore
from . import callbacks, common, runlog

Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
STALE_AFTER = 300.0  # cron runs every minute: five minutes without a finished run means it stopped


def register(commands: Commands) -> None:
    """Add migrate, enqueue, run and status."""
    p = commands.add_parser("migrate", help="create or upgrade the tables (Alembic upgrade to head)")
    common.add_common(p)
    p.add_argument("--sql", action="store_true", help="print the DDL instead of running it (for DBAs)")
    p.add_argument("--revision", default="head", help="target revision (default head)")
    p.set_defaults(func=cmd_migrate)

    p = commands.add_parser("enqueue", help="insert one job")
    common.add_common(p)
    p.add_argument("task", help="the task name a handler is registered under")
    p.add_argument("--payload", default="{}", help="JSON object given to the handler (default {})")
    p.add_argument("--queue", dest="job_queue", default="default", help="queue name (default 'default')")
    p.add_argument("--priority", type=int, default=0, help="higher runs first, -1000..1000 (default 0)")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--delay", type=config._duration, help="run after this long (seconds or 30s, 5m, 2h)")
    when.add_argument("--run-at", help="run at this ISO 8601 time (UTC unless it has an offset)")
    p.add_argument("--max-attempts", type=int, help="attempts before the job fails (default: the column's, 5)")
    p.add_argument("--callback-url", help="POST the outcome here when the job ends")
    p.add_argument("--idempotency-key", help="a second enqueue with the same key returns the first job's id")
    p.set_defaults(func=cmd_enqueue)

    p = commands.add_parser("run", help="run due jobs once, then deliver due callbacks (what cron starts)")
    common.add_common(p)
    add_run_flags(p)
    p.set_defaults(func=cmd_run)

    p = commands.add_parser("status", help="counts per queue and status, oldest due job, callbacks, the last run")
    common.add_common(p)
    common.add_json(p)
    p.add_argument("--stale-after", type=config._duration, default=STALE_AFTER, metavar="AGE",
                   help="warn when no run finished for this long (default 5m)")
    p.set_defaults(func=cmd_status)


def add_run_flags(p: argparse.ArgumentParser) -> None:
    """The flags of `run`, each naming its environment variable."""
    p.add_argument("--tasks", help=config.env_help("tasks"))
    p.add_argument("--max-runtime", type=config._duration, help=config.env_help("max_runtime"))
    p.add_argument("--max-jobs", type=int, help=config.env_help("max_jobs"))
    p.add_argument("--batch-size", type=int, help=config.env_help("batch_size"))
    p.add_argument("--concurrency", type=int, help=config.env_help("concurrency"))
    p.add_argument("--lease", type=config._duration, help=config.env_help("lease"))
    p.add_argument("--queue", dest="queue_flags", action="append", metavar="NAME",
                   help="run only this queue; repeatable (env PENDING_JOBS_QUEUES, comma-separated; default: all)")
    p.add_argument("--poll", type=config._duration, help=config.env_help("poll"))
    p.add_argument("--grace", type=config._duration, help=config.env_help("grace"))
    p.add_argument("--job", type=int, metavar="ID", help="run this one pending job now, whatever its run_at")
    p.add_argument("--metrics-file", metavar="PATH", help=config.env_help("metrics_file"))
    p.add_argument("--retention-succeeded", type=config._duration, metavar="AGE",
                   help=config.env_help("retention_succeeded"))
    p.add_argument("--retention-failed", type=config._duration, metavar="AGE", help=config.env_help("retention_failed"))


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = common.settings_from(args)
    if args.sql:
        print(migrate.upgrade_sql(settings.database_url, args.revision), end="")
        return common.EXIT_OK
    engine, store = common.open_database(settings)
    store.check_version()
    before = migrate.current(engine)
    migrate.upgrade(engine, args.revision)
    common.log.info("schema upgraded from %s to %s", before or "empty", migrate.current(engine))
    return common.EXIT_OK


def cmd_enqueue(args: argparse.Namespace) -> int:
    settings = common.settings_from(args)
    try:
        payload = json.loads(args.payload)
    except ValueError as error:
        raise ConfigError(f"--payload is not valid JSON: {error}") from None
    run_at = None
    if args.run_at:
        try:
            run_at = dt.datetime.fromisoformat(args.run_at)
        except ValueError:
            raise ConfigError(f"--run-at is not an ISO 8601 time: {args.run_at!r}") from None
        if run_at.tzinfo is None:
            run_at = run_at.replace(tzinfo=dt.UTC)
    engine, _ = common.open_database(settings)
    try:
        job_id = enqueue(
            engine, args.task, payload, queue=args.job_queue, priority=args.priority, delay=args.delay,
            run_at=run_at, max_attempts=args.max_attempts, callback_url=args.callback_url,
            idempotency_key=args.idempotency_key, payload_limit=settings.payload_limit,
        )
    except ValueError as error:
        raise ConfigError(str(error)) from None
    print(job_id)
    return common.EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    if args.queue_flags:
        args.queues = ",".join(args.queue_flags)
    settings = common.settings_from(args)
    tasks = declared.merge(registry.load(settings.tasks), declared.load(settings))  # config errors first
    # A handler thread each, the main thread's claims, the recorder's completions and spares.
    engine, store = common.open_database(settings, pool_size=settings.concurrency + 2)
    store.check_version()
    migrate.require_head(engine)
    progress = runlog.Progress()
    runner = Runner(store, tasks, settings, deliver_callbacks=callbacks.deliverer(store, settings, args.verbose),
                    on_progress=progress)
    try:
        with runlog.recorded(store, settings, runner):
            report = runner.run(job_id=args.job)
    finally:
        progress.close()
    common.log.info("run finished: %s", report.summary())
    if args.verbose:
        print(report.summary())
    return common.EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    settings = common.settings_from(args)
    engine, store = common.open_database(settings)
    migrate.require_head(engine)
    status = collect_status(store, args.stale_after)
    if args.json:
        common.print_json(status)
        return common.EXIT_OK
    common.print_table(["queue", "status", "jobs"], [(c["queue"], c["status"], c["jobs"]) for c in status["counts"]])
    age = status["oldest_due_age_seconds"]
    print(f"\noldest due job waiting: {'none due' if age is None else f'{age:.1f}s'}")
    expired = status["expired_leases"]
    print(f"running with expired lease: {len(expired)}")
    for job in expired:
        print(f"  job {job['id']} ({job['task']}) held by {job['lease_owner']} since {job['started_at']}")
    cb = status["callbacks"]
    print(f"callbacks: {cb['pending']} pending ({cb['due']} due now), {cb['failed']} failed, "
          f"{cb['delivered']} delivered")
    run = status["last_run"]
    if run is None:
        print("last run: none recorded")
    else:
        took = "still running or killed" if run["duration_seconds"] is None else f"took {run['duration_seconds']:.1f}s"
        print(f"last run: #{run['id']} on {run['host']} pid {run['pid']} started {common._cell(run['started_at'])}, "
              f"{took}, exit {run['exit_code']}: claimed {run['claimed']}, succeeded {run['succeeded']}, "
              f"failed {run['failed']}, retried {run['retried']}")
    for warning in status["warnings"]:
        common.eprint(f"warning: {warning}")
    return common.EXIT_OK


def collect_status(store: Store, stale_after: float = STALE_AFTER) -> dict[str, Any]:
    """Everything `status` shows, as plain data (also the `--json` document)."""
    health = OpsStore(store).health()
    warnings = []
    since = health.since_last_finished
    if since is None:
        warnings.append("no run has finished yet: is cron (or the systemd timer) running `pending-jobs run`?")
    elif since > stale_after:
        warnings.append(f"no run finished in the last {since / 60:.0f} minutes: has cron stopped?")
    run = health.last_run
    return {
        "counts": [{"queue": q, "status": s, "jobs": n} for q, s, n in health.counts],
        "oldest_due_age_seconds": health.oldest_due_age,
        "expired_leases": [
            {"id": j.id, "task": j.task, "lease_owner": j.lease_owner, "started_at": j.started_at,
             "lease_expires_at": j.lease_expires_at}
            for j in store.expired_leases()
        ],
        "callbacks": health.callbacks,
        "last_run": None if run is None else {**dataclasses.asdict(run), "duration_seconds": run.duration},
        "seconds_since_last_finished_run": since,
        "last_success_at": health.last_success_at,
        "warnings": warnings,
    }
