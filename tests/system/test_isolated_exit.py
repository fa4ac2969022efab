"""A process-isolated handler that dies is a failure as soon as it dies, even when a process it forked still
holds the answer pipe open: the runner waited for EOF on that pipe, so the job stayed `running` until the
forked process ended (or the task's timeout, and forever without one)."""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from pending_jobs import isolation
from pending_jobs.registry import Task

HANDLER = '''
import os, time
from pending_jobs import task

@task("forks_then_dies", isolation="process")
def forks_then_dies(payload, ctx):
    pid = os.fork()
    if pid == 0:  # inherits every descriptor of the child, the answer pipe among them
        time.sleep(60)
        os._exit(0)
    with open({pid_file!r}, "w") as handle:
        handle.write(str(pid))
    os._exit(4)
'''


class Ctx:
    job_id, task, queue, attempt, max_attempts, deadline = 1, "forks_then_dies", "default", 1, 5, None
    log = logging.LoggerAdapter(logging.getLogger("test"), {})

    def cancel_requested(self) -> bool:
        return False


def test_a_child_that_dies_fails_its_job_at_once_though_a_process_it_forked_holds_the_pipe(tmp_path: Path) -> None:
    module = f"forks_{os.getpid()}"
    pid_file = tmp_path / "forked.pid"
    (tmp_path / f"{module}.py").write_text(HANDLER.format(pid_file=str(pid_file)))
    task = Task("forks_then_dies", lambda payload, ctx: None, isolation="process")
    started = time.monotonic()
    try:
        with pytest.raises(isolation.ChildDied, match="exited with code 4 without returning"):
            isolation.call(task, {}, Ctx(), [module], [str(tmp_path)])  # type: ignore[arg-type]
        assert time.monotonic() - started < 30, "the runner waited for the forked process, not the child"
    finally:
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_an_answer_sent_just_before_the_exit_is_still_the_outcome(tmp_path: Path) -> None:
    module = f"answers_{os.getpid()}"
    (tmp_path / f"{module}.py").write_text(
        "from pending_jobs import task\n\n"
        "@task('answers', isolation='process')\n"
        "def answers(payload: object, ctx: object) -> object:\n"
        "    return {'big': 'x' * 1_000_000}\n")
    task = Task("answers", lambda payload, ctx: None, isolation="process")
    ctx: Any = Ctx()
    for _ in range(3):
        assert isolation.call(task, {}, ctx, [module], [str(tmp_path)]) == {"big": "x" * 1_000_000}
