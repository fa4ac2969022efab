"""`python -m benchmarks.scaling` keeps working: a tiny run per database drains everything and gives figures.

No timing is asserted: the figures depend on the machine and on whatever else runs on it.
"""

from __future__ import annotations

import os

import pytest

from benchmarks import scaling
from tests.conftest import SERVERS, _require

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("backend", SERVERS)
def test_tiny_scaling_run_drains_everything_and_accounts_cpu(backend: str) -> None:
    _require(backend)
    points = scaling.measure(backend, [1, 2], 60, "bench.ledger")

    assert [p.runners for p in points] == [1, 2]
    for point in points:  # drain() raises when a job is left undone or a runner exits non-zero
        assert point.jobs == 60 and point.rate > 0 and point.runner_cpu > 0
        assert point.database_cpu > 0  # the server runs on this machine, its pid file is readable
        assert 0 < point.machine_busy <= 1
    table = scaling.table(points)
    assert table.count("\n") == 3 and "| 2 |" in table


def test_cpu_is_read_finer_than_a_clock_tick() -> None:
    # A 60-job PostgreSQL run once spent less than one tick (10 ms) in the server and read 0.0.
    seconds = scaling._cpu(os.getpid())
    ticks = seconds * os.sysconf("SC_CLK_TCK")
    assert seconds > 0 and abs(ticks - round(ticks)) > 1e-6
