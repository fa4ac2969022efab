"""The benchmark keeps working: a tiny run on each available database produces numbers and drains everything.

No timing is asserted: the figures depend on the machine and on whatever else runs on it.
"""

from __future__ import annotations

import pytest

from benchmarks import floor, measures
from benchmarks.__main__ import run
from benchmarks.databases import throwaway
from benchmarks.report import Results, table
from tests.conftest import ALL, _require

pytestmark = pytest.mark.slow

TINY = measures.Sizes(jobs=200, rounds=1, enqueue_single=50, callbacks=20, latency_samples=3, backlog=2_000,
                      small_backlog=500, rss_jobs=100)


@pytest.mark.parametrize("backend", ALL)
def test_tiny_benchmark_produces_numbers_and_drains_everything(backend: str) -> None:
    _require(backend)
    [result] = run([backend], TINY)

    assert result.problems == {}, result.problems  # every measure ran; drain and callbacks check their counts
    assert set(result.drain) == {1, 2}
    for drain in result.drain.values():
        assert drain.jobs == TINY.jobs and drain.rate > 0 and drain.wall_rate > 0
    assert result.enqueue is not None
    assert result.enqueue.single > 0 and result.enqueue.concurrent > 0 and result.enqueue.bulk > 0
    assert result.callbacks is not None and result.callbacks.delivered == TINY.callbacks
    assert result.latency is not None and result.latency.samples == TINY.latency_samples
    assert 0 <= result.latency.p50 <= result.latency.p99
    assert result.backlog is not None and result.backlog.claim_small > 0 and result.backlog.rss_bytes > 0
    if backend != "sqlite":  # the raw-SQL floor (benchmarks/floor.py) ran beside the drain
        assert all(result.floor[p] for p in (1, 2))
    assert "n/a" not in _cells(result)


def _cells(result: Results) -> str:
    return table([result]).split("\n", 2)[2]


