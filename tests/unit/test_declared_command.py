"""Command tasks against real processes (no database): outcomes, caps, timeouts and no process left behind."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from pending_jobs.declared import checks, command, process
from pending_jobs.declared.spec import parse_one
from pending_jobs.errors import Fail, Retry
from pending_jobs.validation import short_reason
from tests.processes import gone_soon, script


class Ctx:
    """What a handler's ctx offers, for a job that is not in any database."""

    def __init__(self, job_id: int = 7, attempt: int = 1, cancel_after: float | None = None) -> None:
        self.job_id = job_id
        self.task = "report"
        self.queue = "default"
        self.attempt = attempt
        self.max_attempts = 5
        self.deadline: float | None = None
        self._cancel_at = None if cancel_after is None else time.monotonic() + cancel_after

    def cancel_requested(self) -> bool:
        return self._cancel_at is not None and time.monotonic() >= self._cancel_at

    def time_left(self) -> float | None:
        return None


def task(argv: list[str], payload_limit: int = 1_000_000, **options: Any) -> command.CommandTask:
    spec = parse_one("report", {"command": argv, **options})
    assert isinstance(spec, command.CommandSpec)
    return command.CommandTask(spec, payload_limit)


def test_json_stdout_is_the_result_and_the_job_arrives_on_stdin_and_in_the_environment(tmp_path: Path) -> None:
    (tmp_path / "work").mkdir()
    run = script(tmp_path, "ok.sh", 'printf \'{"stdin": %s, "id": "%s", "attempt": "%s", "task": "%s", '
                                    '"queue": "%s", "app": "%s", "cwd": "%s", "secret": "%s"}\' '
                                    '"$(cat)" "$PENDING_JOBS_JOB_ID" "$PENDING_JOBS_ATTEMPT" "$PENDING_JOBS_TASK" '
                                    '"$PENDING_JOBS_QUEUE" "$APP_ENV" "$(pwd)" "$PENDING_JOBS_CALLBACK_SECRET"\n')
    os.environ["PENDING_JOBS_CALLBACK_SECRET"] = "whsec_must_not_leak"
    try:
        result = task([run], cwd=str(tmp_path / "work"), env={"APP_ENV": "prod"})({"n": 1, "s": "é"}, Ctx(attempt=2))
    finally:
        del os.environ["PENDING_JOBS_CALLBACK_SECRET"]

    assert result == {"stdin": {"n": 1, "s": "é"}, "id": "7", "attempt": "2", "task": "report", "queue": "default",
                      "app": "prod", "cwd": str(tmp_path / "work"), "secret": ""}


def test_text_stdout_is_stored_as_text_and_no_output_as_null(tmp_path: Path) -> None:
    assert task([script(tmp_path, "t.sh", "echo 'report built'\n")])({}, Ctx()) == "report built\n"
    assert task(["true"])({}, Ctx()) is None


def test_exit_75_asks_for_a_retry_after_the_tasks_backoff(tmp_path: Path) -> None:
    run = script(tmp_path, "busy.sh", "echo 'database busy' >&2; exit 75\n")

    with pytest.raises(Retry) as retry:
        task([run], backoff=["7s", "1m"])({}, Ctx(attempt=2))
    assert retry.value.delay == 60.0
    assert "exited 75 (EX_TEMPFAIL" in retry.value.reason and "database busy" in retry.value.reason


def test_another_exit_code_fails_with_the_tail_of_stderr(tmp_path: Path) -> None:
    run = script(tmp_path, "fail.sh", "i=0; while [ $i -lt 3000 ]; do echo \"line $i\" >&2; i=$((i+1)); done\n"
                                      "echo 'Fatal: no such report' >&2; exit 3\n")

    with pytest.raises(Fail) as failed:
        task([run])({}, Ctx())
    assert failed.value.reason.startswith(f"{run} exited 3; stderr ends:")
    assert failed.value.reason.endswith("Fatal: no such report") and "line 0\n" not in failed.value.reason
    assert len(failed.value.reason) < 2500


