"""`command` tasks: run a program without a shell, the payload on stdin, the outcome from its exit code.

Exit 0: succeeded, stdout is the result (JSON when it parses, else text). Exit 75 (EX_TEMPFAIL, as
sendmail and cron users know it): retried with the task's backoff. Killed by a signal the runner did
not send (the OOM killer, a reboot): retried. Any other exit: failed at once, with the tail of stderr
— the command has said it failed, and a cron job that exits 1 is not run again either.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from typing import Any

from ..errors import Fail, Retry
from ..registry import Backoff, Task
from ..validation import clean_text
from . import process
from .base import backoff_of, effective_limit, excerpt, json_or_text, retry, task_of
from .spec import COMMAND_TIMEOUT, CommandSpec

EXIT_TEMPFAIL = 75
TAIL = 2000  # characters of stderr in `last_error`
BACKSTOP_MARGIN = 5.0 + process.LINGER + process.REAP_TIMEOUT
ENV_PREFIX = "PENDING_JOBS_"


def build(spec: CommandSpec, payload_limit: int) -> Task:
    """The registry entry of a declared command task."""
    runner = CommandTask(spec, payload_limit)
    return task_of(spec.name, runner, spec.policy, runner.timeout + spec.kill_after + BACKSTOP_MARGIN)


def inherited_environment() -> dict[str, str]:
    """The runner's environment without PENDING_JOBS_* (the database URL and callback secret live there)."""
    return {name: value for name, value in os.environ.items() if not name.upper().startswith(ENV_PREFIX)}


class CommandTask:
    """Runs one declared task's command per job; safe to call from every worker thread at once."""

    def __init__(self, spec: CommandSpec, payload_limit: int) -> None:
        self.spec = spec
        self.limit = effective_limit(spec.policy, payload_limit)
        self.backoff: Backoff = backoff_of(spec.policy)
        self.timeout = spec.policy.timeout or COMMAND_TIMEOUT
        self.env = {**inherited_environment(), **spec.env}

    def __call__(self, payload: dict[str, Any], ctx: Any) -> Any:
        stdin = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        env = {**self.env, "PENDING_JOBS_JOB_ID": str(ctx.job_id), "PENDING_JOBS_ATTEMPT": str(ctx.attempt),
               "PENDING_JOBS_MAX_ATTEMPTS": str(ctx.max_attempts), "PENDING_JOBS_TASK": ctx.task,
               "PENDING_JOBS_QUEUE": ctx.queue}
        deadline = time.monotonic() + self.timeout
        if ctx.deadline is not None:
            deadline = min(deadline, ctx.deadline)
        try:
            finished = process.run(self.spec.argv, env, self.spec.cwd, stdin, self.limit + 1, deadline,
                                   self.spec.kill_after, ctx.cancel_requested)
        except OSError as error:
            raise Fail(self._cannot_start(error)) from None
        return self.outcome(finished, ctx)

    def outcome(self, done: process.Finished, ctx: Any) -> Any:
        """The result for exit 0; otherwise raise Retry or Fail saying why, with the end of stderr."""
        program = self.spec.argv[0]
        tail = self._tail(done)
        if done.stopped == "cancel":
            # Raising after a cancel ends the job `cancelled` (the store checks cancel_requested).
            raise Retry(reason=f"cancelled by an operator: {program}'s process group was terminated")
        if done.stopped == "timeout":
            how = f"SIGTERM, then SIGKILL after {self.spec.kill_after:g}s" if done.killed else "SIGTERM"
            raise retry(self.backoff, ctx, f"{program} timed out after {self.timeout:g}s: its process group was "
                                           f"stopped ({how}){tail}")
        code = done.returncode
        if code == 0:
            return json_or_text(done.stdout, done.stdout_size <= self.limit, self.limit)
        if code == EXIT_TEMPFAIL:
            raise retry(self.backoff, ctx, f"{program} exited 75 (EX_TEMPFAIL: try again later){tail}")
        if code is None:
            raise retry(self.backoff, ctx, f"{program} could not be reaped after SIGKILL{tail}")
        if code < 0:
            name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
            raise retry(self.backoff, ctx, f"{program} was killed by signal {name}{tail}")
        raise Fail(f"{program} exited {code}{tail}")

    def _tail(self, done: process.Finished) -> str:
        """The end of stderr (or, when stderr is empty, the start of stdout: PHP prints errors there)."""
        if done.stderr_tail.strip():
            text = done.stderr_tail[-TAIL * 4:].decode("utf-8", "replace").strip()
            # On the first line, not after a newline: the cron log line and a callback's `error` keep only the
            # first line of the reason, and "stderr ends:" alone told a PHP receiver nothing.
            return "; stderr ends: " + clean_text(text[-TAIL:], TAIL)
        if done.stdout.strip():
            return "; no stderr, stdout starts: " + excerpt(done.stdout)
        return " (no output)"

    def _cannot_start(self, error: OSError) -> str:
        program = self.spec.argv[0]
        if self.spec.cwd is not None and error.filename == self.spec.cwd:
            return f"cannot start {program}: working directory {self.spec.cwd!r}: {error.strerror}"
        if isinstance(error, FileNotFoundError):
            interpreter = missing_interpreter(located(self.spec))
            if interpreter is not None:
                return f"cannot start {program!r}: {interpreter}"
            where = "" if "/" in program else " on PATH"
            return f"command not found: {program!r} does not exist{where}"
        if isinstance(error, PermissionError):
            return f"command is not executable: {program!r} (permission denied)"
        return f"cannot start {program!r}: {error.strerror or error}"


def located(spec: CommandSpec) -> str | None:
    """The file `spec`'s program names: a path (relative to its cwd), or the first match on its PATH."""
    program = spec.argv[0]
    if "/" in program:
        return os.path.join(spec.cwd or os.getcwd(), program)  # an absolute program stays as it is
    return shutil.which(program, mode=os.F_OK, path=spec.env.get("PATH", os.environ.get("PATH", os.defpath)))


def missing_interpreter(path: str | None) -> str | None:
    """Why a script at `path` cannot start when its `#!` interpreter does not exist, else None.

    exec() then fails with ENOENT, which read as if the script itself were missing: a PHP script's
    `#!/usr/bin/php` where PHP is /usr/local/bin/php, or a script saved with Windows line ends, whose
    interpreter is `/bin/sh\r` (the kernel keeps the carriage return)."""
    try:
        with open(path or "", "rb") as handle:
            first = handle.readline(256)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    words = re.split(rb"[ \t]+", first[2:].rstrip(b"\n").strip(b" \t"), maxsplit=1)
    interpreter = os.fsdecode(words[0])
    if not interpreter or os.path.exists(interpreter):
        return None
    crlf = " (the script has Windows line ends: save it with LF)" if interpreter.endswith("\r") else ""
    return f"its #! interpreter {interpreter!r} does not exist{crlf}"