@pytest.mark.parametrize("backend", [b for b in ALL if b != "sqlite"])
def test_versus_compares_two_checkouts_round_by_round(backend: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`benchmarks.versus` against this checkout itself (its own .venv): both drains finish every job, and
    the per-round ratios are printed beside the best-of figures."""
    _require(backend)
    from benchmarks import versus

    assert versus.main([str(versus.ROOT), "--backends", backend, "--jobs", "300", "--rounds", "2",
                        "--without", "ix_pending_jobs_task"]) == 0
    out = capsys.readouterr().out
    assert out.count(" other: ") == 2 and out.count(" this: ") == 2 and out.count(" this-without: ") == 2
    assert "best of 2: other" in out and "without ix_pending_jobs_task:" in out
    ratios = out.split("this / other per round ")[1].split(";")[0].split(", ")
    assert len(ratios) == 2 and all(float(r) > 0 for r in ratios)
    without = out.split("this-without / other = ")[1].split("per round ")[1].split(",")[:2]
    assert len(without) == 2 and all(float(r) > 0 for r in without)
    # The second round runs the drains in reverse order, so neither checkout always goes first.
    second = [line.split(" round 2 ")[1].split(":")[0] for line in out.splitlines() if " round 2 " in line]
    assert second[:3] == ["this-without", "this", "other"]


@pytest.mark.parametrize("backend", [b for b in ALL if b != "sqlite"])
def test_statements_loop_finishes_every_job_and_times_its_statements(backend: str) -> None:
    """`benchmarks.statements`: the store's claim and completion in a loop, with and without an index."""
    _require(backend)
    from benchmarks import statements

    rate, spent, server = statements.loop(backend, 500, 100)
    assert rate > 0 and spent["UPDATE"] > 0
    assert server is not None and server >= 0  # the server runs here: readable (500 jobs may take under a tick)
    dropped = ("ix_pending_jobs_task", "uq_pending_jobs_idempotency_key")
    rate, spent, _ = statements.loop(backend, 500, 100, without=dropped)
    assert rate > 0 and spent["UPDATE"] > 0


@pytest.mark.parametrize("backend", [b for b in ALL if b != "sqlite"])
def test_drain_price_splits_the_run_into_its_drain_and_its_start_up(backend: str) -> None:
    """`benchmarks.cron --only drain`: the whole process against the floor, and beside it the rate from the
    first claim to the last outcome and what start-up and exit took (whole = jobs / (drain + the rest))."""
    _require(backend)
    from benchmarks import cron

    line = cron.drain_price(backend, jobs=500)
    whole = float(line.split("/s whole process")[0].replace(",", ""))
    drain = float(line.split("first claim to last outcome ")[1].split("/s")[0].replace(",", ""))
    rest = float(line.split("start-up and exit ")[1].split(" s)")[0])
    assert whole > 0 and drain > whole and rest > 0
    assert 500 / (500 / drain + rest) == pytest.approx(whole, rel=0.1)  # the parts add up to the wall time


@pytest.mark.parametrize("backend", [b for b in ALL if b != "sqlite"])
def test_flow_drains_print_each_rounds_ratio_to_no_limits(backend: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`benchmarks.flow --only drain`: the three configurations drain every job in each round, and each
    limited one is printed with its per-round ratios to that round's drain without limits, and their median."""
    _require(backend)
    from benchmarks import flow

    assert flow.main(["--backends", backend, "--jobs", "200", "--rounds", "2", "--only", "drain"]) == 0
    out = capsys.readouterr().out
    assert "best of 2 alternating rounds" in out
    for name in ("task limit elsewhere", "queue cap not reached"):
        [line] = [line for line in out.splitlines() if line.strip().startswith(name)]
        ratios = line.split("per round ")[1].split(", median ")[0].split(", ")
        assert len(ratios) == 2 and all(float(r.rstrip("%")) > 0 for r in ratios)
        assert float(line.split(", median ")[1].rstrip("%")) > 0
    assert "EXPLAIN" not in out and "rate limit" not in out  # part 1 alone


@pytest.mark.parametrize("backend", [b for b in ALL if b != "sqlite"])
def test_flow_claims_print_each_claims_time_and_the_runners_cpu(backend: str,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """`benchmarks.flow --only claims`: each kind of claim with its time, its ratio to the plain claim's and
    the runner's CPU per claim beside the plain claim's; nothing else of the benchmark runs."""
    _require(backend)
    from benchmarks import flow

    assert flow.main(["--backends", backend, "--only", "claims", "--claim-rounds", "5"]) == 0
    out = capsys.readouterr().out
    assert "median of 2 alternating" in out
    for name in ("no limits", "task limit elsewhere", "queue cap not reached", "keys binding"):
        [line] = [line for line in out.splitlines() if line.strip().startswith(name)]
        wall, cpu = float(line.split(" ms")[0].split()[-1]), float(line.split("CPU ")[1].split(" ms")[0])
        assert wall > 0 and cpu > 0
    assert "(+0.00)" in next(line for line in out.splitlines() if line.strip().startswith("no limits"))
    assert "drain of" not in out and "EXPLAIN" not in out and "rate limit" not in out


@pytest.mark.parametrize("backend", [b for b in ALL if b != "sqlite"])
def test_the_floor_finds_its_batch_through_the_primary_key(backend: str) -> None:
    """The floor's table is analyzed once filled: without statistics PostgreSQL planned its UPDATE of a batch by
    id as a scan of the whole table below ≈ 40,000 rows, a floor 30-50 % lower at 20,000 jobs than at 50,000."""
    _require(backend)
    with throwaway(backend, "floorplan", migrated=False) as url:
        floor.setup(url, 20_000)
        conn = floor.connect(url)
        try:
            cur = conn.cursor()
            cur.execute(f"EXPLAIN UPDATE {floor.TABLE} SET status = 'running' WHERE id IN "
                        f"({', '.join(['%s'] * measures.BATCH)})", list(range(1, measures.BATCH + 1)))
            plan = " ".join(str(cell) for row in cur.fetchall() for cell in row)
            conn.rollback()
        finally:
            conn.close()
    assert "PRIMARY" in plan if backend == "mysql" else "pkey" in plan, plan
