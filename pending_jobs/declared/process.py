"""One child process in a process group of its own: feed its stdin, read its output with caps, stop it.

The command runs in a new session (its own process group), so the timeout, a cancel and the final
clean-up reach every process it started, not only the first one. Output is read as it comes, with
one selector over the pipes and a pidfd (Linux 5.3+; elsewhere the exit is polled): stdout is kept
up to a cap and counted beyond it, stderr keeps only its tail, so no command can make the runner
buffer without bound. When the command exits, whatever is left in its group is killed: a background
child holding the pipes open can never hold the job.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import logging
import os
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence

log = logging.getLogger(__name__)

CHUNK = 65536
STDERR_TAIL = 64 * 1024  # bytes of stderr kept: its end says why a command failed
LINGER = 0.2  # seconds after the command exits to read what its pipes still hold
POLL = 0.05  # seconds between exit checks where there is no pidfd
CANCEL_POLL = 1.0  # seconds between looks at `cancel_requested` (one query each)
REAP_TIMEOUT = 5.0

_live: set[int] = set()
"""Process groups started and not yet cleaned up (killed at interpreter exit)."""
_live_lock = threading.Lock()


@dataclasses.dataclass(frozen=True)
class Finished:
    """How a command ended and what it printed."""

    returncode: int | None
    """The exit code, or -N for signal N; None when it could not be reaped in time."""
    stdout: bytes
    """At most the cap's bytes of stdout."""
    stdout_size: int
    """Bytes of stdout in all, kept or discarded."""
    stderr_tail: bytes
    stopped: str | None
    """Why it was stopped: 'timeout' or 'cancel'; None when it ended by itself."""
    killed: bool
    """Whether SIGKILL followed SIGTERM (it outlived kill_after)."""


def run(argv: Sequence[str], env: Mapping[str, str], cwd: str | None, stdin: bytes, stdout_cap: int,
        deadline: float, kill_after: float, cancelled: Callable[[], bool]) -> Finished:
    """Run `argv` (no shell) until it exits, the deadline passes or `cancelled()`; raises OSError if it cannot start.

    At the end its whole process group is killed and the command reaped, whatever happened.
    """
    proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=cwd, env=dict(env), start_new_session=True, close_fds=True)
    with _live_lock:
        _live.add(proc.pid)
    try:
        watch = _Watch(proc, stdin, stdout_cap)
    except BaseException:  # out of descriptors, say: the command must not outlive the job
        _signal_group(proc.pid, signal.SIGKILL)
        proc.wait()
        with _live_lock:
            _live.discard(proc.pid)
        raise
    stopped: str | None = None
    killed = False
    try:
        stopped, killed = _wait(watch, deadline, kill_after, cancelled)
    finally:
        code = watch.close()
    return Finished(code, bytes(watch.stdout), watch.stdout_size, bytes(watch.stderr), stopped, killed)


def _wait(watch: _Watch, deadline: float, kill_after: float, cancelled: Callable[[], bool]) -> tuple[str | None, bool]:
    """Step the watch until the command has exited and its pipes are drained (or LINGER passed)."""
    stopped: str | None = None
    term_at = 0.0
    killed = False
    next_cancel = time.monotonic() + CANCEL_POLL
    while True:
        now = time.monotonic()
        exited = watch.exited_at
        if exited is not None and (not watch.reading or now - exited >= LINGER):
            return stopped, killed
        if stopped is None and exited is None:
            if now >= deadline:
                stopped = "timeout"
            elif now >= next_cancel:
                next_cancel = now + CANCEL_POLL
                stopped = "cancel" if _asked(cancelled) else None
            if stopped is not None:
                term_at = now
                _signal_group(watch.pid, signal.SIGTERM)
        if stopped is not None and not killed and exited is None and now >= term_at + kill_after:
            killed = True
            _signal_group(watch.pid, signal.SIGKILL)
        elif killed and now >= term_at + kill_after + REAP_TIMEOUT:
            return stopped, killed  # SIGKILL did not end it (stuck in the kernel): stop waiting
        if exited is not None:
            wake = exited + LINGER
        elif stopped is None:
            wake = min(deadline, next_cancel)
        else:
            wake = term_at + kill_after if not killed else now + 1.0
        watch.step(max(0.0, wake - now))


