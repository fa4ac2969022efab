"""The runner: a producer claims due jobs and feeds a worker pool, an executor runs each job, and a
completer writes their outcomes in batches. None of it knows SQL: it speaks to the store in verbs."""

from __future__ import annotations

from .completer import rescue
from .executor import Executor
from .producer import Producer
from .signals import stop_on_signals
from .verbs import JobStore

__all__ = ["Executor", "JobStore", "Producer", "rescue", "stop_on_signals"]
