"""The declared-task benchmark keeps working: tiny drains of each kind produce rates and drain everything.

No timing is asserted: the figures depend on the machine and on whatever else runs on it.
"""

from __future__ import annotations

import pytest

from benchmarks import ceilings, declared
from tests.conftest import ALL, SERVERS, _require

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("backend", ALL)
def test_each_kind_drains_and_reports_a_rate(backend: str) -> None:
    _require(backend)

    sql = declared.sql_drain(backend, 60)  # raises unless every job succeeded
    http = declared.http_drain(backend, 60)
    [true] = declared.commands(backend, 12)[:1]

    assert sql.jobs == http.jobs == 60 and sql.rate > 0 and http.rate > 0
    assert true.drain.jobs == 12 and true.drain.rate > 0 and true.bare > 0


@pytest.mark.parametrize("backend", SERVERS)
def test_the_bare_ceilings_run(backend: str) -> None:
    _require(backend)

    rates = declared.sql_bounds(backend, 300)

    assert len(rates) == len(declared.BOUNDS) and all(rate > 0 for rate in rates)


@pytest.mark.parametrize("backend", SERVERS)
@pytest.mark.parametrize("design", ceilings.DESIGNS)
def test_the_status_change_ceilings_run_every_job_once(backend: str, design: str) -> None:
    _require(backend)

    rate = ceilings.ceiling(backend, 250, design)  # raises unless 250 jobs finished and 250 rows were inserted

    assert rate > 0
