"""A filter's ages (since, until) in the console's links and forms read back as the same number: the bulk
confirmation's form and the next page's link must select the jobs that were counted and shown."""

from __future__ import annotations

from typing import Any

import pytest

from pending_jobs.web import views


@pytest.mark.parametrize("since", ["1234567", "27778h", "0.1234567", "1e-300"])
def test_an_age_in_the_links_and_forms_reads_back_as_the_same_number(console: Any, since: str) -> None:
    f = views.filter_from({"since": since, "until": since})
    assert views.filter_from(views.filter_params(f)) == f
    page = console().get("/jobs/bulk", params={"action": "cancel", "since": since}).text
    assert f'name="since" value="{views.filter_params(f)["since"]}"' in page
    assert float(views.filter_params(f)["since"]) == f.since
