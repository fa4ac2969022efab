"""Callback pieces without a database: signatures, the forgery guard, the retry policy, warnings."""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import ipaddress
import json
import time
from pathlib import Path

import pytest
from standardwebhooks import Webhook

from pending_jobs import config
from pending_jobs.callbacks import Guard, Refused, Signer, Unresolved, blocked_reason, config_warnings, redact
from pending_jobs.callbacks.policy import classify, next_delay, retry_after
from pending_jobs.callbacks.signing import secret_key, signature
from pending_jobs.callbacks.transport import Response, describe, host_header
from pending_jobs.errors import ConfigError
from tests.receivers import Behaviour, Handler, Received, answer, receiver, sequence

# The Standard Webhooks specification's published HMAC-SHA256 test vector, vendored with the tests.
VECTOR = json.loads((Path(__file__).resolve().parents[1] / "data" / "standard-webhooks.json").read_text())
SECRET_A = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SECRET_B = "whsec_" + "c2Vjb25kLXNlY3JldC1mb3Itcm90YXRpb24="


# -- signing -------------------------------------------------------------------------------------


def test_spec_vector() -> None:
    key = secret_key(VECTOR["secret"])
    got = signature(key, VECTOR["webhook-id"], int(VECTOR["webhook-timestamp"]), VECTOR["body"].encode())
    assert got == VECTOR["webhook-signature"]


def test_reference_verifier_accepts_each_of_two_secrets() -> None:
    body = b'{"type":"job.succeeded"}'
    now = int(dt.datetime.now(dt.UTC).timestamp())
    headers = Signer([SECRET_A, SECRET_B]).headers("msg_1_2", now, body)
    parts = headers["webhook-signature"].split(" ")
    assert len(parts) == 2 and all(p.startswith("v1,") for p in parts)
    for secret in (SECRET_A, SECRET_B):
        assert Webhook(secret).verify(body, headers) == {"type": "job.succeeded"}


def test_no_secret_means_no_signature_header() -> None:
    headers = Signer([]).headers("msg_1_2", 1700000000, b"{}")
    assert headers == {"webhook-id": "msg_1_2", "webhook-timestamp": "1700000000"}


def test_malformed_secret_is_a_config_error_that_does_not_echo_it() -> None:
    with pytest.raises(ConfigError) as raised:
        Signer(["whsec_not*base64!"])
    assert "not*base64" not in str(raised.value)


def test_config_warnings() -> None:
    base = config.load({}, environ={})
    assert any("unsigned" in w for w in config_warnings(base))
    assert config_warnings(base.replace(callback_secret=[SECRET_A])) == []
    bad = config_warnings(base.replace(callback_secret=["whsec_%%%"], callback_allow=["0.0.0.0/0"]))
    assert any("base64" in w for w in bad) and any("every address" in w for w in bad)
    assert all("%%%" not in w for w in bad)


# -- guard ---------------------------------------------------------------------------------------

BLOCKED = {
    "127.0.0.1": "loopback",
    "0.0.0.0": "unspecified",
    "10.1.2.3": "private",
    "172.16.0.1": "private",
    "192.168.1.1": "private",
    "169.254.169.254": "link-local",
    "100.64.0.1": "carrier-grade NAT",
    "224.0.0.1": "multicast",
    "240.0.0.1": "reserved",
    "255.255.255.255": "reserved",
    "::1": "loopback",
    "::": "unspecified",
    "fe80::1": "link-local",
    "fc00::1": "private",
    "fd12:3456::1": "private",
    "ff02::1": "multicast",
    "::ffff:127.0.0.1": "loopback",
    "::ffff:10.0.0.1": "private",
    "::ffff:169.254.169.254": "link-local",
    "2002:7f00:1::": "loopback",  # 6to4 around 127.0.0.1
}


