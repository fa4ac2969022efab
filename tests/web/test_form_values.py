"""A form posts back exactly the values the page was made from: a queue name or a search text holding a
character shown as an escape (a no-break space, an ideographic space) must reach the action unchanged."""

from __future__ import annotations

import html
import re
import urllib.parse
from typing import Any

import sqlalchemy as sa

import pending_jobs
from pending_jobs.store import OpsStore, Store

QUEUE = "ventes\u00a0fr"  # a no-break space: str.isprintable() is False, the page shows it as \xa0
ERROR = "Erreur\u00a0: délai dépassé"  # French puts a no-break space before the colon


def _form(page: str, action: str, around: str = "") -> dict[str, str]:
    """The fields a browser submits for the first form posting to /actions/`action` (inside a table row
    containing `around`, when given)."""
    scope = page
    if around:
        scope = next(row for row in re.findall(r"<tr[ >].*?</tr>", page, re.S) if around in row)
    found = re.search(rf'<form method="post" action="/actions/{action}"[^>]*>(.*?)</form>', scope, re.S)
    assert found, f"no {action} form"
    return {name: html.unescape(value) for name, value in re.findall(r'name="(\w+)" value="([^"]*)"', found.group(1))}


def test_the_pause_and_resume_buttons_name_the_queue_of_their_row(console: Any, store: Store,
                                                                  engine: sa.Engine) -> None:
    with engine.begin() as conn:
        pending_jobs.enqueue(conn, "report", {}, queue=QUEUE)
    client = console()
    fields = _form(client.get("/").text, "pause", around="ventes")
    assert fields["queue"] == QUEUE
    assert client.post("/actions/pause", data=fields).status_code == 303
    assert [p.queue for p in OpsStore(store).paused()] == [QUEUE]
    fields = _form(client.get("/").text, "resume", around="ventes")
    assert client.post("/actions/resume", data=fields).status_code == 303
    assert OpsStore(store).paused() == []


def test_a_bulk_action_confirmed_acts_on_the_jobs_it_counted(console: Any, engine: sa.Engine) -> None:
    with engine.begin() as conn:
        ids = [pending_jobs.enqueue(conn, "report", {"n": n}, queue=QUEUE) for n in range(3)]
        conn.execute(sa.text("UPDATE pending_jobs SET status = 'failed', last_error = :e, finished_at = updated_at"),
                     {"e": ERROR})
    client = console()
    query = {"action": "retry", "queue": QUEUE, "q": "Erreur\u00a0: délai"}
    confirm = client.get("/jobs/bulk", params=query).text
    assert "<strong>3</strong> of the 3 matching job(s)" in confirm
    found = re.search(r'<form method="post" action="/actions/bulk-retry">(.*?)</form>', confirm, re.S)
    assert found
    fields = {n: html.unescape(v) for n, v in re.findall(r'name="(\w+)" value="([^"]*)"', found.group(1))}
    assert (fields["queue"], fields["q"]) == (QUEUE, query["q"])
    answer = client.post("/actions/bulk-retry", data=fields)
    assert answer.status_code == 303
    assert urllib.parse.parse_qs(urllib.parse.urlsplit(answer.headers["location"]).query)["msg"] == ["3 job(s) retried"]
    with engine.connect() as conn:
        statuses = {s for (s,) in conn.execute(sa.text("SELECT status FROM pending_jobs WHERE id IN (:a, :b, :c)"),
                                               dict(zip("abc", ids, strict=True)))}
    assert statuses == {"pending"}


def test_the_filter_form_keeps_the_text_searched(console: Any) -> None:
    page = console().get("/jobs", params={"queue": QUEUE, "q": ERROR}).text
    values = {n: html.unescape(v) for n, v in re.findall(r'<input name="(\w+)"[^>]* value="([^"]*)"', page)}
    assert (values["queue"], values["q"]) == (QUEUE, ERROR)
