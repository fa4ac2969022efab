"""Deliverer._send on a failed lookup or a malformed URL, without a database or a request."""

from __future__ import annotations

from typing import Any, cast

import pytest

from pending_jobs import config
from pending_jobs.callbacks import Deliverer, guard
from pending_jobs.callbacks.verbs import CallbackVerbs
from pending_jobs.models import DueCallback


def callback(url: str, attempt: int = 1) -> DueCallback:
    return DueCallback(job_id=7, url=url, token="t", attempt=attempt, task="noop", queue="default",
                       status="succeeded", attempts=1, result=None, last_error=None, created_at=None,
                       finished_at=None)


def deliverer(**settings: Any) -> Deliverer:
    def resolver(host: str, port: int) -> list[str]:
        raise OSError("[Errno -3] Temporary failure in name resolution")

    base = config.load({}, environ={}).replace(callback_schedule=[5.0, 300.0], **settings)
    # _send never touches the store: a failed lookup or a refusal must not send or record anything itself.
    return Deliverer(cast(CallbackVerbs, None), base, resolver=resolver)


def test_a_failed_lookup_is_retried_on_the_schedule() -> None:
    sender = deliverer()
    first = sender._send(callback("https://hooks.example.test/x?token=SECRET"))
    assert (first.kind, first.delay) == ("retry", 5.0)
    assert first.error == "cannot resolve hooks.example.test: [Errno -3] Temporary failure in name resolution"
    assert first.status_code is None and first.url == "https://hooks.example.test/x"
    assert first.webhook_id == "msg_7_0"
    second = sender._send(callback("https://hooks.example.test/x", attempt=2))
    assert (second.kind, second.delay) == ("retry", 300.0)


def test_a_lookup_that_keeps_failing_gives_up_with_the_count() -> None:
    last = deliverer()._send(callback("https://hooks.example.test/x", attempt=3))
    assert (last.kind, last.delay) == ("failed", 0.0)
    assert last.error == ("cannot resolve hooks.example.test: [Errno -3] Temporary failure in name resolution "
                          "(attempt 3 of 3: giving up)")


@pytest.mark.parametrize("url", ["http://example.com:99999/hook", "http://[::1/x", "http://u:p/ss@host/x"])
def test_a_malformed_url_fails_that_callback_at_once_with_the_reason(url: str) -> None:
    result = deliverer()._send(callback(url))
    assert (result.kind, result.error) == ("failed", "refused: the callback URL is malformed")
    assert result.url == "<malformed URL>"
    assert guard.host_key(url) == "<malformed>"


def test_an_internal_address_is_still_refused_for_good() -> None:
    result = deliverer()._send(callback("http://127.0.0.1:9/x"))
    assert result.kind == "failed" and "loopback" in (result.error or "")
    assert result.status_code is None


@pytest.mark.parametrize("url", ["http://example.com:99999/hook", "http://[::1/x", "http://u:p/ss@host/x"])
def test_a_malformed_url_goes_through_the_circuit_breaker_without_raising(url: str) -> None:
    # The breaker keys every attempt by host before sending: a malformed URL once raised IndexError
    # there, in the claiming thread, which stopped every callback of the run.
    sender = deliverer()
    sender._deadline = float("inf")  # as __call__ sets it for a run
    result = sender.attempt(callback(url))
    assert (result.kind, result.error) == ("failed", "refused: the callback URL is malformed")
    assert sender.failures == {}  # a refusal is not a transport failure of some host