def test_the_first_line_of_the_reason_holds_stderr_for_the_cron_log_and_the_callback(tmp_path: Path) -> None:
    # The runner's log line and a callback's `error` keep the reason's first line only: it must say why.
    run = script(tmp_path, "php.sh", "echo 'PHP Fatal error:  Uncaught RuntimeException: db gone in x.php:3' >&2\n"
                                     "echo 'Stack trace:' >&2; echo '  thrown in x.php on line 3' >&2; exit 255\n")

    with pytest.raises(Fail) as failed:
        task([run])({}, Ctx())
    first = short_reason(f"Fail: {failed.value.reason}")
    assert first == f"Fail: {run} exited 255; stderr ends: PHP Fatal error:  Uncaught RuntimeException: db gone " \
                    "in x.php:3"
    assert failed.value.reason.endswith("thrown in x.php on line 3")


def test_php_style_errors_on_stdout_are_shown_when_stderr_is_empty(tmp_path: Path) -> None:
    with pytest.raises(Fail, match="exited 255; no stderr, stdout starts: PHP Fatal error: oops"):
        task([script(tmp_path, "php.sh", "echo 'PHP Fatal error: oops'; exit 255\n")])({}, Ctx())


def test_a_missing_or_not_executable_command_or_working_directory_fails_at_once(tmp_path: Path) -> None:
    with pytest.raises(Fail, match="command not found: 'no-such-program-pj' does not exist on PATH"):
        task(["no-such-program-pj"])({}, Ctx())
    with pytest.raises(Fail, match=r"command not found: '/nonexistent/report' does not exist$"):
        task(["/nonexistent/report"])({}, Ctx())
    plain = script(tmp_path, "plain.sh", "exit 0\n", executable=False)
    with pytest.raises(Fail, match=f"command is not executable: '{plain}' \\(permission denied\\)"):
        task([plain])({}, Ctx())
    with pytest.raises(Fail, match="working directory '/nonexistent/dir': No such file or directory"):
        task(["true"], cwd="/nonexistent/dir")({}, Ctx())


def test_a_script_whose_interpreter_is_missing_is_named_as_such_by_the_job_and_by_check(tmp_path: Path) -> None:
    """exec() fails with ENOENT for the #! interpreter: the job said the script itself did not exist, and
    `check` passed it. A PHP script's `#!/usr/bin/php` where PHP lives elsewhere, or CRLF line ends."""
    php = tmp_path / "report.php"
    php.write_text("#!/nonexistent/php -q\n<?php echo 1;\n")
    crlf = tmp_path / "crlf.sh"
    crlf.write_bytes(b"#!/bin/sh\r\necho hi\r\n")
    for path in (php, crlf):
        path.chmod(0o755)
    with pytest.raises(Fail, match=f"^cannot start '{php}': its #! interpreter '/nonexistent/php' does not exist$"):
        task([str(php)])({}, Ctx())
    with pytest.raises(Fail, match=r"its #! interpreter '/bin/sh\\r' does not exist \(the script has Windows line"):
        task(["crlf.sh"], env={"PATH": str(tmp_path)})({}, Ctx())
    spec = parse_one("report", {"command": ["./report.php"], "cwd": str(tmp_path)})
    assert isinstance(spec, command.CommandSpec)
    assert checks.command_problems(spec) == [f"command cannot start: '{tmp_path}/./report.php': its #! interpreter "
                                             "'/nonexistent/php' does not exist"]
    fine = script(tmp_path, "fine.sh", "exit 0\n")
    assert task([fine])({}, Ctx()) is None
    assert checks.command_problems(parse_one("fine", {"command": [fine]})) == []  # type: ignore[arg-type]


