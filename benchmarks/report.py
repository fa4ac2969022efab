"""The one results table, the machine description, and docs/performance.md."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path

from .databases import LABELS, server_version
from .measures import BATCH, PRODUCERS, Backlog, Callbacks, Drain, Enqueue, Latency

NA = "n/a"


@dataclasses.dataclass
class Results:
    """Everything measured on one backend; a measure that could not run keeps its reason."""

    backend: str
    drain: dict[int, Drain] = dataclasses.field(default_factory=dict)
    floor: dict[int, float | None] = dataclasses.field(default_factory=dict)
    enqueue: Enqueue | None = None
    callbacks: Callbacks | None = None
    latency: Latency | None = None
    backlog: Backlog | None = None
    problems: dict[str, str] = dataclasses.field(default_factory=dict)


def _rate(value: float) -> str:
    return f"{value:,.0f}/s"


def _drain_cell(result: Results, processes: int) -> str:
    drain = result.drain.get(processes)
    if drain is None:
        return result.problems.get(f"drain{processes}", NA)
    floor = result.floor.get(processes)
    if floor:
        return f"{_rate(drain.rate)} = {drain.rate / floor:.0%} of {_rate(floor)}"
    return _rate(drain.rate)


def rows(results: Sequence[Results]) -> list[tuple[str, list[str], str]]:
    """(measure, one cell per backend, target) for the table."""

    def cells(render: object) -> list[str]:
        out = []
        for result in results:
            try:
                out.append(render(result))  # type: ignore[operator]
            except (AssertionError, AttributeError, KeyError, TypeError):  # a measure that did not run: n/a
                out.append(NA)
        return out

    def wall(result: Results, processes: int) -> str:
        return _rate(result.drain[processes].wall_rate)

    def claim(result: Results) -> str:
        b = result.backlog
        assert b is not None
        return f"{b.claim_small * 1000:.1f} ms → {b.claim_large * 1000:.1f} ms ({b.claim_large / b.claim_small:.2f}x)"

    def rss(result: Results) -> str:
        b = result.backlog
        assert b is not None
        return f"{b.rss_bytes / 2**20:.0f} MB"

    def enqueue_single(result: Results) -> str:
        e = result.enqueue
        assert e is not None
        return f"{_rate(e.single)} = {e.single / e.floor:.0%} of {_rate(e.floor)}" if e.floor else _rate(e.single)

    def latency(result: Results) -> str:
        lat = result.latency
        assert lat is not None
        return f"{lat.p50:.2f} s / {lat.p99:.2f} s"

    sizes = next((r.backlog for r in results if r.backlog), None)
    small, large = (f"{sizes.small:,}", f"{sizes.large:,}") if sizes else ("1,000", "1,000,000")
    return [
        ("drain, 1 process (vs raw floor)", [_drain_cell(r, 1) for r in results],
         "≥ 70 % of floor; SQLite ≥ 10,000/s"),
        ("drain, 2 processes (vs raw floor)", [_drain_cell(r, 2) for r in results], ""),
        ("drain wall clock incl. start-up, 1 / 2 proc.",
         cells(lambda r: f"{wall(r, 1)} / {wall(r, 2)}"), ""),
        ("enqueue, single rows, 1 producer (vs driver)", cells(enqueue_single), "≥ 3,000/s"),
        (f"enqueue, single rows, {PRODUCERS} producers at once", cells(lambda r: _rate(r.enqueue.concurrent)), ""),
        ("enqueue, bulk", cells(lambda r: _rate(r.enqueue.bulk)), "≥ 50,000/s"),
        ("callbacks delivered (signed, recorded)", cells(lambda r: _rate(r.callbacks.rate)), "≥ 2,000/s"),
        ("pickup latency, --poll 0.2, p50 / p99", cells(latency), "< 0.5 s / < 1 s"),
        (f"claim of {BATCH}, {small} → {large} pending", cells(claim), "≤ 2x"),
        (f"peak RSS of run, {large}-row backlog", cells(rss), "< 150 MB"),
    ]


def table(results: Sequence[Results]) -> str:
    """A Markdown table: one row per measure, one column per backend."""
    headers = ["measure", *(LABELS[r.backend] for r in results), "target"]
    body = [[name, *values, target] for name, values, target in rows(results)]
    widths = [max(len(row[i]) for row in [headers, *body]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(row) for row in body)])


def notes(results: Sequence[Results], jobs: int, rounds: int) -> list[str]:
    """What the table's figures mean, and anything that could not be measured."""
    best = f"best of {rounds} rounds, drain and floor alternating" if rounds > 1 else "one round"
    out = [
        f"drain: {jobs:,} no-op jobs, batch {BATCH}, `pending-jobs run` subprocesses; rate = jobs / (first "
        "started_at → last finished_at, database clock). The raw floor (benchmarks/floor.py, same "
        f"jobs and batch, same invocation) times its own processes the same way it always does; {best}.",
    ]
    for result in results:
        for measure, problem in result.problems.items():
            out.append(f"{LABELS[result.backend]}: {measure}: {problem}")
    return out


def machine() -> list[str]:
    """CPU model, cores, RAM, Python and database versions."""
    cpu = platform.processor() or platform.machine()
    try:
        for text in Path("/proc/cpuinfo").read_text().splitlines():
            if text.startswith("model name"):
                cpu = text.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = ""
    try:
        for text in Path("/proc/meminfo").read_text().splitlines():
            if text.startswith("MemTotal"):
                ram = f"{int(text.split()[1]) / 2**20:.1f} GiB RAM"
    except OSError:
        pass
    return [
        f"CPU: {cpu}, {os.cpu_count()} cores{', ' + ram if ram else ''}",
        f"OS: {platform.system()} {platform.release()}",
        f"Python {sys.version.split()[0]}",
    ]


