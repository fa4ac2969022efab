"""`url` tasks: POST the payload as JSON, signed with Standard Webhooks, to an endpoint the config names.

The request goes through the callback machinery (pinned address, keep-alive pool, whole-request
deadline, no redirects, a bounded read), with one difference: the task's URL is trusted
configuration, so its host is allowed even when it is private or loopback — internal endpoints
usually are. Callback URLs come from producers, row by row, and stay guarded.
"""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import urlsplit

from ..callbacks.guard import Guard, Refused, Unresolved, parse, redact
from ..callbacks.policy import retry_after
from ..callbacks.signing import Signer
from ..callbacks.transport import Response, Transport
from ..errors import ConfigError, Fail
from ..registry import Backoff, Task
from ..version import __version__
from .base import backoff_of, effective_limit, excerpt, json_or_text, retry, task_of
from .spec import HTTP_TIMEOUT, HttpSpec

BACKSTOP_MARGIN = 5.0  # seconds past the request's deadline before the runner abandons the worker thread
RETRIED = frozenset({408, 429})  # besides 5xx: the endpoint asks for another try
REDIRECTS = frozenset({301, 302, 303, 307, 308})  # other 3xx (300, 304) fail as any other answer does


def build(spec: HttpSpec, callback_secret: list[str], payload_limit: int, pool_size: int) -> Task:
    """The registry entry of a declared HTTP task."""
    sender = HttpTask(spec, callback_secret, payload_limit, pool_size)
    return task_of(spec.name, sender, spec.policy, sender.timeout + BACKSTOP_MARGIN)


def idempotency_key(job_id: int) -> str:
    """The same for every attempt of a job: what the endpoint checks to do the work once."""
    return f"job_{job_id}"


def message_id(job_id: int, attempt: int) -> str:
    """The webhook-id: new for each attempt, so a retry is never refused as a replay."""
    return f"job_{job_id}_attempt_{attempt}"


class HttpTask:
    """Sends one declared task's requests; one instance (and one connection pool) serves every worker."""

    def __init__(self, spec: HttpSpec, callback_secret: list[str], payload_limit: int, pool_size: int) -> None:
        self.spec = spec
        self.limit = effective_limit(spec.policy, payload_limit)
        try:
            self.signer = Signer(spec.secret if spec.secret is not None else callback_secret)
        except ConfigError as error:
            source = "secret" if spec.secret is not None else "callback_secret (its default)"
            raise ConfigError(f"[task.{spec.name}] {source}: {str(error).split(': ', 1)[-1]}") from None
        host = parse(spec.url)[1]
        self.guard = Guard([host])  # this task's host only: trusted configuration, not producer input
        self.transport = Transport(pool_size, read_limit=self.limit + 1)  # one byte more tells "too big"
        self.shown = redact(spec.url)  # never the query: it may hold a token
        self.backoff: Backoff = backoff_of(spec.policy)
        self.timeout = spec.policy.timeout or HTTP_TIMEOUT

    def __call__(self, payload: dict[str, Any], ctx: Any) -> Any:
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        try:
            target = self.guard.check(self.spec.url)
        except (Refused, Unresolved) as error:  # the name does not resolve (now): DNS may come back
            raise retry(self.backoff, ctx, f"POST {self.shown}: {str(error).removeprefix('refused: ')}") from None
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"pending-jobs/{__version__}",
            "Idempotency-Key": idempotency_key(ctx.job_id),
            "Pending-Jobs-Task": ctx.task,
            "Pending-Jobs-Attempt": str(ctx.attempt),
            **self.signer.headers(message_id(ctx.job_id, ctx.attempt), int(time.time()), body),
        }
        timeout = self.timeout
        left = ctx.time_left()
        if left is not None:
            timeout = max(0.1, min(timeout, left))
        response = self.transport.post(target, self.spec.url, body, headers,
                                       min(self.spec.connect_timeout, timeout), timeout)
        return self.outcome(response, ctx)

    def outcome(self, response: Response, ctx: Any) -> Any:
        """2xx: the body as the result; 408, 429, 5xx, no answer, an answer cut off: retry; a redirect: fail
        naming its target; other 3xx/4xx, and codes past 599: fail with an excerpt."""
        code = response.status_code
        where = f"POST {self.shown}"
        if code is not None and 200 <= code < 300:
            if response.error is not None:
                # The status line came, the rest of the answer did not (the deadline passed, the connection
                # broke): its body is not the result. The endpoint sees the same Idempotency-Key again.
                raise retry(self.backoff, ctx, f"{where}: HTTP {code}, but the answer was cut off: {response.error}")
            return json_or_text(response.body, len(response.body) <= self.limit, self.limit)
        if code is None:
            raise retry(self.backoff, ctx, f"{where}: {response.error or 'no response'}")
        status = f"{where}: HTTP {code}"
        if code < 200:  # http.client skips only `100 Continue`; the final answer after it was not read
            raise retry(self.backoff, ctx, f"{status}: an interim answer and no final one (answers like 103 Early "
                        "Hints before the final one are not supported: turn them off for this endpoint)")
        if code > 599:  # http.client takes any three digits; 600-999 are no HTTP status, and no reason to retry
            raise Fail(f"{status}: not an HTTP status code (100-599): {_body(response.body)}")
        if code in REDIRECTS:
            location = next((v for k, v in response.headers.items() if k.lower() == "location"), "")
            raise Fail(f"{status}: redirects are not followed (Location: {_shown_location(location)}); "
                       "set the task's url to the final address")
        if code >= 500 or code in RETRIED:
            asked = retry_after(response.headers)
            wait = f" (Retry-After {asked:g}s)" if asked is not None else ""
            raise retry(self.backoff, ctx, f"{status}{wait}: {_body(response.body)}", delay=asked)
        raise Fail(f"{status}: {_body(response.body)}")


def _body(body: bytes) -> str:
    """The start of an answer's body for an error, or that it had none ('HTTP 408: ' read as cut off)."""
    return excerpt(body) or "no body"


def _shown_location(location: str) -> str:
    """A redirect's target without its query (it may hold a token)."""
    if not location:
        return "none given"
    if location.startswith("//"):  # another host, by the request's scheme: shown with it, as any other host
        return redact(f"http:{location}").removeprefix("http:")
    parts = urlsplit(location)
    return redact(location) if parts.scheme else parts.path or "/"
