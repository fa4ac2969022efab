"""The audit page pages back in history as the jobs page does: "older →" (keyset on id) keeps the page's size,
and the last page has no such link."""

from __future__ import annotations

import html
import re
from typing import Any

import pytest

from pending_jobs.store import Store
from pending_jobs.store.console import ConsoleStore


def _page(client: Any, url: str) -> tuple[list[str], str | None]:
    """The entries' details shown, and the "older →" link's URL (None when there is none)."""
    text = client.get(url).text
    details = re.findall(r'<td class="detail">([^<]*)</td>', text)
    older = re.search(r'<a href="([^"]*)" id="next-page">older →</a>', text)
    return details, html.unescape(older.group(1)) if older else None


@pytest.mark.parametrize("backend", ["sqlite", "mysql"], indirect=True)
def test_older_pages_back_through_the_audit(console: Any, store: Store) -> None:
    for n in range(1, 8):
        ConsoleStore(store).audit("someone", "retry", detail=f"entry {n}")
    client = console()
    shown, older = _page(client, "/audit?limit=3")
    assert shown == ["entry 7", "entry 6", "entry 5"] and older is not None and "limit=3" in older
    shown, older = _page(client, older)
    assert shown == ["entry 4", "entry 3", "entry 2"] and older is not None
    shown, older = _page(client, older)
    assert shown == ["entry 1"] and older is None
    shown, older = _page(client, "/audit?limit=7")  # exactly a page: no link to an empty one
    assert len(shown) == 7 and older is None
    shown, older = _page(client, "/audit")  # the default page (100) holds them all
    assert len(shown) == 7 and older is None
    assert 'href="/audit">newest</a>' in client.get("/audit?before=3").text
