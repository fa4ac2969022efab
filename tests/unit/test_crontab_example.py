"""The shipped crontab.example works when installed as it says: its user can open the log it appends to."""

from __future__ import annotations

import re

from tests.conftest import ROOT


def test_every_log_the_crontab_appends_to_is_created_for_its_user_first() -> None:
    # Installed verbatim on Debian, `>>/var/log/pending-jobs.log` as www-data failed in cron's shell before the
    # run started ("cannot create …: Permission denied"), every minute, and no job ever ran.
    text = (ROOT / "crontab.example").read_text()
    lines = [line for line in text.splitlines() if re.match(r"#? ?(\* ){5}", line)]
    assert lines
    for line in lines:
        user = line.lstrip("# ").split()[5]
        log = re.search(r">>\s*(\S+)", line)
        assert log is not None, line
        assert f"install -o {user} -g {user} -m 0640 /dev/null {log.group(1)}" in text, line
