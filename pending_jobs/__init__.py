"""pending-jobs: dependable background jobs for web applications that run on cron."""

from __future__ import annotations

from .context import Context, Handler, JobContext
from .enqueue import enqueue, enqueue_many
from .errors import Fail, Retry
from .registry import task
from .states import CallbackStatus, JobStatus
from .version import __version__

__all__ = [
    "CallbackStatus",
    "Context",
    "Fail",
    "Handler",
    "JobContext",
    "JobStatus",
    "Retry",
    "__version__",
    "enqueue",
    "enqueue_many",
    "task",
]
