"""Helpers for tests that run real commands: scripts in a temporary folder, and whether a process is gone."""

from __future__ import annotations

import stat
import time
from pathlib import Path


def script(folder: Path, name: str, body: str, executable: bool = True) -> str:
    """A /bin/sh script in `folder`; returns its path."""
    path = folder / name
    path.write_text("#!/bin/sh\n" + body)
    if executable:
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def alive(pid: int) -> bool:
    """Whether `pid` still runs (a zombie waiting for a reaper counts as gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return False
    return fields[0] != "Z"


def gone_soon(pid: int) -> bool:
    """True once `pid` has gone; SIGKILL is delivered asynchronously, so allow the kernel a moment."""
    for _ in range(100):
        if not alive(pid):
            return True
        time.sleep(0.02)
    return False
