"""Process isolation: run a handler in a child process that can be killed and may crash alone.

A task registered with `isolation="process"` runs in a child started by a 'forkserver' context (the
runner has threads, and forking a threaded process can copy a held lock), in a process group of its own:
killing it (its timeout, a crash, the runner leaving) kills what the handler started too, as a
command task's group is, so no subprocess runs on beside the job's next attempt. The child imports the
configured task modules, runs the handler and sends back what happened over a pipe. A child that
dies (os._exit, a signal, the OOM killer) or outlives the task's timeout becomes an exception in the
runner's worker thread, so it is recorded and retried like any other failure.

`ctx.connection` is not available in a child: exactly-once database effects need the runner's
transaction, which cannot cross a process boundary.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection, wait
from typing import Any

from . import registry, validation
from .context import Context, time_left
from .errors import Fail, Retry
from .registry import Task

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
OUTPUT_LIMIT = 64 * 1024  # bytes of a child's output logged (its last ones)
_context: Any = None


class ChildDied(Exception):
    """The handler's process ended without an answer: exited, was killed, or ran out of memory."""


class HandlerError(Exception):
    """The handler raised in its process; the message is the child's `Type: message` and traceback."""


class ChildContext:
    """What a process-isolated handler receives: the Context of a thread handler, without a connection.

    `cancel_requested()` asks the runner over a pipe; the runner reads the flag like a thread handler's
    context does (one query per call)."""

    def __init__(self, fields: dict[str, Any], ask: Connection) -> None:
        self._ask = ask
        self.job_id: int = fields["job_id"]
        self.task: str = fields["task"]
        self.queue: str = fields["queue"]
        self.attempt: int = fields["attempt"]
        self.max_attempts: int = fields["max_attempts"]
        self.deadline: float | None = fields["deadline"]  # CLOCK_MONOTONIC is shared by every process
        self.log = logging.LoggerAdapter(logging.getLogger(f"pending_jobs.task.{self.task}"),
                                         {"job_id": self.job_id, "task": self.task})

    @property
    def connection(self) -> Any:
        """Not available: raise a clear error instead of opening an unfenced connection."""
        raise RuntimeError(
            "ctx.connection is not available with isolation='process': the runner's transaction cannot "
            "cross into the child process; use isolation='thread' for exactly-once database effects"
        )

    def time_left(self) -> float | None:
        """Seconds until the deadline, or None when there is none."""
        return time_left(self.deadline)

    def cancel_requested(self) -> bool:
        """Whether an operator ran `pending-jobs cancel` on this job while it runs (asks the runner)."""
        self._ask.send("cancel_requested")
        return bool(self._ask.recv())


def call(task: Task, payload: Any, ctx: Context, modules: list[str], python_path: Sequence[str] = ()) -> Any:
    """Run `task` on `payload` in a child; return its result or raise what it raised (Retry, Fail, ...)."""
    fields = {"job_id": ctx.job_id, "task": ctx.task, "queue": ctx.queue, "attempt": ctx.attempt,
              "max_attempts": ctx.max_attempts, "deadline": ctx.deadline}
    receiver, sender = _mp().Pipe(duplex=False)
    questions, ask = _mp().Pipe(duplex=True)
    # What the child prints goes to a file of its own, then into the job's log: not to the runner's
    # stdout, which cron mails.
    output = tempfile.NamedTemporaryFile(prefix="pending-jobs-child-", suffix=".log", delete=False)
    output.close()
    child = _mp().Process(target=_child_main, args=(sender, ask, output.name, list(modules), list(python_path),
                                                    task.name, payload, fields, task.memory_limit), daemon=True)
    answered = False
    try:
        child.start()
        sender.close()  # the parent keeps only the reading end, so a dead child reads as EOF
        ask.close()
        answer = _wait(receiver, questions, child, task.timeout, ctx)
        answered = True
    finally:
        receiver.close()
        questions.close()
        if child.pid is not None:  # started: start() itself may fail (no process or descriptor left)
            if answered:
                child.join(1)  # it has answered: a moment to exit on its own, then killed (SIGTERM may be ignored)
            if not answered or child.is_alive():  # timed out, died or stuck: nothing it started may run on
                _kill(child)
                child.join(5)
        _log_output(output.name, ctx)
    return _unpack(answer)


