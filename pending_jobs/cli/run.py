"""`run` (what cron starts every minute) and `serve` (what systemd or a supervisor keeps running)."""

from __future__ import annotations

import argparse
import logging
from typing import TypeAlias

import sqlalchemy as sa

from .. import config, declared, migrate, registry
from ..callbacks import config_warnings
from ..config import Settings
from ..errors import EXIT_OK, ConfigError
from ..handoff import HostLock, SharedLock, lock_path, served_database
from ..run import check_settings, run_once
from ..runner import stop_on_signals
from ..states import JOB_PENDING, JobStatus
from ..store import Store
from . import common
from .progress import Progress

Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
log = logging.getLogger(__name__)
SEGMENT = 60.0  # seconds of a `serve` process a runs row covers: as a cron line's run, one a minute
RUN_SEGMENT = 120.0
"""Seconds a cron run's runs row covers at most: one that serves longer (a long job, or long jobs one after
another up to max_runtime) closes a row and opens the next this often, so `status` (stale after 5 min) and
the last-success metric see a live run, not a stopped cron. A run of one tick ends long before."""


def register(commands: Commands) -> None:
    """Add run and serve."""
    p = commands.add_parser("run", help="serve due jobs and their callbacks until the next cron tick's run takes "
                                        "over (with --drain: until nothing is due)")
    common.add_common(p)
    add_run_flags(p)
    p.add_argument("--drain", action="store_true", help="stop when nothing is due (the same as --poll 0)")
    p.add_argument("--job", type=common.JOB_ID, metavar="ID", help="run this one pending job now, whatever its run_at")
    p.set_defaults(func=cmd_run)

    p = commands.add_parser("serve", help="serve jobs and callbacks until SIGTERM (for systemd or a supervisor)")
    common.add_common(p)
    add_run_flags(p)
    p.set_defaults(func=cmd_serve)


def add_run_flags(p: argparse.ArgumentParser) -> None:
    """The flags of `run` and `serve`, each naming its environment variable."""
    p.add_argument("--tasks", help=config.env_help("tasks"))
    p.add_argument("--max-runtime", type=common.DURATION, help=config.env_help("max_runtime"))
    p.add_argument("--max-jobs", type=common.INTEGER, help=config.env_help("max_jobs"))
    p.add_argument("--batch-size", type=common.INTEGER, help=config.env_help("batch_size"))
    p.add_argument("--concurrency", type=common.INTEGER, help=config.env_help("concurrency"))
    p.add_argument("--lease", type=common.DURATION, help=config.env_help("lease"))
    p.add_argument("--queue", dest="queue_flags", action="append", type=common.QUEUE, metavar="NAME",
                   help="serve only this queue, and the callbacks of its jobs; repeatable "
                        "(env PENDING_JOBS_QUEUES, comma-separated; default: all)")
    p.add_argument("--poll", type=common.DURATION, help=config.env_help("poll"))
    p.add_argument("--grace", type=common.DURATION, help=config.env_help("grace"))
    p.add_argument("--callbacks", choices=("on", "off", "only"), help=config.env_help("callbacks"))
    p.add_argument("--lock-file", metavar="PATH", help=config.env_help("lock_file"))
    p.add_argument("--metrics-file", metavar="PATH", help=config.env_help("metrics_file"))
    p.add_argument("--retention-succeeded", type=common.DURATION, metavar="AGE",
                   help=config.env_help("retention_succeeded"))
    p.add_argument("--retention-failed", type=common.DURATION, metavar="AGE", help=config.env_help("retention_failed"))


def cmd_run(args: argparse.Namespace) -> int:
    if args.drain:
        args.poll = 0.0
    return _serve(args, service=False)


def cmd_serve(args: argparse.Namespace) -> int:
    args.job = None
    return _serve(args, service=True)


