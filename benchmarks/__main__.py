"""`python -m benchmarks`: measure pending-jobs on each database and print one table."""

from __future__ import annotations

import argparse
import functools
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import measures
from .databases import LABELS, reachable
from .report import Results, document, kept, notes, table

DOCS = Path(__file__).resolve().parent.parent / "docs" / "performance.md"


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("--jobs", type=int, default=20_000, help="jobs drained (and bulk-enqueued), default 20,000")
    p.add_argument("--backends", default="sqlite,mysql,postgresql",
                   help="comma-separated: sqlite, mysql (MariaDB too), postgresql")
    p.add_argument("--quick", action="store_true",
                   help="small sizes for every measure but the drain (--jobs); under a minute")
    p.add_argument("--write-docs", action="store_true", help=f"rewrite {DOCS.relative_to(DOCS.parent.parent)}")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    return p.parse_args(argv)


def run(backends: Sequence[str], sizes: measures.Sizes, progress: Callable[[str], None] | None = None) -> list[Results]:
    """Every measure on every backend; a measure that fails is noted and the rest go on."""
    return [measure(backend, sizes, progress) for backend in backends]


def measure(backend: str, sizes: measures.Sizes, progress: Callable[[str], None] | None = None) -> Results:
    """Every measure on one backend."""
    result = Results(backend)
    problem = reachable(backend)
    if problem:
        result.problems["all"] = f"not reachable ({problem})"
        return result

    def step(name: str, work: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        try:
            value = work()
        except Exception as error:
            result.problems[name] = f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"
            value = None
        if progress:
            progress(f"{LABELS[backend]}: {name} {time.perf_counter() - started:.1f}s")
        return value

    for processes in (1, 2):
        # Alternating rounds, best of each: a moment of other load on the machine then costs one
        # round of one side, not the ratio.
        for _ in range(sizes.rounds):
            drain = step(f"drain{processes}", functools.partial(measures.drain, backend, sizes.jobs, processes))
            if drain is not None and (processes not in result.drain or drain.rate > result.drain[processes].rate):
                result.drain[processes] = drain
            floor = step(f"floor{processes}", functools.partial(measures.raw_floor, backend, sizes.jobs, processes))
            if floor is not None:
                result.floor[processes] = max(floor, result.floor.get(processes) or 0.0)
    result.enqueue = step("enqueue", lambda: measures.enqueue_rates(backend, sizes.enqueue_single, sizes.jobs))
    result.callbacks = step("callbacks", lambda: measures.callbacks(backend, sizes.callbacks))
    result.latency = step("latency", lambda: measures.pickup_latency(backend, sizes.latency_samples))
    result.backlog = step("backlog", lambda: measures.backlog(backend, sizes.small_backlog, sizes.backlog,
                                                              sizes.rss_jobs))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Measure, print the table and notes, and optionally rewrite docs/performance.md."""
    args = parse(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in backends if b not in LABELS]
    if unknown:
        print(f"unknown backend(s): {', '.join(unknown)} (use {', '.join(LABELS)})", file=sys.stderr)
        return 2
    sizes = measures.Sizes.quick(args.jobs) if args.quick else measures.Sizes(jobs=args.jobs)

    def progress(line: str) -> None:
        if not args.quiet:
            print(line, file=sys.stderr, flush=True)

    results = run(backends, sizes, progress)
    print(table(results))
    print()
    for note in notes(results, sizes.jobs, sizes.rounds):
        print(f"- {note}")
    if args.write_docs:
        command = "python -m benchmarks " + shlex.join(a for a in (argv if argv is not None else sys.argv[1:])
                                                      if a != "--write-docs")
        DOCS.parent.mkdir(exist_ok=True)
        # Only the measured head (machine, results, notes) is rewritten: the sections from "What the hot path does"
        # on hold profiles and other benchmarks' figures written by hand, and are kept as they are.
        previous = DOCS.read_text() if DOCS.exists() else ""
        DOCS.write_text(document(results, sizes.jobs, sizes.rounds, command.strip(), kept(previous)))
        print(f"\nwrote {DOCS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
