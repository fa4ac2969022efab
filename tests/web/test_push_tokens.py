"""Push tokens: what verify accepts and refuses, and that the documented recipes (plain PHP, the PHP client,
plain Python) mint tokens the server accepts."""

from __future__ import annotations

import hashlib
import hmac
import os
import subprocess
import sys
import time

import pytest

from pending_jobs.web import tokens
from tests.conftest import ROOT
from tests.system.php import CLIENT, php_binary

SECRET = "push secret for the tests, 32 b."
NOW = 1_700_000_000


def test_a_minted_token_grants_its_job_until_it_expires() -> None:
    token = tokens.mint(SECRET, 42, ttl=600, now=NOW)
    claims = f"v1.42.{NOW + 600}"
    assert token == claims + "." + hmac.new(SECRET.encode(), claims.encode(), hashlib.sha256).hexdigest()
    assert tokens.verify(SECRET, token, 42, now=NOW)
    assert tokens.verify(SECRET, token, 42, now=NOW + 599)
    assert not tokens.verify(SECRET, token, 42, now=NOW + 600)  # expired at `expires`
    assert not tokens.verify(SECRET, token, 43, now=NOW)  # another job
    assert not tokens.verify("another secret of 32 bytes......", token, 42, now=NOW)
    assert tokens.verify(SECRET.encode(), token, 42, now=NOW)  # a text secret is its UTF-8 bytes
    assert tokens.verify(SECRET, tokens.mint(SECRET, 42), 42)  # the current time by default


@pytest.mark.parametrize("change", [
    lambda t: t.replace("v1.", "v2.", 1),
    lambda t: t.replace(".42.", ".042.", 1),
    lambda t: t.replace(".42.", ".43.", 1),
    lambda t: t.replace(f".{NOW + 600}.", f".{NOW + 6000}.", 1),
    lambda t: t[:-1] + ("0" if t[-1] != "0" else "1"),
    lambda t: t.upper(),
    lambda t: t + "0",
    lambda t: t[:-2],
    lambda t: t + ".",
    lambda t: " " + t,
    lambda t: t.replace("v1.", "", 1),
    lambda t: t[:20] + "é" + t[21:],
    lambda t: t + "0" * 200,
    lambda t: "",
])
def test_tampered_and_malformed_tokens_are_refused(change: object) -> None:
    token = tokens.mint(SECRET, 42, ttl=600, now=NOW)
    assert callable(change)
    assert not tokens.verify(SECRET, change(token), 42, now=NOW)


def test_nothing_is_granted_with_an_empty_secret_or_without_a_token() -> None:
    assert not tokens.verify("", tokens.mint(SECRET, 1), 1)
    assert not tokens.verify(SECRET, None, 1)
    for bad in ({"secret": ""}, {"job_id": 0}, {"ttl": 0}):
        with pytest.raises(ValueError):
            tokens.mint(**{"secret": SECRET, "job_id": 1, "ttl": 60, **bad})  # type: ignore[arg-type]


def recipe(command: list[str], *args: str) -> str:
    done = subprocess.run([*command, *args], capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={"PATH": os.environ.get("PATH", ""), "PENDING_JOBS_PUSH_SECRET": SECRET})
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_documented_recipes_mint_tokens_the_server_accepts() -> None:
    php = php_binary()  # skipped without php, a failure when CI=true
    script = (f"require '{CLIENT}/autoload.php'; "
              f"echo PendingJobs\\PushToken::mint('{SECRET}', 42, 600, {NOW}), ' ', "
              f"PendingJobs\\PushToken::mint('{SECRET}', 42);")
    client_fixed, client_now = recipe([php, "-r", script]).split()
    plain_php = recipe([php, str(ROOT / "examples/push/push_token.php")], "42", "600", str(NOW))
    plain_python = recipe([sys.executable, str(ROOT / "examples/push/push_token.py")], "42", "600", str(NOW))
    assert client_fixed == plain_php == plain_python == tokens.mint(SECRET, 42, ttl=600, now=NOW)
    assert tokens.verify(SECRET, plain_php, 42, now=NOW + 1)
    assert tokens.verify(SECRET, client_now, 42) and not tokens.verify(SECRET, client_now, 42, time.time() + 3600)
    now_python = recipe([sys.executable, str(ROOT / "examples/push/push_token.py")], "42")
    assert tokens.verify(SECRET, now_python, 42)