def _serve(args: argparse.Namespace, service: bool) -> int:
    if args.queue_flags:
        args.queues = ",".join(args.queue_flags)
    settings = common.settings_from(args)
    if service:
        if settings.poll <= 0:
            settings = settings.replace(poll=float(config.BY_NAME["poll"].default))
        if getattr(args, "max_runtime", None) is None:
            settings = settings.replace(max_runtime=float(config.BY_NAME["max_runtime"].high or 0))
    # Configuration errors first, before the database is touched.
    tasks = declared.merge(registry.load(settings.tasks, settings.python_path), declared.load(settings))
    if not tasks and settings.callbacks != "only":
        # Every job claimed would meet no handler and fail, callbacks and all: a cron line without the
        # PENDING_JOBS_TASKS a shell had. `check` says the same (exit 5); a run refuses to start.
        raise ConfigError(f"no tasks to run: set tasks ({config.BY_NAME['tasks'].env}: the modules of your @task "
                          "handlers) or declare [task.NAME] tables; a host that only sends callbacks runs with "
                          "--callbacks only")
    check_settings(settings)
    # A handler thread each, the claims, the completions' writer, callbacks, the listener and spares.
    engine, store = common.open_database(settings, pool_size=settings.concurrency + 3)
    store.check_version()
    migrate.require_head(engine)
    migrate.require_tables(engine)
    if args.verbose:
        for warning in config_warnings(settings):
            common.eprint(f"warning: {warning}")
    lock = _lock(settings, args.job)
    if lock is not None and not _take_over(lock):
        log.info("another run serves this host and one more waits to take over: nothing to do")
        return EXIT_OK
    progress = Progress()
    try:
        report = run_once(store, tasks, settings, job_id=args.job, on_progress=progress,
                          hand_off=lock.successor_waiting if lock is not None and not service else None,
                          segment=SEGMENT if service else RUN_SEGMENT,
                          on_served=lock.release if lock is not None else None)
    finally:
        progress.close()
        if lock is not None:
            lock.release()
    if args.job is not None:  # a person asked for this one job: a retry or failure is otherwise INFO, unseen
        _say_how_it_ended(store, args.job)
    # DEBUG: -v prints the summary on stdout, and the crontab's `2>&1` showed it twice at INFO.
    common.log.debug("run finished: %s", report.summary())
    if args.verbose:
        common.note(report.summary())
    if service:  # its runs rows say 2; the process does not: the unit never restarts an exit 2 (docs/systemd)
        return EXIT_OK
    return report.exit_code or EXIT_OK  # 2: served, but a config table has a mistake (logged; see held.py)


def _say_how_it_ended(store: Store, job_id: int) -> None:
    """One line on stderr when `run --job` did not end its job as succeeded (silent on success, as a run is).
    A read that fails says nothing: the run itself is over, and its outcome stands."""
    try:
        job = store.get(job_id)
    except sa.exc.DBAPIError as error:
        log.debug("job %d: its outcome could not be read back: %s", job_id, error)
        return
    if job is None or job.status == JobStatus.SUCCEEDED:
        return
    where = f"attempt {job.attempts} of {job.max_attempts}" + (", to be retried" if job.status == JOB_PENDING else "")
    common.eprint(f"job {job_id} is {job.status} ({where})" + (f": {job.last_error}" if job.last_error else ""))


def _lock(settings: Settings, job_id: int | None) -> HostLock | None:
    """The host's serving lock: only for a run that serves (not a drain, not `--job`), unless disabled."""
    if settings.poll <= 0 or job_id is not None or settings.lock_file == "none":
        return None
    key = served_database(settings.database_url)
    return HostLock(settings.lock_file or lock_path(settings.database_url, settings.queues, settings.callbacks), key)


def _take_over(lock: HostLock) -> bool:
    """Serve now, or wait for the serving run to hand over (a signal ends the wait)."""
    stopped: list[bool] = []
    try:
        with stop_on_signals(lambda: stopped.append(True), 0.0):
            return lock.acquire(wait=lambda: not stopped)
    except SharedLock as shared:
        raise ConfigError(f"the lock file {shared}: give each database its own lock_file "
                          f"({config.BY_NAME['lock_file'].env}, --lock-file), or leave it unset") from None
    except OSError as error:
        # A setting to fix (exit 2, one line), not a bug: cron would mail a traceback every minute.
        setting = config.BY_NAME["lock_file"]
        which = lock.path if error.filename in (None, lock.path) else f"{lock.path} (its {error.filename})"
        raise ConfigError(f"cannot open the lock file {which}: {error.strerror or error}; "
                          f"set {setting.env} (--lock-file) to a path this user can write, or to none for "
                          f"no lock") from None
