"""Signed, durable HTTP callbacks."""

from __future__ import annotations

from ..config import Settings
from ..errors import ConfigError
from .delivery import Deliverer, allow_problems, body_of, webhook_id
from .guard import Guard, Refused, Target, Unresolved, blocked_reason, broad_allow, redact
from .signing import PREFIX, Signer, secret_key

__all__ = [
    "Deliverer",
    "Guard",
    "Refused",
    "Signer",
    "Target",
    "Unresolved",
    "blocked_reason",
    "body_of",
    "config_warnings",
    "redact",
    "webhook_id",
]


def config_warnings(settings: Settings) -> list[str]:
    """Problems with the callback settings that do not stop a run (for `check` and `run -v`)."""
    warnings: list[str] = []
    if not settings.callback_secret:
        warnings.append("PENDING_JOBS_CALLBACK_SECRET is not set: callbacks are sent unsigned, "
                        "so receivers cannot verify them")
    for number, secret in enumerate(settings.callback_secret, 1):
        try:
            secret_key(secret)
        except ConfigError as error:
            warnings.append(f"callback secret #{number}: {str(error).split(': ', 1)[-1]}")
            continue
        if not secret.startswith(PREFIX):
            warnings.append(f"callback secret #{number} does not start with {PREFIX!r} (Standard Webhooks form)")
    if len(settings.callback_secret) > 2:
        warnings.append("more than two callback secrets: use two only while rotating")
    guard = Guard(settings.callback_allow)
    warnings += [f"PENDING_JOBS_CALLBACK_ALLOW contains {problem}" for problem in allow_problems(guard)]
    for net in guard.networks:
        problem = broad_allow(net)
        if problem:
            warnings.append(f"PENDING_JOBS_CALLBACK_ALLOW contains {net}{problem}")
    if not settings.callback_schedule:
        warnings.append("PENDING_JOBS_CALLBACK_SCHEDULE is empty: a callback that fails once is failed for good")
    return warnings