def _kill(child: Any) -> None:
    """SIGKILL the child's process group (its subprocesses with it), then the child itself: it may not have
    made its group yet. Its pid names the group while any member lives, so no other process is hit."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signal.SIGKILL)
    child.kill()


def kill_leftovers() -> None:
    """The groups of children still running when the runner leaves (its grace spent): the child itself dies
    with the forkserver (PR_SET_PDEATHSIG), but what it started would not. Called by cli.entry."""
    for child in multiprocessing.active_children():
        _kill(child)


def _log_output(path: str, ctx: Context) -> None:
    """The child's output, its last OUTPUT_LIMIT bytes, into the job's log, line by line."""
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, os.path.getsize(path) - OUTPUT_LIMIT))
            text = handle.read().decode("utf-8", "replace")
        os.unlink(path)
    except OSError as error:
        log.debug("job %d: cannot read its process's output: %s", ctx.job_id, error)
        return
    for line in text.splitlines():
        if line.strip():
            ctx.log.info("output: %s", line)


def _mp() -> Any:
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
    return _context


def _wait(receiver: Connection, questions: Connection, child: Any, timeout: float | None,
          ctx: Context) -> tuple[Any, ...]:
    """The child's answer; meanwhile answer its questions (cancellation), and kill it at the timeout."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        # Its exit too, not only EOF on the pipe: a process the handler forked holds the pipe's writing end,
        # and would hold the job until it ends. An answer sent before the exit is readable by then.
        ready = wait([receiver, questions, child.sentinel], left)
        if receiver in ready:
            break
        if child.sentinel in ready:  # exited without an answer (its questions no longer matter)
            child.join(5)
            raise ChildDied(_death(child.exitcode))
        if questions in ready:
            _answer(questions, ctx)
            continue
        _kill(child)
        raise TimeoutError(f"handler ran longer than {timeout}s: its process was killed")
    try:
        answer: tuple[Any, ...] = receiver.recv()
        return answer
    except (EOFError, OSError):
        child.join(5)
        raise ChildDied(_death(child.exitcode)) from None


def _answer(questions: Connection, ctx: Context) -> None:
    try:
        questions.recv()
        try:
            flag = ctx.cancel_requested()
        except Exception as error:  # the child must not hang on a question the runner cannot answer
            log.warning("job %d: could not read its cancel flag: %s", ctx.job_id, type(error).__name__)
            flag = False
        questions.send(flag)
    except (EOFError, OSError):
        pass  # the child is gone; its answer pipe says how


def _death(code: int | None) -> str:
    if code is None:
        return "the handler's process closed its pipe and did not exit"
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        hint = " (out of memory, or killed)" if -code == signal.SIGKILL else ""
        return f"the handler's process was killed by signal {name}{hint}"
    return f"the handler's process exited with code {code} without returning"


def _unpack(answer: tuple[Any, ...]) -> Any:
    kind = answer[0]
    if kind == "ok":
        return answer[1]
    if kind == "retry":
        raise Retry(delay=answer[1], reason=answer[2])
    if kind == "fail":
        raise Fail(answer[1])
    raise HandlerError(answer[1])


def _child_main(sender: Connection, ask: Connection, output: str, modules: list[str], python_path: list[str],
                name: str, payload: Any, fields: dict[str, Any], memory_limit: int | None) -> None:
    """The child: limit memory, import the task modules, run the handler, send one answer."""
    os.setpgid(0, 0)  # a group of its own, which the runner kills whole (_kill)
    _die_with_parent()
    _capture_output(output)
    if memory_limit is not None:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
    answer: tuple[Any, ...]
    try:
        loaded = registry.load(modules, python_path)
        if name not in loaded:  # the parent's handler was not registered by a module the child imports
            raise LookupError(f"task {name!r} has no handler in its child process: a process-isolated handler is "
                              "imported again there, so it must be registered with @task in one of the task "
                              f"modules ({', '.join(modules) or 'none configured'})")
        handler = loaded[name]
        result = handler.fn(payload, ChildContext(fields, ask))
        try:
            sender.send(("ok", result))
        except RecursionError:  # pickled by recursion: a result nested that deep fails as it does in a thread
            try:
                validation.dump_json(result, "result", sys.maxsize)
            except ValueError as error:
                sender.send(("fail", f"the handler's result cannot be stored: {error}"))
                return
            raise
        return
    except Retry as request:
        answer = ("retry", request.delay, request.reason)
    except Fail as failure:
        answer = ("fail", failure.reason)
    except BaseException as error:  # anything else, including an unpicklable result, is the handler's failure
        answer = ("error", validation.describe_exception(error))
    sender.send(answer)


def _capture_output(path: str) -> None:
    """Point stdout and stderr (the file descriptors, so C code and subprocesses too) and the child's log
    at the file the runner reads back."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s",
                        force=True)


def _die_with_parent() -> None:
    """Linux: the child gets SIGKILL when the forkserver (and so the runner) dies, so none is orphaned."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        log.debug("prctl(PR_SET_PDEATHSIG) unavailable; a child may outlive a killed runner")
