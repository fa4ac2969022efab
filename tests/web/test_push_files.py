"""The push hub holds no more streams than the process's open-files limit allows: past it accept() fails with
EMFILE (asyncio logs a traceback per waiting connection, the console stops answering) instead of the
documented refusal (1013 / 503). It raises the soft limit to the hard one first, as a server should."""

from __future__ import annotations

import asyncio
import resource

import pytest

from pending_jobs.store import Store
from pending_jobs.web import push_hub
from pending_jobs.web.push import PushHub, PushSettings
from pending_jobs.web.push_hub import Full

SECRET = "push secret for the tests, 32 b."
FILES_HEADROOM = getattr(push_hub, "FILES_HEADROOM", 100)


class FakeLimits:
    """The two calls of the resource module the hub makes, on a limit of this test's choosing."""

    RLIMIT_NOFILE = resource.RLIMIT_NOFILE
    RLIM_INFINITY = resource.RLIM_INFINITY

    def __init__(self, soft: int, hard: int) -> None:
        self.limits = (soft, hard)

    def getrlimit(self, which: int) -> tuple[int, int]:
        assert which == resource.RLIMIT_NOFILE
        return self.limits

    def setrlimit(self, which: int, limits: tuple[int, int]) -> None:
        assert which == resource.RLIMIT_NOFILE and limits[0] <= self.limits[1]  # as the kernel: soft <= hard
        self.limits = limits


def _opened(store: Store, limits: FakeLimits, monkeypatch: pytest.MonkeyPatch) -> int:
    """How many subscribers a started hub (max_subscribers left at 10,000) takes before it refuses one."""
    monkeypatch.setattr(push_hub, "resource", limits, raising=False)

    async def scenario() -> int:
        hub = PushHub(PushSettings(SECRET), store)
        await hub.start()
        try:
            for count in range(10_000):
                try:
                    hub.subscribe(1)
                except Full:
                    return count
            return 10_000
        finally:
            await hub.stop()

    return asyncio.run(scenario())


def test_streams_are_refused_before_the_open_files_limit(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    limits = FakeLimits(300, 300)  # `ulimit -n 300`: soft and hard
    assert _opened(store, limits, monkeypatch) == 300 - FILES_HEADROOM


def test_the_soft_limit_is_raised_to_the_hard_one(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    limits = FakeLimits(256, 4096)  # a systemd service's default is 1024:524288
    assert _opened(store, limits, monkeypatch) == 4096 - FILES_HEADROOM
    assert limits.limits == (4096, 4096)
