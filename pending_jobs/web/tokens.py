"""Job-scoped push tokens: what lets a browser follow one job's end, minted by the application alone.

    v1.<job_id>.<expires>.<hex HMAC-SHA256(secret, "v1.<job_id>.<expires>")>

`expires` is a Unix time in seconds; the MAC is lowercase hex (what PHP's `hash_hmac` returns by default);
the secret's bytes are the key (text as UTF-8). The application mints a token with its copy of the push
secret, without asking us (docs/push.md has the recipe in PHP and Python). `verify` answers only yes or
no: why a token was refused (wrong job, expired, tampered, malformed) is never told to the client.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time

VERSION = "v1"
MAX_LENGTH = 128
"""Longer text is refused before any parsing (a v1 token is at most about 100 characters)."""
_SHAPE = re.compile(r"v1\.([1-9][0-9]{0,18})\.([1-9][0-9]{0,11})\.([0-9a-f]{64})")


def _key(secret: bytes | str) -> bytes:
    return secret.encode() if isinstance(secret, str) else secret


def _mac(secret: bytes | str, job_id: int, expires: int) -> str:
    return hmac.new(_key(secret), f"{VERSION}.{job_id}.{expires}".encode(), hashlib.sha256).hexdigest()


def mint(secret: bytes | str, job_id: int, ttl: int = 3600, now: float | None = None) -> str:
    """A token for `job_id` valid `ttl` seconds from `now` (default: the current time)."""
    if not _key(secret):
        raise ValueError("the push secret is empty")
    if job_id < 1:
        raise ValueError("job_id must be a positive job id")
    if ttl < 1:
        raise ValueError("ttl must be at least 1 second")
    expires = int(time.time() if now is None else now) + ttl
    return f"{VERSION}.{job_id}.{expires}.{_mac(secret, job_id, expires)}"


def verify(secret: bytes | str, token: str | None, job_id: int, now: float | None = None) -> bool:
    """Whether `token` grants following `job_id` now: well formed, for this job, not expired, and signed
    with `secret` (compared in constant time)."""
    if not token or len(token) > MAX_LENGTH or not _key(secret):
        return False
    shape = _SHAPE.fullmatch(token)
    if shape is None:
        return False
    token_job, expires, mac = int(shape[1]), int(shape[2]), shape[3]
    # The MAC is compared whatever else is wrong, so the time taken does not tell which check refused.
    signed = hmac.compare_digest(mac, _mac(secret, token_job, expires))
    current = time.time() if now is None else now
    return signed and token_job == job_id and current < expires
