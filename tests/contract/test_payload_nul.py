"""The text `\\u0000` (a backslash, then u0000) is stored and run on every database, PostgreSQL's jsonb
included, which refuses only a real NUL."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from pending_jobs import enqueue
from pending_jobs.store import Store

ESCAPE_TEXTS = {"re": "\\u0000", "path": "C:\\u0000dir", "even": "\\\\u0000", "key \\u0000": True}


def test_the_text_of_a_nul_escape_is_stored_and_echoed(engine: sa.Engine, store: Store, run: Any) -> None:
    job_id = enqueue(engine, "echo", ESCAPE_TEXTS)
    assert run().succeeded == 1  # the result holds the same text: stored too, even in jsonb
    job = store.get(job_id)
    assert job is not None and job.payload == ESCAPE_TEXTS and job.result["payload"] == ESCAPE_TEXTS


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_postgresql_jsonb_refuses_only_a_real_nul(engine: sa.Engine) -> None:
    with engine.begin() as conn:  # the reason enqueue refuses a NUL: jsonb does, and its text it does not
        assert conn.execute(sa.text("SELECT CAST(:t AS jsonb) ->> 're'"), {"t": '{"re":"\\\\u0000"}'}).scalar() \
            == "\\u0000"
    with pytest.raises(sa.exc.DataError), engine.begin() as conn:
        conn.execute(sa.text("SELECT CAST(:t AS jsonb)"), {"t": '{"re":"\\u0000"}'})
    with pytest.raises(ValueError, match="contains a NUL character"):
        enqueue(engine, "echo", {"re": "a\x00"})
