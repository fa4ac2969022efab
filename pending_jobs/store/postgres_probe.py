"""PostgreSQL: whether the server a connection talks to still answers (the hang watch's question, hang.py).

Asked of that very server, not of the one the URL names now: after a failover (DNS moved, a multi-host URL)
a new connection reaches the new primary, which answers, while the old one, frozen, holds the run's read.
"""

from __future__ import annotations

import threading
from typing import Any

SERVER_SAID = ("FATAL:", "ERROR:")  # libpq's text of an error the server sent while connecting (no SQLSTATE)


def server_of(connection: Any) -> tuple[str, str] | None:
    """(host, port) the driver connection is connected to, or None when it is closed."""
    try:
        info = connection.info
        return (info.hostaddr or info.host, str(info.port))
    except Exception:  # closed, or broken meanwhile
        return None


def answers(connection: Any, wait: float) -> bool:
    """Whether the server `connection` is connected to answers a new connection's SELECT 1 within `wait` seconds
    (an error it sends counts: too many clients, shutting down). In a thread of its own, left behind when it
    does not return: libpq has no read timeout, and a pooler in front may accept the connection and hold the
    SELECT. The new connection has the same parameters (user, password, database, TLS) but one server."""
    try:  # read here: a connection closed meanwhile is not a server that does not answer
        params = {o.keyword.decode(): o.val.decode() for o in connection.pgconn.info if o.val is not None}
        params.update(host=connection.info.host, hostaddr=connection.info.hostaddr or "",
                      port=str(connection.info.port), target_session_attrs="any",
                      connect_timeout=str(max(2, int(wait) + 1)))
    except Exception:
        return True
    if not params["hostaddr"]:
        del params["hostaddr"]  # a unix socket: its folder is the host
    answer: list[bool] = []

    def probe() -> None:
        import psycopg
        from psycopg.conninfo import make_conninfo

        try:
            with psycopg.connect(make_conninfo("", **params), autocommit=True) as probe_connection:
                probe_connection.execute("SELECT 1").fetchall()
            answer.append(True)
        except Exception as error:
            text = str(error)
            answer.append(getattr(error, "sqlstate", None) is not None or any(s in text for s in SERVER_SAID))

    thread = threading.Thread(target=probe, name="pending-jobs-hang-probe", daemon=True)
    thread.start()
    thread.join(wait)
    return bool(answer and answer[0])
