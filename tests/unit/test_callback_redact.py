"""redact(): whatever the input, the text kept for logs and the attempts table holds no secret."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pending_jobs.callbacks.guard import redact

USER, PASSWORD, QUERY = "ZQUSERZQ", "ZQPASSZQ", "ZQTOKENZQ"
# Every character that can end or split a URL's parts; no 'z' or 'q', so no part can spell a marker.
NOISE = st.text(alphabet="abcxy019-._~!$&'()*+,;=:/?#@[]%\\ \t\n", max_size=6)
SCHEMES = st.sampled_from(["http://", "https://", "HTTPS://", "http:/", "https:", "http:///", "ftp://", "//", ""])
HOSTS = st.sampled_from(["hooks.example.com", "hooks.example.com:8443", "[::1]:80", "10.0.0.1", "", "h:0",
                         "host:99999", "[::1", "example.com."])
TAILS = st.sampled_from(["", "/", "/in/x", "/a@b", "?t=1", "#f", "/x?e=a@b.c#top", ";p", "/%40"])


@given(scheme=SCHEMES, before=NOISE, middle=NOISE, after=NOISE, host=HOSTS, tail=TAILS,
       with_password=st.booleans())
@settings(max_examples=400, deadline=None)
@example(scheme="https:/", before="alice", middle="", after="", host="host", tail="/x", with_password=True)
@example(scheme="http://", before="", middle="", after="/ss", host="host", tail="/x", with_password=True)
@example(scheme="http://", before="", middle="", after="", host="host", tail="/x", with_password=True)
@example(scheme="", before="", middle="", after="", host="host", tail="/x", with_password=True)
def test_user_info_never_survives(scheme: str, before: str, middle: str, after: str, host: str, tail: str,
                                  with_password: bool) -> None:
    userinfo = f"{before}{USER}{middle}" + (f":12{PASSWORD}{after}" if with_password else after)
    url = f"{scheme}{userinfo}@{host}{tail}"
    redacted = redact(url).lower()
    assert USER.lower() not in redacted and PASSWORD.lower() not in redacted


@given(scheme=SCHEMES, host=HOSTS, path=NOISE, tail=NOISE)
@settings(max_examples=300, deadline=None)
def test_query_and_fragment_never_survive(scheme: str, host: str, path: str, tail: str) -> None:
    for url in (f"{scheme}{host}/{path}?{QUERY}{tail}", f"{scheme}{host}/{path}#{QUERY}{tail}"):
        assert QUERY.lower() not in redact(url).lower()


@given(st.text(max_size=40))
@settings(max_examples=300, deadline=None)
def test_never_raises(url: str) -> None:
    assert isinstance(redact(url), str)


@pytest.mark.parametrize(("url", "expected"), [
    ("https://user:pw@hooks.example.com:8443/in/x?token=SECRET#frag", "https://hooks.example.com:8443/in/x"),
    ("http://hooks.example.com/in", "http://hooks.example.com/in"),
    ("http://hooks.example.com:0/in", "http://hooks.example.com:0/in"),  # kept as written: the guard refuses it
    ("HTTPS://Hooks.Example.com", "https://hooks.example.com"),
    ("http://[::1]:8080/x", "http://[::1]:8080/x"),
    ("ftp://files.example.com/x", "ftp://files.example.com/x"),
    ("https:/alice:S3CRET@host/x", "<malformed URL>"),  # one slash: no authority at all
    ("alice:S3CRET@host/x", "<malformed URL>"),  # "alice" is read as the scheme
    ("http://example.com:99999/hook", "<malformed URL>"),
    ("http://[::1/x", "<malformed URL>"),
    ("http://u:p/ss@host/x", "<malformed URL>"),
    ("http:///x", "<malformed URL>"),
    ("http://alice:123/S3CRET@host/x", "<URL hidden: '@' after its host>"),  # "alice" would be the host
    ("http://alice:123?S3CRET@host/x", "<URL hidden: '@' after its host>"),
    ("http://alice:123#S3CRET@host/x", "<URL hidden: '@' after its host>"),
    ("https://hooks.example.com/x?email=a@b.example", "<URL hidden: '@' after its host>"),
])
def test_redacted_forms(url: str, expected: str) -> None:
    assert redact(url) == expected
