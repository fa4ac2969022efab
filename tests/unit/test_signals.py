"""A second SIGTERM stops a run at once, even when its exit path waits on a database that does not answer (a hung
server): the exit path gets HARD_STOP seconds, then the process ends with 130. Real subprocess, real signals."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

from pending_jobs.errors import EXIT_INTERRUPTED

SCRIPT = textwrap.dedent("""
    import time
    from pending_jobs.runner import signals
    signals.HARD_STOP = 0.5
    with signals.stop_on_signals(lambda: print("first", flush=True), 10.0):
        try:  # "ready" inside: the signals may come while it is printed, and the exit path must run then too
            print("ready", flush=True)
            while True:
                time.sleep(0.05)
        finally:
            print("exit path", flush=True)
            while True:  # what a read from a hung database server looks like to the exit path
                time.sleep(0.05)
""")


def test_a_second_signal_ends_the_process_though_its_exit_path_hangs() -> None:
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.stdout.readline() == "first\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.stdout.readline() == "exit path\n"
        assert proc.wait(timeout=60) == EXIT_INTERRUPTED
        assert proc.stderr is not None and "after the second signal: ending now" in proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()
