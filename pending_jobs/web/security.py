"""Who may use the console, and what the browser may do with its pages.

- Authentication: a bearer token or basic auth from the `[web]` settings, compared in constant time.
  Without either the console serves loopback clients only (and `pending-jobs web` refuses to listen
  beyond loopback), so a console started by mistake on 0.0.0.0 shows nothing to the network; and only
  under a loopback name (Host `localhost`, `127.0.0.1`, `[::1]`), so a web page whose own name an
  attacker re-points at 127.0.0.1 (DNS rebinding) is not the console's origin and cannot read or post.
- CSRF: a signed double submit. The browser holds a random cookie (HttpOnly, SameSite=Strict); every
  form carries HMAC(key, cookie) and every POST must send it back (form field `csrf` or the
  `X-CSRF-Token` header). A bearer-token client (a script) is exempt: no browser sends that header by
  itself. Basic auth and loopback trust are ambient, so their POSTs need the token.
- Headers: a strict CSP (no inline script or style, nothing from elsewhere), no framing, no sniffing,
  no referrer; `--read-only` refuses every POST with 403.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from http.cookies import SimpleCookie
from typing import Any

from ..config import WebSettings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CSRF_COOKIE = "pj_csrf"
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


def loopback(host: str) -> bool:
    """Whether `host` (an address or `localhost`) is reachable from this machine only."""
    if host.strip("[]") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def refusal(settings: WebSettings) -> str | None:
    """Why the console must not start with these settings (one line), or None."""
    if not loopback(settings.host) and not settings.auth_configured:
        return (f"refusing to listen on {settings.host}: beyond loopback the console needs authentication "
                "(set [web] token, or basic_user and basic_password)")
    return None


def _equal(given: str, wanted: str) -> bool:
    return hmac.compare_digest(given.encode(), wanted.encode())


def host_name(headers: dict[bytes, bytes]) -> str | None:
    """The name the client asked for: the Host header without its port (None: no Host, HTTP/1.0)."""
    host = headers.get(b"host")
    if host is None:
        return None
    name = host.decode("latin-1").strip()
    if name.startswith("["):  # [::1]:8080
        return name[:name.find("]") + 1] if "]" in name else name
    return name.rpartition(":")[0] if name.count(":") == 1 else name


def actor(settings: WebSettings, headers: dict[bytes, bytes], client: str) -> tuple[str, bool] | None:
    """Who is asking, and whether by bearer token (exempt from CSRF); None when not allowed."""
    scheme, _, given = headers.get(b"authorization", b"").decode("latin-1").strip().partition(" ")
    scheme = scheme.lower()  # the scheme's name is case-insensitive (RFC 9110)
    if settings.token and scheme == "bearer" and _equal(given.strip(), settings.token):
        return f"token@{client}", True
    if settings.basic_user and scheme == "basic":
        try:
            user, _, password = base64.b64decode(given.strip()).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        # Both compared, always: the time taken does not say which one was wrong.
        if _equal(user, settings.basic_user) & _equal(password, settings.basic_password):
            return f"{user}@{client}", False
        return None
    if not settings.auth_configured and loopback(client):
        return f"local@{client}", False
    return None


class Csrf:
    """Signed double-submit tokens under a key made at start (a restart asks forms to be reloaded)."""

    def __init__(self, key: bytes | None = None) -> None:
        self.key = key or secrets.token_bytes(32)

    def token(self, cookie: str) -> str:
        return hmac.new(self.key, cookie.encode(), hashlib.sha256).hexdigest()

    def valid(self, cookie: str | None, given: str | None) -> bool:
        return bool(cookie and given) and _equal(str(given), self.token(str(cookie)))


def cookie_of(headers: dict[bytes, bytes]) -> str | None:
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(headers.get(b"cookie", b"").decode("latin-1"))
    except Exception:  # a malformed Cookie header from a client: treated as none
        return None
    morsel = jar.get(CSRF_COOKIE)
    return morsel.value if morsel is not None and len(morsel.value) == 32 else None


class Guard:
    """ASGI middleware in front of the console: authentication, read-only, the CSRF cookie, headers."""

    def __init__(self, app: ASGIApp, settings: WebSettings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        client = (scope.get("client") or ("unknown", 0))[0]
        asked = host_name(headers)
        if not self.settings.auth_configured and asked is not None and not loopback(asked):
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 4403})
                return
            await _plain(send, 403, (f"refused: without authentication the console answers only as localhost, "
                                     f"127.0.0.1 or [::1], not as {asked[:100]!r} (open it by one of those names, or "
                                     f"set [web] token)\n").encode(), [])
            return
        who = actor(self.settings, headers, client)
        if scope["type"] == "websocket":
            if who is None:
                await send({"type": "websocket.close", "code": 4401})
                return
            await self.app(scope, receive, send)
            return
        if who is None:
            challenge = [(b"www-authenticate", b'Basic realm="pending-jobs", charset="UTF-8"')] \
                if self.settings.basic_user else []
            await _plain(send, 401, b"authentication required\n", challenge)
            return
        if self.settings.read_only and scope["method"] not in ("GET", "HEAD", "OPTIONS"):
            await _plain(send, 403, b"the console is read-only\n", [])
            return
        cookie = cookie_of(headers)
        fresh = None if cookie else secrets.token_hex(16)
        state = scope.setdefault("state", {})
        state.update(actor=who[0], bearer=who[1], csrf_cookie=cookie or fresh)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = list(HEADERS)
                if fresh:
                    extra.append((b"set-cookie", f"{CSRF_COOKIE}={fresh}; Path=/; HttpOnly; SameSite=Strict"
                                  .encode()))
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _plain(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"), *HEADERS, *headers]})
    await send({"type": "http.response.body", "body": body})
