"""The records made once per job without their dataclass `__init__` (models._frozen) are the same records:
every field set, equal and hashed alike, frozen, printable, picklable and replaceable."""

from __future__ import annotations

import dataclasses
import pickle
from typing import Any

import pytest

from pending_jobs.models import ClaimedJob, Outcome

ROW = (7, "mail.send", "mail", '{"to": 1}', 2, 5, 3, "https://example.test/cb")


def fields(record: Any) -> dict[str, Any]:
    return {field.name: getattr(record, field.name) for field in dataclasses.fields(record)}


def same_record(fast: Any, plain: Any) -> None:
    assert type(fast) is type(plain)
    assert fields(fast) == fields(plain)  # every field is there (a missing one raises AttributeError)
    assert fast == plain
    if all(isinstance(value, str | int | float | type(None) | ClaimedJob) for value in fields(plain).values()):
        assert hash(fast) == hash(plain)  # an Outcome holding a dict result is unhashable either way
    assert repr(fast) == repr(plain)
    assert pickle.loads(pickle.dumps(fast)) == plain
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.kind = "failed"


def test_a_claimed_row_is_the_record_its_constructor_makes() -> None:
    job = ClaimedJob.from_row(ROW, "t" * 32, attempted=1)
    same_record(job, ClaimedJob(7, "mail.send", "mail", '{"to": 1}', 3, 5, 3, "https://example.test/cb", "t" * 32))
    assert dataclasses.replace(job, attempt=4).attempt == 4


def test_a_row_with_text_in_a_number_column_still_carries_its_problem() -> None:
    job = ClaimedJob.from_row((8, "t", "q", "{}", "x", 5, 0, None), "t" * 32)
    assert job.problem == "attempts is 'x', not a whole number"
    assert job.max_attempts == job.attempt == 0


@pytest.mark.parametrize("result", [None, 3, {"sent": 3}, [1, "two"]])
def test_a_success_is_the_outcome_its_constructor_makes(result: Any) -> None:
    job = ClaimedJob.from_row(ROW, "t" * 32)
    outcome = Outcome.success(job, result)
    same_record(outcome, Outcome(job, "succeeded", result=result))
    assert dataclasses.replace(outcome, cancelling=True).cancelling is True
