"""The retry policy at every edge: response classes, the schedule's count, Retry-After."""

from __future__ import annotations

import time

import pytest

from pending_jobs.callbacks.policy import MAX_RETRY_AFTER, MIN_RETRY_AFTER, classify, next_delay, retry_after
from pending_jobs.callbacks.transport import Response

SCHEDULE = [5.0, 300.0]


def response(code: int | None, headers: dict[str, str] | None = None, error: str | None = None) -> Response:
    return Response(code, headers or {}, b"", error, 1)


@pytest.mark.parametrize("code", [200, 201, 204, 299])
def test_every_2xx_is_delivered(code: int) -> None:
    assert classify(response(code), 1, SCHEDULE) == ("delivered", 0.0, None)
    assert classify(response(code), 3, SCHEDULE) == ("delivered", 0.0, None)  # even past the schedule


@pytest.mark.parametrize(("code", "error"), [
    (100, "HTTP 100"),
    (199, "HTTP 199"),
    (300, "HTTP 300: redirects are not followed"),
    (301, "HTTP 301: redirects are not followed"),
    (399, "HTTP 399: redirects are not followed"),
    (400, "HTTP 400"),
    (404, "HTTP 404"),
    (409, "HTTP 409"),
    (411, "HTTP 411"),
    (500, "HTTP 500"),
    (599, "HTTP 599"),
])
def test_everything_else_is_retried_with_its_code(code: int, error: str) -> None:
    assert classify(response(code), 1, SCHEDULE) == ("retry", 5.0, error)
    assert classify(response(code), 2, SCHEDULE) == ("retry", 300.0, error)
    assert classify(response(code), 3, SCHEDULE) == ("failed", 0.0, f"{error} (attempt 3 of 3: giving up)")


def test_410_fails_at_once() -> None:
    gone = ("failed", 0.0, "410 Gone: the receiver asked for no more callbacks")
    assert classify(response(410), 1, SCHEDULE) == gone
    assert classify(response(410), 3, SCHEDULE) == gone


def test_transport_errors_are_retried_with_their_reason() -> None:
    assert classify(response(None, error="connect timeout"), 1, SCHEDULE) == ("retry", 5.0, "connect timeout")
    assert classify(response(None), 2, SCHEDULE) == ("retry", 300.0, "no response")
    assert classify(response(None, error="connect timeout"), 3, SCHEDULE) == (
        "failed", 0.0, "connect timeout (attempt 3 of 3: giving up)")


def test_the_count_in_giving_up_is_the_schedule_plus_the_first_attempt() -> None:
    assert classify(response(500), 1, []) == ("failed", 0.0, "HTTP 500 (attempt 1 of 1: giving up)")
    assert classify(response(500), 8, [1.0] * 7)[2] == "HTTP 500 (attempt 8 of 8: giving up)"
    assert classify(response(500), 9, [1.0] * 7)[2] == "HTTP 500 (attempt 9 of 8: giving up)"  # retried by hand


@pytest.mark.parametrize("code", [429, 503])
def test_429_and_503_honour_retry_after(code: int) -> None:
    assert classify(response(code, {"Retry-After": "42"}), 1, SCHEDULE) == (
        "retry", 42.0, f"HTTP {code} (Retry-After 42s)")
    assert classify(response(code, {"retry-after": "0"}), 2, SCHEDULE) == (  # at least a second: not 5 in 10 ms
        "retry", 1.0, f"HTTP {code} (Retry-After 1s)")
    assert classify(response(code, {"Retry-After": "soon"}), 1, SCHEDULE) == ("retry", 5.0, f"HTTP {code}")
    assert classify(response(code), 1, SCHEDULE) == ("retry", 5.0, f"HTTP {code}")
    # The schedule's end wins over Retry-After.
    assert classify(response(code, {"Retry-After": "42"}), 3, SCHEDULE)[:2] == ("failed", 0.0)


@pytest.mark.parametrize("code", [500, 502, 504, 400])
def test_other_codes_ignore_retry_after(code: int) -> None:
    assert classify(response(code, {"Retry-After": "7"}), 1, SCHEDULE) == ("retry", 5.0, f"HTTP {code}")


def test_next_delay_walks_the_schedule_then_stops() -> None:
    assert [next_delay(n, [5, 300, 1800]) for n in (1, 2, 3, 4, 5)] == [5.0, 300.0, 1800.0, None, None]
    assert isinstance(next_delay(1, [5]), float)
    assert next_delay(1, []) is None


def test_retry_after_seconds() -> None:
    assert retry_after({"Retry-After": "120"}) == 120.0
    assert retry_after({"RETRY-AFTER": " 120 "}) == 120.0
    assert retry_after({"Retry-After": "0"}) == MIN_RETRY_AFTER == 1.0
    assert retry_after({"Retry-After": "86400"}) == 86400.0
    assert retry_after({"Retry-After": "86401"}) == MAX_RETRY_AFTER == 86400.0
    assert retry_after({"Retry-After": "99999999999999999999"}) == 86400.0
    assert retry_after({"X-Other": "5"}) is None
    assert retry_after({}) is None


@pytest.mark.parametrize("value", ["soon", "", "-5", "1.5", "²", "١٢", "5s", "Wed, 99 Foo 2015"])
def test_retry_after_that_is_neither_seconds_nor_a_date_is_ignored(value: str) -> None:
    assert retry_after({"Retry-After": value}) is None


def test_retry_after_dates() -> None:
    date = "Wed, 21 Oct 2015 07:28:00 GMT"  # 1445412480
    assert retry_after({"Retry-After": date}, now=1445412470.0) == 10.0
    assert retry_after({"Retry-After": date}, now=1445412480.0) == 1.0  # now: a second from now, at least
    assert retry_after({"Retry-After": date}, now=1445412490.0) == 1.0  # in the past: a second from now
    assert retry_after({"Retry-After": date}, now=1445412480.0 - 86400 - 1) == 86400.0  # capped
    assert retry_after({"Retry-After": date}, now=1445412480.0 - 86400 + 1) == 86399.0
    assert 0.0 < retry_after({"Retry-After": "Fri, 01 Jan 2100 00:00:00 GMT"}) == 86400.0  # type: ignore[operator]
    assert retry_after({"Retry-After": "Thu, 01 Jan 1970 00:00:00 GMT"}) == 1.0  # long past: a second from now


def test_a_retry_after_date_without_a_zone_is_utc_whatever_the_local_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        assert retry_after({"Retry-After": "Wed, 21 Oct 2015 07:28:00 -0000"}, now=1445412470.0) == 10.0
    finally:
        monkeypatch.undo()
        time.tzset()
