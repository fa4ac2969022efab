"""pending-jobs: dependable background jobs for web applications that run on cron."""

from __future__ import annotations

from .context import JobContext
from .enqueue import enqueue, enqueue_many
from .errors import Fail, Retry
from .registry import task
from .states import CallbackStatus, JobStatus

__version__ = "0.1.0"

__all__ = [
    "CallbackStatus",
    "Fail",
    "JobContext",
    "JobStatus",
    "Retry",
    "__version__",
    "enqueue",
    "enqueue_many",
    "task",
]