@pytest.mark.parametrize("address", sorted(BLOCKED))
def test_guard_refuses_each_blocked_range(address: str) -> None:
    reason = blocked_reason(ipaddress.ip_address(address))
    assert reason is not None and BLOCKED[address] in reason
    literal = f"[{address}]" if ":" in address else address
    with pytest.raises(Refused, match="refused"):
        Guard().check(f"http://{literal}:8080/hook")


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946", "8.8.8.8"])
def test_guard_passes_public_addresses(address: str) -> None:
    literal = f"[{address}]" if ":" in address else address
    assert Guard().check(f"https://{literal}/hook").ip == address


def test_guard_refuses_a_name_that_resolves_to_a_blocked_address() -> None:
    guard = Guard(resolver=lambda host, port: ["93.184.216.34", "10.0.0.7"])
    with pytest.raises(Refused, match=r"resolves to 10\.0\.0\.7, which is a private address"):
        guard.check("https://hooks.example.test/x")


def test_guard_resolves_once_so_a_rebinding_name_cannot_pass() -> None:
    answers = [["10.0.0.7"], ["93.184.216.34"]]
    calls: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        calls.append(host)
        return answers[len(calls) - 1]

    with pytest.raises(Refused):
        Guard(resolver=resolver).check("https://rebind.example.test/x")
    assert calls == ["rebind.example.test"]  # the second (public) answer was never asked for


def test_guard_allow_list_by_cidr_and_by_name() -> None:
    resolver = lambda host, port: ["10.0.0.7"]  # noqa: E731
    assert Guard(["10.0.0.0/8"], resolver).check("http://internal.test/x").ip == "10.0.0.7"
    assert Guard(["internal.test"], resolver).check("http://internal.test/x").ip == "10.0.0.7"
    mapped = Guard(["127.0.0.1"]).check("http://[::ffff:127.0.0.1]:9/x").ip
    assert ipaddress.ip_address(mapped) == ipaddress.ip_address("::ffff:127.0.0.1")
    with pytest.raises(Refused):
        Guard(["other.test"], resolver).check("http://internal.test/x")


@pytest.mark.parametrize("url", ["ftp://example.com/x", "file:///etc/passwd", "http:///nohost", "gopher://a/"])
def test_guard_refuses_other_schemes_and_hostless_urls(url: str) -> None:
    with pytest.raises(Refused):
        Guard(resolver=lambda host, port: ["93.184.216.34"]).check(url)


def test_unresolvable_name_is_unresolved_with_a_reason() -> None:
    def resolver(host: str, port: int) -> list[str]:
        raise OSError("Name or service not known")

    with pytest.raises(Unresolved, match="cannot resolve"):  # retried on the schedule, not refused
        Guard(resolver=resolver).check("https://nowhere.test/x")


def test_redact_and_host_header_drop_userinfo_and_query() -> None:
    url = "https://user:pw@hooks.example.com:8443/in/x?token=SECRET#frag"
    assert redact(url) == "https://hooks.example.com:8443/in/x"
    assert host_header(url) == "hooks.example.com:8443"
    assert "SECRET" not in describe(ValueError("boom"))



def test_a_broken_answer_is_described_in_the_servers_words() -> None:
    # An operator reading last_error needs to know what was wrong, not only the exception's class.
    assert describe(http.client.HTTPException("got more than 100 headers")) == \
        "HTTPException: got more than 100 headers"
    assert describe(http.client.BadStatusLine("HTTP/1.1 abc\r\n")) == "BadStatusLine: 'HTTP/1.1 abc'"
    assert describe(http.client.LineTooLong("header line")) == \
        "LineTooLong: got more than 65536 bytes when reading header line"
    assert describe(http.client.RemoteDisconnected("Remote end closed connection without response")) == \
        "RemoteDisconnected: Remote end closed connection without response"
    assert describe(ConnectionResetError(104, "Connection reset by peer")) == \
        "ConnectionResetError: [Errno 104] Connection reset by peer"
    # A TLS peer that hung up (a stale keep-alive connection) was "certificate or handshake failed".
    import ssl

    assert describe(ssl.SSLEOFError(8, "EOF occurred in violation of protocol")) == \
        "TLS connection closed by the server"
    assert describe(ssl.SSLEOFError(8, "EOF"), connecting=True) == \
        "TLS connection closed by the server during the handshake"
    assert describe(ssl.SSLError(1, "[SSL: CERTIFICATE_VERIFY_FAILED]")) == "TLS error: certificate or handshake failed"