def test_ten_megabytes_of_stdout_are_cut_never_buffered(tmp_path: Path) -> None:
    run = script(tmp_path, "big.sh", "yes xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx | head -c 10485760\n")
    stdout_cap = 100_000

    finished = process.run([run], {"PATH": os.environ["PATH"]}, None, b"", stdout_cap, time.monotonic() + 60,
                           1.0, lambda: False)
    result = task([run], payload_limit=100_000)({}, Ctx())

    assert finished.returncode == 0 and finished.stdout_size == 10485760 and len(finished.stdout) == stdout_cap
    assert isinstance(result, str) and "[output cut at" in result and len(json.dumps(result)) <= 100_000


def test_ten_megabytes_of_stderr_keep_only_the_tail(tmp_path: Path) -> None:
    run = script(tmp_path, "noisy.sh", "yes eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee | head -c 10485760 >&2; echo END >&2\n")

    finished = process.run([run], {"PATH": os.environ["PATH"]}, None, b"", 10, time.monotonic() + 60, 1.0,
                           lambda: False)

    assert len(finished.stderr_tail) == process.STDERR_TAIL and finished.stderr_tail.endswith(b"END\n")


def test_invalid_utf8_output_is_decoded_with_replacement(tmp_path: Path) -> None:
    run = script(tmp_path, "latin1.sh", "printf 'caf\\351 \\377\\376 ok'\n")

    assert task([run])({}, Ctx()) == "caf\ufffd \ufffd\ufffd ok"


def test_a_large_payload_the_command_never_reads_does_not_block(tmp_path: Path) -> None:
    run = script(tmp_path, "ignore.sh", "echo '{\"ignored\": true}'\n")

    assert task([run])({"blob": "x" * 900_000}, Ctx()) == {"ignored": True}


def test_a_hanging_command_is_stopped_at_its_timeout_with_everything_it_started(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    run = script(tmp_path, "hang.sh", f"sleep 300 & echo $! > {pidfile}; sleep 300\n")

    with pytest.raises(Retry) as retry:
        task([run], timeout="1s", kill_after="5s")({}, Ctx())

    assert "timed out after 1s: its process group was stopped (SIGTERM)" in retry.value.reason
    assert gone_soon(int(pidfile.read_text()))


def test_a_command_that_ignores_sigterm_is_killed_after_kill_after(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    run = script(tmp_path, "stubborn.sh", f"trap '' TERM; sleep 300 & echo $! > {pidfile}; "
                                          "while :; do sleep 1; done\n")

    with pytest.raises(Retry, match=r"stopped \(SIGTERM, then SIGKILL after 0.5s\)"):
        task([run], timeout="1s", kill_after=0.5)({}, Ctx())
    assert gone_soon(int(pidfile.read_text()))


def test_a_child_that_keeps_stdout_open_does_not_hold_the_job_and_is_killed(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    run = script(tmp_path, "fork.sh", f"sleep 300 & echo $! > {pidfile}; echo '{{\"done\": true}}'; exit 0\n")

    assert task([run], timeout="60s")({}, Ctx()) == {"done": True}
    assert gone_soon(int(pidfile.read_text()))


def test_a_cancel_stops_the_command_and_asks_the_runner_to_end_the_job(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    run = script(tmp_path, "long.sh", f"sleep 300 & echo $! > {pidfile}; wait\n")

    with pytest.raises(Retry, match="cancelled by an operator"):
        task([run], timeout="60s")({}, Ctx(cancel_after=0.1))
    assert gone_soon(int(pidfile.read_text()))


def test_a_command_killed_by_a_signal_it_did_not_get_from_us_is_retried(tmp_path: Path) -> None:
    with pytest.raises(Retry, match="was killed by signal SIGSEGV"):
        task([script(tmp_path, "crash.sh", "kill -SEGV $$\n")])({}, Ctx())


def test_no_process_group_is_left_registered(tmp_path: Path) -> None:
    task(["true"])({}, Ctx())
    with pytest.raises(Fail):
        task([script(tmp_path, "f.sh", "exit 1\n")])({}, Ctx())

    assert process._live == set()
