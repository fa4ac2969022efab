"""The shipped systemd unit stops the service as the README says: running jobs get their grace.

systemd's default KillMode=control-group sends SIGTERM to every process of the service at once, so a
declared command or a process-isolated handler died at `systemctl stop`/`restart` (every deploy) instead
of finishing within the grace, and its job spent an attempt. Reproduced by signalling the runner and
its command together, as systemd does: `five.sh was killed by signal SIGTERM`, the job retried (failed
with max_attempts = 1), where SIGTERM to the runner alone let it succeed.
"""

from __future__ import annotations

import configparser
import re

from tests.conftest import ROOT

UNIT = ROOT / "docs" / "systemd" / "pending-jobs.service"


def _service() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    parser.read_string(UNIT.read_text())
    return parser["Service"]


def test_only_the_runner_gets_sigterm_so_commands_and_isolated_handlers_keep_their_grace() -> None:
    assert _service().get("KillMode") == "mixed"


def test_the_stop_timeout_leaves_room_for_the_default_grace_and_the_runs_exit() -> None:
    seconds = re.fullmatch(r"(\d+)s?", _service()["TimeoutStopSec"])
    assert seconds is not None and int(seconds.group(1)) > 10 + 5  # grace 10 s, then 5 s to record the run
