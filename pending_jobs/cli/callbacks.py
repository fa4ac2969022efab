"""`pending-jobs callbacks list|retry`: see why a callback did not arrive, and send it again."""

from __future__ import annotations

import argparse
from typing import TypeAlias

from .. import migrate
from ..callbacks import redact
from ..errors import EXIT_FAILURE, EXIT_OK
from ..store import CallbackStore
from . import common

Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def register(commands: Commands) -> None:
    """Add `callbacks list` and `callbacks retry`."""
    p = commands.add_parser("callbacks", help="list callbacks, or send one again")
    actions = p.add_subparsers(dest="callbacks_command", metavar="ACTION", required=True)

    q = actions.add_parser("list", help="jobs with a callback, newest first")
    common.add_common(q)
    common.add_json(q)
    q.add_argument("--failed", action="store_true", help="only callbacks that failed for good")
    q.add_argument("--limit", type=common.LIMIT, default=100,
                   help=f"at most this many rows, 1 to {common.LIST_LIMIT:,} (default 100)")
    q.set_defaults(func=cmd_list)

    q = actions.add_parser("retry", help="make a finished job's callback due now, also when it failed")
    common.add_common(q)
    q.add_argument("job_id", type=common.JOB_ID, metavar="ID", help="the job's id")
    q.set_defaults(func=cmd_retry)


def _open(args: argparse.Namespace) -> CallbackStore:
    settings = common.settings_from(args)
    engine, store = common.open_database(settings)
    migrate.require_head(engine)
    return CallbackStore(store)


def cmd_list(args: argparse.Namespace) -> int:
    rows = _open(args).recent(failed_only=args.failed, limit=args.limit)
    if args.json:
        common.print_json([
            {"job_id": r.job_id, "task": r.task, "job_status": r.job_status, "url": redact(r.url),
             "callback_status": r.callback_status, "sending": r.sending, "attempts": r.callback_attempts,
             "next_at": r.callback_next_at, "last_error": r.callback_last_error}
            for r in rows
        ])
        return EXIT_OK
    common.print_table(
        ["job", "task", "job status", "callback", "attempts", "next at", "url", "last error"],
        # While a runner sends it, callback_next_at is its lease's end: not a time the callback is due.
        [(r.job_id, r.task, r.job_status, "sending" if r.sending else r.callback_status, r.callback_attempts,
          None if r.sending else r.callback_next_at,
          redact(r.url), (r.callback_last_error or "").splitlines()[0][:80] if r.callback_last_error else None)
         for r in rows],
    )
    return EXIT_OK


def cmd_retry(args: argparse.Namespace) -> int:
    callbacks = _open(args)
    if not callbacks.retry(args.job_id):
        # Say which condition failed, as `retry` and `cancel` do: the operator's next step differs.
        job = callbacks.store.get(args.job_id)
        state = ("does not exist" if job is None else "has no callback_url" if not job.callback_url
                 else f"is {job.status}")
        common.eprint(f"job {args.job_id} {state}: only a finished job with a callback_url has one to send again")
        return EXIT_FAILURE
    # On stdout like `retry`'s line: a log line at INFO is not shown without -v, and silence reads as nothing done.
    common.out(f"callback of job {args.job_id} is due now: the next run sends it")
    return EXIT_OK
