"""The push hub: every subscriber of one process, and the one loop that reads their jobs' states and ends.

It asks the database once per interval for all subscribers (`PushStore.finished_among`, chunked by 1,000
ids), never once per subscriber, and not at all when nobody waits; new subscribers' first states are read
the same way, batched (a thousand pages opening at once cost a few queries, not a thousand). On PostgreSQL
with the `pending_jobs_notify_finished` trigger a NOTIFY runs that query at once (notifications arriving
meanwhile coalesce into the next one) and the poll slows to a safety net.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import resource
from typing import TYPE_CHECKING

from ..store import Store
from ..store.push import FinishedListener, JobEnd, PushStore
from . import tokens

if TYPE_CHECKING:
    from .push import PushSettings

log = logging.getLogger(__name__)

FILES_HEADROOM = 100
"""Open files kept for what is not a stream: the database pool, the listener, logs, the console's requests."""
FILES_CEILING = 1_048_576
"""The soft limit asked for when the hard one is unlimited (Linux refuses more than fs.nr_open, 2**20 by default)."""


def streams_that_fit(wanted: int) -> int:
    """How many streams this process can hold, at most `wanted`; its open-files soft limit is first raised to the
    hard one. Past the limit accept() fails with EMFILE: asyncio logs a traceback for every waiting connection
    (tens of MB a minute), the console stops answering, and nothing is refused with 1013/503 as documented.
    A systemd service or a login shell starts with a soft limit of 1,024, whatever max_subscribers says."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = FILES_CEILING if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as error:  # above fs.nr_open, or not allowed: keep what we have
            log.warning("push: cannot raise the open-files limit from %d to %d: %s", soft, target, error)
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, soft - FILES_HEADROOM))


class Full(Exception):
    """max_subscribers are open already."""


class Stopped(Exception):
    """The hub stopped (the server is shutting down) before the job's end came."""


@dataclasses.dataclass(eq=False)
class Subscription:
    """One open stream: `state` resolves to where the job stands (None: no such job), `end` to its end (None:
    the job was deleted before it was seen ended)."""

    job_id: int
    state: asyncio.Future[JobEnd | None]
    end: asyncio.Future[JobEnd | None]
    open: bool = True


