"""One run, whole: rescue expired leases, serve jobs, deliver callbacks as jobs end, apply retention, and
leave a row in `pending_job_runs` and (optionally) a metrics file saying what it did and how it ended.

`run_once` is what `pending-jobs run` does, and what a Python caller gets too. While it serves, three
threads of its own run beside the producer: the callback sender (woken when an outcome with a callback
is recorded), on PostgreSQL a listener (woken by the INSERT trigger's NOTIFY), and in service mode the
segment keeper (a runs row, retention and metrics every interval). A drain (poll 0) delivers the due
callbacks after its jobs, in one pass.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable

from . import held, schedules
from .callbacks import Deliverer
from .config import Settings
from .errors import EXIT_CONFIG, EXIT_TEMPFAIL, ConfigError, DatabaseUnavailable, exit_code_of
from .metrics import render, write_textfile
from .models import RunReport
from .registry import Task
from .runner import Executor, Producer, rescue, stop_on_signals
from .store import CallbackStore, HangWatch, Health, LimitedStore, OpsStore, RunStore, ScheduleStore, Store

log = logging.getLogger(__name__)

CALLBACK_MIN_TIME = 5.0  # seconds callbacks get after the jobs of a drain run, even when the runtime is spent
LISTEN_STEP = 1.0  # seconds the listener waits for a notification before looking whether the run ended
SCHEDULE_STEP = 1.0  # seconds between looks for due schedule slots while a run serves (a slot is ≤ 1 s late)
HUNG_EXIT_WAIT = 30.0
"""Seconds a run whose server was found hung gets to end by its own exit path (store calls fail at once then; a
new connection waits connect_timeout, 10 s) before the process ends with exit 75 whatever it waits for."""


def owner_name() -> str:
    """Who holds a lease: host and pid, so an operator can find the process."""
    return f"{socket.gethostname()}:{os.getpid()}"


def run_once(store: Store, tasks: dict[str, Task], settings: Settings, *, job_id: int | None = None,
             on_progress: Callable[[RunReport], None] | None = None, deliverer: Deliverer | None = None,
             hand_off: Callable[[], bool] | None = None, segment: float | None = None,
             on_served: Callable[[], None] | None = None) -> RunReport:
    """Serve due jobs and deliver due callbacks; the report says what happened.

    With `settings.poll` 0 the run stops when nothing is due (a drain); otherwise it serves until the
    runtime is spent, `hand_off()` says another run is ready, or a signal. `segment` (service mode):
    seconds after which the runs row is closed and a new one opened, retention applied and metrics
    written, over and over. Raises DatabaseUnavailable when the database goes away or turns
    read-only, ConfigError on a bad callback setting, CommandFailed when `job_id` is not pending.
    The runs row and the metrics file record the run however it ends. `deliverer` replaces the
    callback sender the settings describe. `on_served()` is called once no more jobs will be claimed (the
    host lock is released there: the next run serves while this one's last jobs and callbacks end); it must
    bear a second call.
    """
    started = time.monotonic()
    report = RunReport()
    serving = job_id is None and settings.callbacks != "only"
    tables = held.read(settings, tasks, schedules_too=serving)  # a table with an error fails alone
    held.report(tables)
    configured, recurring, tasks = tables.limits, tables.schedules, tables.tasks
    if configured:
        store = LimitedStore(store, configured)
    runs = RunStore(store)
    # Built first: a bad callback secret stops the run before it claims anything.
    deliver = deliverer or Deliverer(CallbackStore(store), settings)
    callbacks = _Callbacks(deliver, settings, report) if settings.callbacks != "off" else None
    executor = Executor(store, tasks, settings, tables.queues)
    producer = Producer(store, executor, settings, report, owner_name(), on_progress,
                        hand_off, on_callbacks_due=callbacks.wake if callbacks else None, on_stop_claiming=on_served)
    run_id: int | None = None
    threads: list[_Thread] = []
    keeper: _Segments | None = None
    # Stopped last (after the runs row is recorded): retention and the record wait on the server too.
    watch = _watch_hangs(store)
    try:
        run_id = runs.start_run(socket.gethostname(), os.getpid())
        store.check_writable()
        rescue(store, report, tasks, tables.queues)
        if recurring:
            enqueue_schedules(ScheduleStore(store), recurring)
            if settings.poll > 0:
                threads.append(_Thread("schedules", lambda stop: _keep_schedules(
                    ScheduleStore(store), recurring, stop, producer.wake)))
        # A drain, and a one-off `--job` run, deliver after their jobs, in one pass: a sender thread stopped as
        # soon as the one job ended, so `run --job` left that job's callback to the next run.
        one_pass = settings.poll <= 0 or job_id is not None
        if callbacks is not None and not one_pass:
            threads.append(callbacks.start(producer.signal))
        if settings.poll > 0 and settings.callbacks != "only":
            listener = store.sql.listener(store.engine)
            if listener is not None:
                threads.append(_Thread("listener", lambda stop: _listen(listener, stop, producer.wake)))
        if segment is not None:
            keeper = _Segments(runs, store, settings, report, run_id, segment, EXIT_CONFIG if tables.problems else 0)
            threads.append(_Thread("segments", keeper.keep))
        with stop_on_signals(lambda: _signal(producer, callbacks), settings.grace):
            if settings.callbacks == "only":
                producer.idle(job_id)  # stop conditions only: the callback sender does the work
            else:
                producer.run(job_id)
            if on_served is not None:
                on_served()
            for thread in threads:
                thread.stop(raise_error=True)
            if callbacks is not None and one_pass and report.stopped_by != "signal":
                # `--job` from a shell: a few seconds for its callback, not max_runtime of another backlog.
                budget = 0.0 if job_id is not None else settings.max_runtime - (time.monotonic() - started)
                callbacks.deliver_due(time.monotonic() + max(CALLBACK_MIN_TIME, budget))
        _retention(store, settings, hurry=report.stopped_by == "signal")
        report.exit_code = EXIT_CONFIG if tables.problems else 0  # served the rest: the tables still need a fix
    except BaseException as error:
        report.exit_code = exit_code_of(error)
        raise
    finally:
        for thread in threads:
            thread.stop(raise_error=False)
        report.duration = time.monotonic() - started
        if keeper is None:
            _record(runs, run_id, report, settings.metrics_file)
        else:  # the last interval's row: what was done since the previous one
            _record(runs, keeper.run_id, keeper.last(report), settings.metrics_file)
        if watch is not None:
            watch.stop(raise_error=False)
            store.watch = None  # a caller's later use of the store is not watched, nor refused
    return report


def check_settings(settings: Settings) -> None:
    """Raise ConfigError for a setting `run_once` would refuse, before the database is asked anything: the CLI
    asks before it takes the host lock, so a run with a typo never makes the serving run hand over to it. (A
    `[task.NAME]`, `[queue.NAME]` or `[schedules.NAME]` table with an error is not refused: held.py.)"""
    if settings.callbacks != "off":
        Deliverer.check(settings)


def enqueue_schedules(store: ScheduleStore, recurring: dict[str, schedules.Schedule]) -> int:
    """Enqueue the schedules' due slots (each once across every host); how many jobs were enqueued."""
    count = 0
    for fired in store.enqueue_due(recurring):
        count += len(fired.job_ids)
        for slot, job_id in zip(fired.slots, fired.job_ids, strict=True):
            log.info("schedule %s: enqueued job %d for %s", fired.name, job_id, schedules.iso(slot))
    return count


def _keep_schedules(store: ScheduleStore, recurring: dict[str, schedules.Schedule], stop: threading.Event,
                    wake: Callable[[], None]) -> None:
    """While the run serves: look for due slots every SCHEDULE_STEP; a slot enqueued wakes the producer."""
    while not stop.wait(SCHEDULE_STEP):
        try:
            if enqueue_schedules(store, recurring):
                wake()
        except (DatabaseUnavailable, ConfigError):
            raise
        except Exception as error:  # the next look tries again; the serving goes on
            log.warning("could not enqueue due schedule slots: %s", error)


def _watch_hangs(store: Store) -> _Thread | None:
    """Where the driver does not bound a read (PostgreSQL), a thread that ends a store call waiting on a hung
    server (store/hang.py); if the run has still not ended HUNG_EXIT_WAIT seconds later, the process exits 75."""
    probe = getattr(store.sql, "hang_probe", None)  # only where reads have no bound of their own
    if probe is None:
        return None
    watch = store.watch = HangWatch(store.engine, probe)
    # The process is ended only for a run on the main thread (the CLI, a script): an application running runs in
    # a thread of its own gets the DatabaseUnavailable alone, as signals are left to it (runner/signals.py).
    owns_process = threading.current_thread() is threading.main_thread()

    def keep(stop: threading.Event) -> None:
        if watch.keep(stop) and owns_process and not stop.wait(HUNG_EXIT_WAIT):
            sys.stderr.write(f"pending-jobs: {watch.hung}; still exiting after {HUNG_EXIT_WAIT:g}s: ending now\n")
            sys.stderr.flush()
            os._exit(EXIT_TEMPFAIL)

    return _Thread("hang-watch", keep)


def _signal(producer: Producer, callbacks: _Callbacks | None) -> None:
    producer.signal()
    if callbacks is not None:
        callbacks.stop_now()


def _retention(store: Store, settings: Settings, hurry: bool = False) -> None:
    """`hurry` (a signal): the fixed batches only, not RETENTION_TIME more: a supervisor waits for the exit."""
    purged = OpsStore(store).apply_retention(settings.retention_succeeded, settings.retention_failed,
                                             0.0 if hurry else None)
    if purged:
        log.info("retention: deleted %d finished job(s)", purged)


def _record(runs: RunStore, run_id: int | None, report: RunReport, metrics_file: str) -> None:
    """The runs row and the metrics file; a failure to write either never hides how the run ended."""
    try:
        if run_id is not None:
            runs.finish_run(run_id, report)
    except Exception as error:
        log.debug("could not record the end of run %s: %s", run_id, error)
    _write_metrics(runs, report, metrics_file)


def _write_metrics(runs: RunStore, report: RunReport, metrics_file: str) -> None:
    if not metrics_file:
        return
    health: Health | None
    try:
        health = runs.health()
    except Exception:
        health = None  # the run's own numbers are still worth exporting
    try:
        write_textfile(metrics_file, render(report, time.time(), health))
    except OSError as error:
        log.warning("cannot write metrics file %s: %s", metrics_file, error.strerror or error)


class _Thread:
    """A thread of the run that works until `stop()`; its first error is raised by `stop()`."""

    def __init__(self, name: str, work: Callable[[threading.Event], None],
                 on_error: Callable[[], None] | None = None) -> None:
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._work = work
        self._on_error = on_error
        self._thread = threading.Thread(target=self._main, name=f"pending-jobs-{name}", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        try:
            self._work(self._stop)
        except BaseException as error:  # handed to the run's own thread by stop()
            self._error = error
            if self._on_error is not None and not self._stop.is_set():
                # The run stops now and raises it: kept until the run's end, a dead callback sender left a
                # run (a callbacks-only one, a `serve`) sending nothing for up to max_runtime, or for ever.
                self._on_error()

    def stop(self, raise_error: bool) -> None:
        """Ask it to stop and wait for it; raise what stopped it early (else only log it: the run is
        ending for another reason already)."""
        self._stop.set()
        self._thread.join()
        error, self._error = self._error, None
        if error is None:
            return
        if raise_error:
            raise error
        log.debug("%s stopped with %s", self._thread.name, error)


class _Callbacks:
    """The callback sender of a run: delivers while the run serves, woken as outcomes are recorded."""

    def __init__(self, deliverer: Deliverer, settings: Settings, report: RunReport) -> None:
        self.deliverer = deliverer
        self.queues = settings.queues
        self.report = report
        self._wake = threading.Event()
        self._stop: threading.Event | None = None

    def start(self, on_error: Callable[[], None] | None = None) -> _Thread:
        return _Thread("callbacks", self._serve, on_error)

    def _serve(self, stop: threading.Event) -> None:
        self._stop = stop
        self.deliverer.serve(stop, self._wake, self.queues, self._count)

    def wake(self) -> None:
        """An outcome with a callback was recorded: look now, not at the next poll."""
        self._wake.set()

    def stop_now(self) -> None:
        """A signal: claim no more callbacks (attempts under way finish and are recorded)."""
        if self._stop is not None:
            self._stop.set()
        self._wake.set()

    def deliver_due(self, deadline: float) -> None:
        """A drain run's last pass: what is due now, until none is left or the deadline passes."""
        delivered, failed = self.deliverer(deadline, self.queues)
        self._count(delivered, failed)

    def _count(self, delivered: int, failed: int) -> None:
        self.report.callbacks_delivered += delivered
        self.report.callbacks_failed += failed


def _listen(listener: Callable[[float], bool], stop: threading.Event, wake: Callable[[], None]) -> None:
    """Wake the producer whenever the database says a job was inserted (PostgreSQL NOTIFY)."""
    while not stop.is_set():
        if listener(LISTEN_STEP):
            wake()


class _Segments:
    """Service mode: every `interval`, the runs row is closed and a new one opened, retention applied and
    metrics written, so the runs table and the metrics tell the story of a process that never ends."""

    def __init__(self, runs: RunStore, store: Store, settings: Settings, report: RunReport, run_id: int,
                 interval: float, exit_code: int = 0) -> None:
        self.runs, self.store, self.settings, self.report = runs, store, settings, report
        self.run_id = run_id
        self.interval = interval
        self.exit_code = exit_code  # of each interval's row: 2 while a config table has a mistake (held.py)
        self._counted = RunReport()

    def keep(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval):
            try:
                self._next()
            except Exception as error:  # the next segment tries again; the serving goes on
                log.warning("could not close the runs row of this interval: %s", error)

    def _next(self) -> None:
        done = self._delta()
        done.exit_code, done.stopped_by = self.exit_code, "interval"
        self.runs.finish_run(self.run_id, done)
        self.run_id = self.runs.start_run(socket.gethostname(), os.getpid())
        _retention(self.store, self.settings)
        _write_metrics(self.runs, done, self.settings.metrics_file)

    def last(self, report: RunReport) -> RunReport:
        """The row of the last interval, closed with how the process ended."""
        done = self._delta()
        done.exit_code, done.stopped_by, done.duration = report.exit_code, report.stopped_by, report.duration
        return done

    def _delta(self) -> RunReport:
        """What was done since the last row (the report keeps counting the whole process)."""
        counted = (*RunReport.STORED, "held")  # held: no column of the runs table, but its metrics have it
        now = {name: getattr(self.report, name) for name in counted}
        delta = RunReport(**{name: now[name] - getattr(self._counted, name) for name in counted})
        self._counted = RunReport(**now)
        return delta