# -- policy --------------------------------------------------------------------------------------


def _response(code: int | None, headers: dict[str, str] | None = None, error: str | None = None) -> Response:
    return Response(code, headers or {}, b"", error, 1)


def test_policy_outcomes() -> None:
    schedule = [5.0, 300.0]
    assert classify(_response(204), 1, schedule)[0] == "delivered"
    assert classify(_response(410), 1, schedule)[0] == "failed"
    assert classify(_response(302), 1, schedule)[:2] == ("retry", 5.0)
    assert "redirects are not followed" in str(classify(_response(302), 1, schedule)[2])
    assert classify(_response(500), 2, schedule)[:2] == ("retry", 300.0)
    kind, _, error = classify(_response(500), 3, schedule)
    assert kind == "failed" and "giving up" in str(error)
    assert classify(_response(None, error="connect timeout"), 1, schedule)[:2] == ("retry", 5.0)
    assert classify(_response(429, {"Retry-After": "42"}), 1, schedule)[:2] == ("retry", 42.0)
    assert classify(_response(503, {"retry-after": "7"}), 2, schedule)[:2] == ("retry", 7.0)
    assert classify(_response(500, {"Retry-After": "7"}), 1, schedule)[:2] == ("retry", 5.0)  # only 429/503


def test_retry_after_forms() -> None:
    assert retry_after({"Retry-After": "120"}) == 120.0
    assert retry_after({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, now=1445412470.0) == 10.0
    assert retry_after({"Retry-After": "soon"}) is None
    assert retry_after({"Retry-After": "99999999"}) == 86400.0
    assert retry_after({}) is None


def test_default_schedule_is_the_documented_one() -> None:
    schedule = config.load({}, environ={}).callback_schedule
    assert [next_delay(n, schedule) for n in range(1, 9)] == [5, 300, 1800, 7200, 18000, 36000, 36000, None]


# -- TLS: the socket goes to the pinned address, SNI and the certificate check use the name ----------


def test_https_to_pinned_address_sends_the_name_as_sni_and_verifies_the_certificate(tmp_path: Path) -> None:
    import shutil
    import socket
    import ssl
    import subprocess
    import threading

    from pending_jobs.callbacks import Target
    from pending_jobs.callbacks.transport import Transport

    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=hooks.test", "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    names: list[str | None] = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda _sock, name, _ctx: names.append(name)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            context.wrap_socket(conn, server_side=True).close()
        except (ssl.SSLError, OSError):
            pass  # the client refuses our self-signed certificate, as it should

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    target = Target("https", "hooks.test", port, "127.0.0.1")
    response = Transport(1).post(target, f"https://hooks.test:{port}/x", b"{}", {}, 2.0, 3.0)
    thread.join(timeout=5)
    listener.close()
    assert names == ["hooks.test"]
    assert response.status_code is None and response.error is not None and "TLS" in response.error


# -- transport: keep-alive reuse, what is sent, what is never reused -------------------------------


def _ports(behaviour: Behaviour) -> tuple[Behaviour, list[int]]:
    """Wraps a behaviour to record the client port of each request (one port per connection)."""
    ports: list[int] = []

    def respond(handler: Handler, received: Received) -> None:
        ports.append(handler.client_address[1])
        behaviour(handler, received)

    return respond, ports


def test_transport_pins_the_address_sends_the_name_and_reuses_the_connection() -> None:
    from pending_jobs.callbacks import Target
    from pending_jobs.callbacks.transport import Transport

    respond, ports = _ports(answer(200))
    with receiver(respond) as server:
        transport = Transport(2)
        target = Target("http", "hooks.test", server.port, "127.0.0.1")  # hooks.test resolves nowhere
        url = f"http://user:pw@hooks.test:{server.port}/in/x?token=SECRET#frag"
        responses = [transport.post(target, url, b'{"a":1}', {"webhook-id": "msg_1"}, 2.0, 3.0) for _ in range(3)]
        received = list(server.received)
    assert [(r.status_code, r.body, r.error) for r in responses] == [(200, b"ok", None)] * 3
    assert len(set(ports)) == 1  # one keep-alive connection
    first = received[0]
    assert first.path == "/in/x?token=SECRET" and first.body == b'{"a":1}'
    assert first.headers["host"] == f"hooks.test:{server.port}"
    assert first.headers["authorization"] == "Basic dXNlcjpwdw=="  # user info, as requests sent it
    assert first.headers["webhook-id"] == "msg_1" and first.headers["content-length"] == "7"
    elsewhere = Target("http", "elsewhere.test", server.port, "127.0.0.1")  # not the URL's host: never sent
    assert transport.post(elsewhere, url, b"{}", {}, 2.0, 3.0).error == "ValueError"
    assert len(received) == 3


def test_transport_never_reuses_a_connection_whose_body_was_cut_off_or_left_unread() -> None:
    from pending_jobs.callbacks import Target
    from pending_jobs.callbacks.transport import READ_LIMIT, Transport

    def short(handler: Handler, _received: Received) -> None:  # promises 100 bytes, sends 10, hangs up
        handler.send_response(200)
        handler.send_header("Content-Length", "100")
        handler.end_headers()
        handler.wfile.write(b"x" * 10)
        handler.close_connection = True

    respond, ports = _ports(sequence(answer(200, b"y" * (READ_LIMIT + 10)), short, answer(200)))
    with receiver(respond) as server:
        transport = Transport(2)
        target = Target("http", "127.0.0.1", server.port, "127.0.0.1")
        over, cut, fine = (transport.post(target, server.url(), b"{}", {}, 2.0, 3.0) for _ in range(3))
    assert over.status_code == 200 and len(over.body) == READ_LIMIT and over.error is None
    assert cut.status_code == 200 and cut.body == b"x" * 10 and "IncompleteRead" in (cut.error or "")
    assert fine.status_code == 200 and fine.body == b"ok"
    assert len(set(ports)) == 3  # each of the first two connections was closed, not reused


def test_watchdog_fires_an_earlier_deadline_queued_behind_a_later_one() -> None:
    import socket

    from pending_jobs.callbacks.watchdog import Watchdog

    dog = Watchdog()
    (a, _a), (b, b_peer) = socket.socketpair(), socket.socketpair()
    try:
        late = dog.watch(a, 30.0)
        soon = dog.watch(b, 0.2)  # the thread sleeps until `late`'s deadline: it must be woken
        b_peer.settimeout(5.0)
        assert b_peer.recv(1) == b""  # shut down by the watchdog
        assert soon.fired and not late.fired
        dog.stop(late)
    finally:
        for sock in (a, _a, b, b_peer):
            sock.close()


def test_transport_never_reuses_a_connection_after_an_interim_answer() -> None:
    """http.client takes a `103 Early Hints` for the answer: the real 200 stayed unread on the connection,
    which went back to the pool, and the next request (another job's) read it as its own answer."""
    from pending_jobs.callbacks import Target
    from pending_jobs.callbacks.transport import Transport

    def hints_then_ok(handler: Handler, received: Received) -> None:
        handler.wfile.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n")
        handler.wfile.flush()
        time.sleep(0.3)  # the final answer comes after the client is done with the 103: the next request's turn
        body = b'{"answer_for": "%s"}' % received.headers["webhook-id"].encode()
        with contextlib.suppress(OSError):  # the client closed the connection (as it should)
            handler.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            handler.wfile.flush()
        handler.close_connection = True

    def own_answer(handler: Handler, received: Received) -> None:
        answer(200, b'{"answer_for": "%s"}' % received.headers["webhook-id"].encode())(handler, received)

    respond, ports = _ports(sequence(hints_then_ok, own_answer))
    with receiver(respond) as server:
        transport = Transport(2)
        target = Target("http", "127.0.0.1", server.port, "127.0.0.1")
        first, second = (transport.post(target, server.url(), b"{}", {"webhook-id": f"msg_{n}"}, 2.0, 3.0)
                         for n in (1, 2))
    assert first.status_code == 103  # not a final answer: the caller retries it
    assert (second.status_code, second.body) == (200, b'{"answer_for": "msg_2"}')
    assert len(set(ports)) == 2  # the first connection was closed, not reused


REFUSED = b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 8\r\n\r\ntoo big!"


@pytest.mark.parametrize(("early", "tls", "wanted"), [
    # A server's body limit refuses after the headers and closes with the request unread: the write broke
    # (BrokenPipeError, or SSLEOFError: "TLS error: certificate or handshake failed"), and the job was retried.
    (REFUSED, False, (413, b"too big!", None)),
    (REFUSED, True, (413, b"too big!", None)),
    # A 2xx to a request the endpoint did not read is no success; a head the reset cut off ("HTTP/1.1 200",
    # then nothing: the failed write took the reset) reads as complete, and is no answer either.
    (b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n{\"ok\":1}", False, (None, b"", "write failed")),
    (b"HTTP/1.1 200", False, (None, b"", "write failed")),
    (b"HTTP/1.1 413", False, (None, b"", "write failed")),  # no framing: it may be cut off too
])
def test_an_early_refusal_is_the_outcome_and_nothing_else_is(early: bytes, tls: bool, wanted: tuple[object, ...],
                                                              tmp_path: Path) -> None:
    import socket
    import ssl
    import subprocess
    import threading

    from pending_jobs.callbacks import Target
    from pending_jobs.callbacks.transport import Transport

    server_tls = None
    transport = Transport(2)
    if tls:
        cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                        "/CN=hooks.test", "-addext", "subjectAltName=DNS:hooks.test", "-keyout", str(key),
                        "-out", str(cert)], check=True, capture_output=True)
        server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_tls.load_cert_chain(cert, key)
        transport._tls = ssl.create_default_context(cafile=str(cert))  # trusts this test's certificate
    listener = socket.create_server(("127.0.0.1", 0))
    connections: list[int] = []

    def answer_early() -> None:
        for _ in range(2):
            raw, peer = listener.accept()
            connections.append(peer[1])
            with contextlib.suppress(OSError), (server_tls.wrap_socket(raw, server_side=True) if server_tls
                                                else raw) as conn:
                head = b""
                while b"\r\n\r\n" not in head:
                    head += conn.recv(65536)
                conn.sendall(early)
                # As a server's lingering close does: closed at once with the request unread, the kernel sent
                # RST and dropped the answer if it was not on the wire yet (seen once, on a loaded machine).
                time.sleep(0.2)
            # closed with most of the request unread: the kernel answers the client's next writes with RST

    server = threading.Thread(target=answer_early, daemon=True)
    server.start()
    try:
        scheme = "https" if tls else "http"
        port = listener.getsockname()[1]
        target = Target(scheme, "hooks.test", port, "127.0.0.1")
        body = b"x" * 32_000_000  # far more than the socket buffers hold: the write fails
        answers = [transport.post(target, f"{scheme}://hooks.test:{port}/in", body, {}, 2.0, 10.0) for _ in range(2)]
        server.join(10.0)
    finally:
        listener.close()
    for got in answers:
        if wanted[2] == "write failed":  # retried as before, with the write's own error
            assert (got.status_code, got.body) == wanted[:2]
            assert got.error in ("BrokenPipeError: [Errno 32] Broken pipe",
                                 "ConnectionResetError: [Errno 104] Connection reset by peer")
        else:
            assert (got.status_code, got.body, got.error) == wanted
    assert len(set(connections)) == 2  # the cut-off connection was closed, not reused