class _Watch:
    """The pipes, the exit and the output of one process, stepped by one selector."""

    def __init__(self, proc: subprocess.Popen[bytes], stdin: bytes, stdout_cap: int) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.stdout = bytearray()
        self.stdout_size = 0
        self.stderr = bytearray()
        self.exited_at: float | None = None
        self._cap = stdout_cap
        self._input = memoryview(stdin)
        self._selector = selectors.DefaultSelector()
        self._pidfd: int | None = None
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        self._out, self._err, self._in = proc.stdout.fileno(), proc.stderr.fileno(), proc.stdin.fileno()
        for fd in (self._out, self._err, self._in):
            os.set_blocking(fd, False)
        self._selector.register(self._out, selectors.EVENT_READ)
        self._selector.register(self._err, selectors.EVENT_READ)
        if stdin:
            self._selector.register(self._in, selectors.EVENT_WRITE)
        else:
            self._close_stdin()
        with contextlib.suppress(AttributeError, OSError):  # no pidfd: poll the exit instead
            self._pidfd = os.pidfd_open(self.pid)
            self._selector.register(self._pidfd, selectors.EVENT_READ)
        self._check_exit()

    @property
    def reading(self) -> bool:
        """Whether stdout or stderr is still open."""
        keys = self._selector.get_map()
        return self._out in keys or self._err in keys

    def step(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for output, room in stdin, or the exit; handle what came."""
        if self._pidfd is None and self.exited_at is None:
            timeout = min(timeout, POLL)
        for key, _ in self._selector.select(timeout):
            fd = key.fd
            if fd == self._pidfd:
                self._selector.unregister(fd)
            elif fd == self._in:
                self._feed()
            else:
                self._read(fd)
        self._check_exit()

    def _check_exit(self) -> None:
        """Note the exit without reaping: the zombie keeps its id, so the group can still be signalled."""
        if self.exited_at is not None:
            return
        try:
            exited = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:  # reaped already: it has exited
            exited = True
        if exited:
            self.exited_at = time.monotonic()

    def _feed(self) -> None:
        try:
            written = os.write(self._in, self._input[:CHUNK])
        except BlockingIOError:
            return
        except OSError:  # EPIPE: it exited or closed stdin without reading it all, which is its right
            written = len(self._input)
        self._input = self._input[written:]
        if not self._input:
            self._selector.unregister(self._in)
            self._close_stdin()

    def _close_stdin(self) -> None:
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()

    def _read(self, fd: int) -> None:
        try:
            data = os.read(fd, CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._selector.unregister(fd)
            return
        if fd == self._out:
            self.stdout_size += len(data)
            room = self._cap - len(self.stdout)
            if room > 0:
                self.stdout += data[:room]
        else:
            self.stderr += data
            if len(self.stderr) > 2 * STDERR_TAIL:  # trim now and then, not on every read
                del self.stderr[:-STDERR_TAIL]

    def close(self) -> int | None:
        """Kill what is left of the group, close every descriptor, reap; the exit code (None: not reaped)."""
        _signal_group(self.pid, signal.SIGKILL)
        self._selector.close()
        if self._pidfd is not None:
            os.close(self._pidfd)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            with contextlib.suppress(OSError):
                if stream is not None:
                    stream.close()
        if len(self.stderr) > STDERR_TAIL:
            del self.stderr[:-STDERR_TAIL]
        try:
            code: int | None = self.proc.wait(REAP_TIMEOUT)
        except subprocess.TimeoutExpired:  # stuck in the kernel (D state); subprocess reaps it later
            log.warning("process %d did not exit %ss after SIGKILL", self.pid, REAP_TIMEOUT)
            code = None
        with _live_lock:
            _live.discard(self.pid)
        return code


def _asked(cancelled: Callable[[], bool]) -> bool:
    try:
        return cancelled()
    except Exception as error:  # a database hiccup must not end the command; the next look may work
        log.warning("could not read cancel_requested: %s", error)
        return False


def _signal_group(pgid: int, signum: int) -> None:
    # Only called before the group leader is reaped (see _Watch.close): its id still names this group.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


@atexit.register
def kill_leftovers() -> None:
    """A runner that exits while commands run (grace spent, a second signal) takes their groups along.

    Registered with atexit for embedders; the CLI also calls it itself, since it may leave with
    os._exit (cli.entry), which skips atexit hooks. Idempotent: a group killed twice is harmless.
    """
    with _live_lock:
        groups = list(_live)
    for pgid in groups:
        _signal_group(pgid, signal.SIGKILL)
