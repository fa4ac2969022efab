"""What an attempt's response means: delivered, retry after a delay, or failed for good."""

from __future__ import annotations

import datetime as dt
import email.utils
import time
from collections.abc import Mapping, Sequence
from typing import Literal

from .transport import Response

Kind = Literal["delivered", "retry", "failed"]
MAX_RETRY_AFTER = 86400.0  # a receiver may not park a callback for longer than a day per attempt
MIN_RETRY_AFTER = 1.0  # nor ask for less than a second: "0" or a past date used up every attempt in 10 ms


def retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds asked for by a Retry-After header (delta-seconds or an HTTP date), within MIN_RETRY_AFTER and
    MAX_RETRY_AFTER, or None."""
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # str.isdigit() also passes '²', which float() refuses
        return min(max(MIN_RETRY_AFTER, float(value)), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000": UTC with no zone said (RFC 5322), not the runner's local time
        when = when.replace(tzinfo=dt.UTC)
    seconds = when.timestamp() - (time.time() if now is None else now)
    return min(max(MIN_RETRY_AFTER, seconds), MAX_RETRY_AFTER)


def next_delay(attempt: int, schedule: Sequence[float]) -> float | None:
    """Seconds before the next attempt after attempt number `attempt` failed; None when spent."""
    return float(schedule[attempt - 1]) if attempt <= len(schedule) else None


def classify(response: Response, attempt: int, schedule: Sequence[float]) -> tuple[Kind, float, str | None]:
    """(kind, delay, error) for one response; the error is what `callback_last_error` shows."""
    code = response.status_code
    if code is not None and 200 <= code < 300:
        return "delivered", 0.0, None
    if code == 410:
        return "failed", 0.0, "410 Gone: the receiver asked for no more callbacks"
    if code is None:
        error = response.error or "no response"
    elif 300 <= code < 400:
        error = f"HTTP {code}: redirects are not followed"
    else:
        error = f"HTTP {code}"
    delay = next_delay(attempt, schedule)
    if delay is None:
        return "failed", 0.0, f"{error} (attempt {attempt} of {len(schedule) + 1}: giving up)"
    if code in (429, 503):
        asked = retry_after(response.headers)
        if asked is not None:
            delay = asked
            error = f"{error} (Retry-After {asked:g}s)"
    return "retry", delay, error
