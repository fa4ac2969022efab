"""`python -m benchmarks --write-docs` rewrites the measured head of docs/performance.md and keeps the rest."""

from __future__ import annotations

from pathlib import Path

from benchmarks.report import HOT_PATH, MISSES, NA, Results, document, kept, table

DOC = Path(__file__).resolve().parents[2] / "docs" / "performance.md"


def test_the_hand_written_sections_survive_a_rewrite() -> None:
    previous = DOC.read_text()

    rewritten = document([Results("sqlite")], 20_000, 3, "python -m benchmarks", kept(previous))

    assert rewritten.endswith(previous[previous.index(HOT_PATH[0]):])  # every section after the head, as it was
    assert "## Declared `sql` tasks" in rewritten and "## Console" in rewritten
    assert rewritten.startswith("# Performance\n") and "## Results" in rewritten


def test_a_new_document_starts_the_hand_written_sections() -> None:
    rewritten = document([Results("sqlite")], 20_000, 3, "python -m benchmarks", kept(""))

    assert rewritten.endswith("\n".join([*HOT_PATH, *MISSES]))


def test_a_measure_that_did_not_run_is_shown_as_not_available() -> None:
    shown = table([Results("mysql", problems={"enqueue": "OperationalError: gone"})])  # raised before: an assert

    assert "enqueue, bulk" in shown and NA in shown.split("enqueue, bulk")[1].split("\n")[0]
