"""The pytest plugin of pending-jobs (registered as an entry point): the `job_tester` fixture.

Loaded by every pytest session where pending-jobs is installed, so it imports nothing until a test asks
for the fixture.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .testing import JobTester


@pytest.fixture
def job_tester() -> Iterator[JobTester]:
    """A JobTester on a fresh SQLite database in a temporary folder, with every `@task` handler imported
    so far; removed after the test. Tests on their own database build `JobTester(url)` themselves."""
    from .testing import JobTester

    tester = JobTester()
    try:
        yield tester
    finally:
        tester.close()