class PushHub:
    """Every subscriber of this process, and the one loop that reads their jobs' ends."""

    census_interval = 30.0
    """Seconds between reads of the waiting jobs whole rather than the ended ones only: a job deleted between two
    looks (purged or removed by retention right after its end, or deleted by the application) is then seen gone,
    and its streams closed, instead of being held open for as long as the page stays."""

    def __init__(self, settings: PushSettings, store: Store) -> None:
        self.settings = settings
        self.reads = PushStore(store)
        self.notify = False
        """Whether ends come from PostgreSQL's NOTIFY (set by start())."""
        self._new: dict[int, list[Subscription]] = {}
        self._waiting: dict[int, list[Subscription]] = {}
        self._count = 0
        self.limit = settings.max_subscribers
        """Open streams at most: max_subscribers, or fewer when the open-files limit cannot hold them (start())."""
        self._look = False
        self._census_at = 0.0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._listener: FinishedListener | None = None

    @property
    def subscribers(self) -> int:
        """Open streams."""
        return self._count

    @property
    def waiting(self) -> int:
        """Open streams that were sent their job's state and wait for its end."""
        return sum(len(subs) for subs in self._waiting.values())

    def allowed_origin(self, origin: str | None) -> bool:
        """A request without Origin is not a browser's cross-origin request (nor a WebSocket a page opened):
        the token alone decides. One with an Origin must name a listed origin exactly."""
        return origin is None or origin in self.settings.allowed_origins

    def grants(self, token: str | None, job_id: int) -> bool:
        return tokens.verify(self.settings.secret, token, job_id)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self.limit = streams_that_fit(self.settings.max_subscribers)
        if self.limit < self.settings.max_subscribers:
            log.warning("push: at most %d open streams, not max_subscribers=%d: the open-files limit (ulimit -n, "
                        "systemd LimitNOFILE=) is too low; more are refused (1013/503)", self.limit,
                        self.settings.max_subscribers)
        try:
            self.notify = await asyncio.to_thread(self.reads.can_notify)
        except Exception as error:  # the database is not there yet: poll, which retries every interval
            log.warning("push: cannot tell whether the database notifies (%s); polling", error)
        if self.notify:
            def woken() -> None:
                loop.call_soon_threadsafe(self._notified)

            self._listener = self.reads.listen_finished(woken)
        elif self.reads.can_push:
            log.warning("push: trigger pending_jobs_notify_finished is missing (migrate); polling every %ss",
                        self.settings.poll_interval)
        self._task = asyncio.create_task(self._serve(), name="push-hub")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._listener is not None:
            await asyncio.to_thread(self._listener.stop)
            self._listener = None
        for subs in [*self._new.values(), *self._waiting.values()]:
            for sub in subs:
                for future in (sub.state, sub.end):
                    if not future.done():
                        future.set_exception(Stopped())
                        future.exception()  # retrieved: a stream that already left never awaits it
        self._new.clear()
        self._waiting.clear()

    def listening(self) -> bool:
        """Whether NOTIFY is in place (or not used): a test finishes a job only once it is."""
        return self._listener is None or self._listener.listening.is_set()

    def subscribe(self, job_id: int) -> Subscription:
        if self._task is None:
            raise Stopped()
        if self._count >= self.limit:
            raise Full()
        loop = asyncio.get_running_loop()
        sub = Subscription(job_id, loop.create_future(), loop.create_future())
        self._new.setdefault(job_id, []).append(sub)
        self._count += 1
        self._wake.set()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if not sub.open:
            return
        sub.open = False
        self._count -= 1
        for table in (self._new, self._waiting):
            subs = table.get(sub.job_id)
            if subs and sub in subs:
                subs.remove(sub)
                if not subs:
                    del table[sub.job_id]

    def _notified(self) -> None:
        self._look = True
        self._wake.set()

    async def _serve(self) -> None:
        interval = self.settings.notify_poll_interval if self.notify else self.settings.poll_interval
        loop = asyncio.get_running_loop()
        next_look = loop.time() + interval
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, next_look - loop.time()))
            self._wake.clear()
            # A new subscriber's wake reads its first state at once; the others' ends wait for the interval
            # (or a notification), however often subscribers arrive.
            if loop.time() >= next_look:
                self._look = True
            try:
                if await self._tick():
                    next_look = loop.time() + interval
            except Exception as error:  # the database went away: keep the streams, try again next interval
                log.warning("push: cannot read job states: %s", error)
                await asyncio.sleep(self.settings.poll_interval)

    async def _tick(self) -> bool:
        """Read new subscribers' states, and the waiting ones' ends when it is time; whether it looked."""
        new, self._new = self._new, {}
        if new:
            try:
                found = {state.id: state for state in await asyncio.to_thread(self.reads.states_of, list(new))}
            except Exception:
                for job_id, subs in new.items():  # read again next time
                    self._new.setdefault(job_id, []).extend(sub for sub in subs if sub.open)
                raise
            for job_id, subs in new.items():
                state = found.get(job_id)
                for sub in subs:
                    if not sub.open:
                        continue
                    sub.state.set_result(state)
                    if state is not None and not state.ended:
                        self._waiting.setdefault(job_id, []).append(sub)
        if not self._look:
            return False
        self._look = False
        if not self._waiting:  # nobody waiting: no query at all
            return True
        now = asyncio.get_running_loop().time()
        if now < self._census_at:
            for end in await asyncio.to_thread(self.reads.finished_among, list(self._waiting)):
                for sub in self._waiting.pop(end.id, []):
                    sub.end.set_result(end)
            return True
        self._census_at = now + self.census_interval
        ids = list(self._waiting)
        found = {state.id: state for state in await asyncio.to_thread(self.reads.states_of, ids)}
        for job_id in ids:
            state = found.get(job_id)
            if state is None or state.ended:  # None: deleted since its subscribers were sent its state
                for sub in self._waiting.pop(job_id, []):
                    sub.end.set_result(state)
        return True
