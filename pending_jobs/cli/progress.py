"""The live progress bar of `run`, shown only when a person watches (stderr is a terminal)."""

from __future__ import annotations

import sys
from typing import Any

from ..models import RunReport


class Progress:
    """A tqdm bar on stderr; does nothing under cron."""

    def __init__(self) -> None:
        self.bar: Any = None
        if sys.stderr is not None and sys.stderr.isatty():  # None: started with stderr closed (`2>&-`)
            from tqdm import tqdm

            self.bar = tqdm(desc="pending-jobs", unit="job", file=sys.stderr, leave=False)

    def __call__(self, report: RunReport) -> None:
        if self.bar is not None:
            self.bar.n = report.succeeded + report.failed + report.retried + report.cancelled
            self.bar.set_postfix(ok=report.succeeded, failed=report.failed, retried=report.retried, refresh=False)
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