def versions(backends: Sequence[str]) -> list[str]:
    """Each database's version string."""
    out = []
    for backend in backends:
        try:
            out.append(server_version(backend))
        except Exception as error:
            out.append(f"{LABELS[backend]}: unknown ({type(error).__name__})")
    return out


def kept(previous: str) -> str | None:
    """The part of an existing docs/performance.md that `document` keeps: from "What the hot path does" on."""
    start = previous.find(HOT_PATH[0])
    return previous[start:] if start >= 0 else None


def document(results: Sequence[Results], jobs: int, rounds: int, command: str, rest: str | None = None) -> str:
    """docs/performance.md: the measured head, then `rest` (what `kept` found), or the sections that start it."""
    backends = [r.backend for r in results]
    lines = [
        "# Performance",
        "",
        f"Measured {dt.date.today().isoformat()} with `{command}` (regenerate with `python -m benchmarks "
        "--write-docs`).",
        "",
        "## Machine",
        "",
        *(f"- {item}" for item in [*machine(), *versions(backends)]),
        "",
        "## Results",
        "",
        table(results),
        "",
        "## Notes",
        "",
        *(f"- {note}" for note in notes(results, jobs, rounds)),
        "- enqueue: `enqueue(engine)` one job per transaction from one process, against the driver's own loop "
        "of INSERT + COMMIT on the same table (no SQLAlchemy, no validation); then `enqueue(engine)` from "
        f"{PRODUCERS} processes at once (each with its own engine, as a web tier's workers), rate from the "
        "first one's start to the last one's end; then `enqueue_many()` of the drain's job count in one call.",
        "- callbacks: finished jobs whose callback URL is a local keep-alive HTTP/1.1 receiver; signed "
        "(`PENDING_JOBS_CALLBACK_SECRET`), every attempt recorded; rate between the first and last request "
        "received.",
        "- pickup latency: while `run --poll 0.2` waits, jobs are enqueued one at a time at irregular moments; "
        "the handler reports the time from just before the INSERT to its own start.",
        f"- claim: median time of `Store.claim` of {BATCH} jobs (12 claims, the first two not counted) with the "
        "small and then the large number of pending rows.",
        "- RSS: ru_maxrss of a `run --max-jobs` subprocess on the large backlog (os.wait4).",
        "- Other work on the same machine makes figures noisy; ratios are taken within one invocation.",
        "",
    ]
    return "\n".join(lines) + "\n" + (rest if rest is not None else "\n".join([*HOT_PATH, *MISSES]))


HOT_PATH = [
    "## What the hot path does",
    "",
    "- One claim transaction per batch: `SELECT … FOR UPDATE SKIP LOCKED` of the claim columns then one "
    "guarded UPDATE by id (MySQL/MariaDB), `UPDATE … RETURNING` (PostgreSQL, SQLite), under READ COMMITTED, "
    "with statements built once per store and compiled once by SQLAlchemy Core.",
    "- Handler threads are fed from a claim made as soon as the first job of the previous one finishes.",
    "- Outcomes are written in batches, one guarded UPDATE per outcome kind per claim, by a recorder thread "
    "on its own connection while the main thread makes the next claim (inline on SQLite, which has one "
    "writer). On this machine that took one MariaDB process from ≈ 64 % to ≈ 80 % of the floor, and "
    "PostgreSQL from ≈ 87 % to ≈ 100 % (median of alternating runs, `pending_jobs/recorder.py`).",
    "- A pooled connection is pinged only after a second idle, and rolled back on its return only when a "
    "transaction may be open: the pool's own reset sent a ROLLBACK after every committed claim, completion "
    "and enqueue.",
    "- Callbacks go out over `http.client` keep-alive connections pinned to the checked address (≈ 110 µs "
    "of CPU per signed POST, against ≈ 480 µs through requests), from plain worker threads, with attempts "
    "recorded in one multi-row INSERT per batch in a background flush.",
    "",
]

MISSES = [
    "## Where a target is missed, and why",
    "",
    "Profiles and side measurements taken on this machine while building the hot path (py-spy, cProfile, "
    "and bare DB-API loops):",
    "",
    "- **Single-row enqueue from one producer (≈ 1,400-2,000/s on MariaDB and PostgreSQL).** Each "
    "`enqueue(engine)` is one INSERT and one COMMIT, and the COMMIT waits for the log flush. The driver "
    "figure in the table is a bare DB-API loop doing the same on the same table, with no SQLAlchemy and no "
    "checks: 1,800-3,000/s across runs here, so 3,000/s from one connection is at or above what these "
    "servers allow on this machine. `enqueue` reaches 62-97 % of the driver; the rest is SQLAlchemy's "
    "execution path, ≈ 130 µs of CPU per call (cProfile). A web "
    "tier's producers run at once and the servers' group commit serves them together: the 4-producer row "
    "shows what the table takes in then, on the same two cores the four processes share with the database.",
    "- **Bulk enqueue (38,000-40,000 rows/s on MariaDB, 37,000-51,000 on PostgreSQL, 43,000-46,000 on "
    "SQLite, across runs).** On MariaDB "
    "0.36 s of the 0.52 s for 20,000 rows is Python: SQLAlchemy's multi-row rendering with PyMySQL escaping "
    "every value, reading back 20,000 RETURNING ids, and validation (each payload is serialised to check "
    "its size). A bare PyMySQL `executemany` of the same rows reaches ≈ 113,000 rows/s but returns no ids; "
    "with RETURNING, PyMySQL sends one statement per row (≈ 7,300 rows/s). Serialising each payload once "
    "instead of twice measured 2-6 %, within the noise, and was left out.",
    "",
]
