"""`python -m benchmarks.push` runs end to end, small: a server process, subscribers, latencies measured."""

from __future__ import annotations

from benchmarks import push


def test_the_push_benchmark_measures_every_subscribers_latency() -> None:
    figures = push.measure("sqlite", subscribers=30, batch=5, poll_interval=0.1)
    assert figures["subscribers"] == 30 and figures["mode"] == "polling every 0.1s"
    assert 0 < figures["p50"] <= figures["p99"] <= figures["max"] < 5
