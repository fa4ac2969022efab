"""Servers the scale suite starts and stops itself: a 3-node Galera cluster, a PostgreSQL primary with a
streaming standby, and a MariaDB listening on a virtual network.

Each keeps its data under a directory of its own in /tmp (pytest's own temporary directories are
private to root, and both mariadbd's SST and postgres run as unprivileged users), on free ports.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pymysql
import pytest
import sqlalchemy as sa

from tests.conftest import free_port
from tests.faults.conftest import INSTALL_DB, MARIADBD, wait_for

GALERA = "/usr/lib/galera/libgalera_smm.so"
PG_BIN = Path("/usr/lib/postgresql/15/bin")


def private_dir(prefix: str, owner: str) -> Path:
    """A new directory in /tmp owned by `owner` (mysql, postgres): theirs to write, nobody else's."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    shutil.chown(path, owner, owner)
    return path


def _admin_engine(url: str) -> sa.Engine:
    return sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)


def _reachable(engine: sa.Engine) -> bool:
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        return True
    except sa.exc.OperationalError:
        return False


# -- Galera ---------------------------------------------------------------------------------------------


class GaleraNode:
    """One mariadbd with the Galera provider, run as the mysql user (rsync SST runs its daemon as that
    user; run as root, rsync would drop to `nobody` and could not write the data directory)."""

    def __init__(self, base: Path, index: int, cluster: list[GaleraNode]) -> None:
        self.index = index
        self.base = base / f"node{index}"
        self.datadir = self.base / "data"
        self.port = free_port()
        self.group_port = free_port()
        self.ist_port = free_port()
        self.sst_port = free_port()
        self.cluster = cluster
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        return f"node{self.index}"

    def install(self) -> None:
        self.base.mkdir()
        shutil.chown(self.base, "mysql", "mysql")
        subprocess.run([INSTALL_DB, "--no-defaults", "--auth-root-authentication-method=normal", "--user=mysql",
                        f"--datadir={self.datadir}", "--skip-test-db"], check=True, capture_output=True, timeout=120)

    def start(self, bootstrap: bool = False) -> None:
        """Start and wait until the node is Synced with its cluster (the first one founds it)."""
        peers = ",".join(f"127.0.0.1:{node.group_port}" for node in self.cluster)
        provider = ";".join([
            f"base_port={self.group_port}", f"gmcast.listen_addr=tcp://127.0.0.1:{self.group_port}",
            f"ist.recv_addr=127.0.0.1:{self.ist_port}", "gcache.size=64M", "pc.recovery=false",
        ])
        args = [
            MARIADBD, "--no-defaults", f"--datadir={self.datadir}", "--user=mysql", f"--port={self.port}",
            "--bind-address=127.0.0.1", f"--socket={self.base / 'mysqld.sock'}",
            f"--pid-file={self.base / 'mysqld.pid'}", f"--log-error={self.base / 'server.log'}",
            "--innodb-buffer-pool-size=64M", "--innodb-flush-log-at-trx-commit=2", "--max-connections=300",
            "--character-set-server=utf8mb4", "--binlog-format=ROW", "--default-storage-engine=InnoDB",
            "--innodb-autoinc-lock-mode=2", "--wsrep-on=ON", f"--wsrep-provider={GALERA}",
            f"--wsrep-cluster-address=gcomm://{peers}", "--wsrep-cluster-name=pending_jobs_scale",
            f"--wsrep-node-name={self.name}", f"--wsrep-node-address=127.0.0.1:{self.group_port}",
            f"--wsrep-provider-options={provider}", "--wsrep-sst-method=rsync",
            f"--wsrep-sst-receive-address=127.0.0.1:{self.sst_port}",
        ]
        if bootstrap:
            args.append("--wsrep-new-cluster")
        with open(self.base / "stdout.log", "ab") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        wait_for(self.synced, 120, f"Galera {self.name} to be Synced")

    def synced(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            pytest.fail(f"Galera {self.name} exited with {self.proc.returncode}; see {self.base / 'server.log'}")
        try:
            return self.status("wsrep_local_state_comment") == "Synced"
        except pymysql.err.OperationalError:
            return False

    def status(self, name: str) -> str:
        """One SHOW GLOBAL STATUS value of this node (answered also outside the primary component)."""
        rows = self._raw("SHOW GLOBAL STATUS LIKE %s", name)
        return str(rows[0][1]) if rows else ""

    def _raw(self, statement: str, *args: Any) -> list[Any]:
        """One statement over a bare PyMySQL connection: SQLAlchemy's first-connect queries fail with
        1047 on a node outside the primary component."""
        conn = pymysql.connect(host="127.0.0.1", port=self.port, user="root", autocommit=True, connect_timeout=5)
        try:
            with conn.cursor() as cursor:
                cursor.execute(statement, args or None)
                return list(cursor.fetchall())
        finally:
            conn.close()

    def url(self, database: str = "", user: str = "runner") -> str:
        return f"mysql+pymysql://{user}@127.0.0.1:{self.port}/{database}"

    def sql(self, statement: str, **params: Any) -> list[Any]:
        """One statement as root, autocommit; its rows."""
        with _admin_engine(self.url("", "root")).connect() as conn:
            result = conn.execute(sa.text(statement), params)
            return list(result) if result.returns_rows else []

    def provider_option(self, option: str) -> None:
        """SET GLOBAL wsrep_provider_options (e.g. gmcast.isolate=1 cuts the node off its cluster)."""
        self._raw("SET GLOBAL wsrep_provider_options = %s", option)

    def kill(self) -> None:
        """SIGKILL: the node vanishes mid-transaction, as a crashed server or a pulled plug would."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(60)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
            self.proc = None


class GaleraCluster:
    """Three local Galera nodes on 127.0.0.1, each on its own ports and data directory."""

    def __init__(self) -> None:
        self.base = private_dir("pj-galera-", "mysql")
        self.nodes: list[GaleraNode] = []
        self.nodes.extend(GaleraNode(self.base, index, self.nodes) for index in (1, 2, 3))

    def start(self) -> None:
        for node in self.nodes:
            node.install()
        # One after the other: a joiner takes a state transfer (rsync) from a Synced donor.
        for position, node in enumerate(self.nodes):
            node.start(bootstrap=position == 0)
        for host in ("localhost", "127.0.0.1"):
            # DDL replicates to every node; no SUPER, no READ ONLY ADMIN.
            self.nodes[0].sql(f"CREATE USER 'runner'@'{host}'")
            self.nodes[0].sql(f"GRANT ALL PRIVILEGES ON `pj\\_%`.* TO 'runner'@'{host}'")

    def alive(self) -> list[GaleraNode]:
        return [node for node in self.nodes if node.proc is not None]

    def hosts_url(self, database: str, *order: int, user: str = "runner") -> str:
        """A URL naming several nodes (`host=` parameters), tried in this order."""
        hosts = "&".join(f"host=127.0.0.1:{self.nodes[i - 1].port}" for i in order)
        return f"mysql+pymysql://{user}@/{database}?{hosts}"

    def conflicts(self) -> dict[str, int]:
        """Certification failures and brute-force aborts so far, and local commits, summed over live nodes."""
        totals = {"cert_failures": 0, "bf_aborts": 0, "commits": 0}
        for node in self.alive():
            totals["cert_failures"] += int(node.status("wsrep_local_cert_failures") or 0)
            totals["bf_aborts"] += int(node.status("wsrep_local_bf_aborts") or 0)
            totals["commits"] += int(node.status("wsrep_local_commits") or 0)
        return totals

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()
        shutil.rmtree(self.base, ignore_errors=True)


# -- PostgreSQL primary and standby --------------------------------------------------------------------------


def as_postgres(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a PostgreSQL program as the postgres user (the server refuses to run as root)."""
    command = ["runuser", "-u", "postgres", "--", *(str(arg) for arg in args)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr or done.stdout}")
    return done


class PgServer:
    """One PostgreSQL data directory and its postmaster, driven with pg_ctl."""

    def __init__(self, base: Path, name: str) -> None:
        self.name = name
        self.datadir = base / name
        self.log = base / f"{name}.log"
        self.port = free_port()
        self.socket_dir = base

    def start(self, *options: str) -> None:
        """Start and wait until it accepts connections; `options` are extra `-c name=value` settings."""
        settings = "".join(f" -c {option}" for option in options)
        as_postgres(PG_BIN / "pg_ctl", "-D", self.datadir, "-l", self.log, "-w", "-t", "60", "start",
                    "-o", f"-p {self.port} -k {self.socket_dir}{settings}")

    def stop(self, mode: str = "fast") -> None:
        """`immediate` is a crash (no checkpoint, connections cut); `fast` a clean shutdown."""
        if (self.datadir / "postmaster.pid").exists():
            as_postgres(PG_BIN / "pg_ctl", "-D", self.datadir, "-m", mode, "-w", "-t", "60", "stop")

    def promote(self) -> None:
        as_postgres(PG_BIN / "pg_ctl", "-D", self.datadir, "-w", "-t", "60", "promote")

    def url(self, database: str = "postgres", user: str = "postgres") -> str:
        return f"postgresql+psycopg://{user}@127.0.0.1:{self.port}/{database}"

    def sql(self, statement: str, database: str = "postgres", **params: Any) -> list[Any]:
        with _admin_engine(self.url(database)).connect() as conn:
            result = conn.execute(sa.text(statement), params)
            return list(result) if result.returns_rows else []

    def answers(self) -> bool:
        return _reachable(_admin_engine(self.url()))


class PgPair:
    """A primary and a streaming standby made from it with `pg_basebackup -R`.

    `synchronous`: the primary's commits wait until the standby has flushed their WAL
    (synchronous_standby_names = '*', synchronous_commit = on).
    """

    def __init__(self, synchronous: bool) -> None:
        self.base = private_dir("pj-pg-", "postgres")
        self.synchronous = synchronous
        self.primary = PgServer(self.base, "primary")
        self.standby = PgServer(self.base, "standby")

    def start(self) -> None:
        as_postgres(PG_BIN / "initdb", "-D", self.primary.datadir, "--auth=trust", "-U", "postgres", "--no-sync")
        settings = [
            "listen_addresses = '127.0.0.1'", "wal_level = replica", "max_wal_senders = 5", "hot_standby = on",
            "fsync = off", "full_page_writes = off", "max_connections = 200", "wal_sender_timeout = 10s",
            "wal_receiver_status_interval = 1s", "shared_buffers = 32MB", "unix_socket_permissions = 0777",
        ]
        with open(self.primary.datadir / "postgresql.conf", "a") as conf:
            conf.write("\n".join(settings) + "\n")
        self.primary.start()
        self.primary.sql("CREATE ROLE runner LOGIN")  # not a superuser: read-only binds it
        as_postgres(PG_BIN / "pg_basebackup", "-h", "127.0.0.1", "-p", str(self.primary.port), "-U", "postgres",
                    "-D", self.standby.datadir, "-R", "-X", "stream", "--no-sync")
        self.standby.start()
        if self.synchronous:  # only now: until a standby is there, every commit would wait for one
            self.primary.sql("ALTER SYSTEM SET synchronous_standby_names = '*'")
            self.primary.sql("ALTER SYSTEM SET synchronous_commit = on")
            self.primary.sql("SELECT pg_reload_conf()")
        wait_for(self.streaming, 60, "the standby to stream from the primary")

    def streaming(self) -> bool:
        rows = self.primary.sql("SELECT sync_state FROM pg_stat_replication WHERE state = 'streaming'")
        wanted = "sync" if self.synchronous else "async"
        return bool(rows) and rows[0][0] == wanted

    def caught_up(self) -> bool:
        """The standby has replayed everything the primary has written so far."""
        target = self.primary.sql("SELECT pg_current_wal_lsn()")[0][0]
        return bool(self.standby.sql("SELECT pg_last_wal_replay_lsn() >= CAST(:lsn AS pg_lsn)", lsn=target)[0][0])

    def detach_standby(self) -> None:
        """Stop shipping WAL to the standby (its walreceiver ends): what a lagging or cut-off standby sees."""
        self.standby.sql("ALTER SYSTEM SET primary_conninfo = ''")
        self.standby.sql("SELECT pg_reload_conf()")
        wait_for(lambda: not self.primary.sql("SELECT 1 FROM pg_stat_replication"), 30, "the walsender to end")

    def hosts_url(self, database: str, user: str = "runner") -> str:
        """libpq's multi-host form: the first of the two that accepts writes."""
        return (f"postgresql+psycopg://{user}@/{database}?host=127.0.0.1:{self.primary.port}"
                f"&host=127.0.0.1:{self.standby.port}&target_session_attrs=read-write")

    def stop(self) -> None:
        for server in (self.standby, self.primary):
            try:
                server.stop("immediate")
            except RuntimeError:
                pass
        shutil.rmtree(self.base, ignore_errors=True)


# -- a MariaDB on a virtual network ------------------------------------------------------------------------


class NetMaria:
    """A throwaway MariaDB listening on one address (the host side of a virtual network)."""

    def __init__(self, address: str) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="pj-netdb-"))
        self.address = address
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        datadir = self.base / "data"
        subprocess.run([INSTALL_DB, "--no-defaults", "--auth-root-authentication-method=normal", "--user=root",
                        f"--datadir={datadir}", "--skip-test-db"], check=True, capture_output=True, timeout=120)
        with open(self.base / "server.log", "ab") as log:
            self.proc = subprocess.Popen(
                [MARIADBD, "--no-defaults", f"--datadir={datadir}", "--user=root", f"--port={self.port}",
                 f"--bind-address={self.address}", f"--socket={self.base / 'mysqld.sock'}",
                 f"--pid-file={self.base / 'mysqld.pid'}", "--skip-log-bin", "--innodb-buffer-pool-size=128M",
                 "--innodb-flush-log-at-trx-commit=2", "--max-connections=300", "--character-set-server=utf8mb4",
                 "--skip-name-resolve"],
                stdout=log, stderr=log,
            )
        wait_for(lambda: _reachable(_admin_engine(self.admin_url())), 60, "the networked MariaDB")
        self.sql("CREATE USER 'runner'@'%'")
        self.sql("GRANT ALL PRIVILEGES ON `pj\\_%`.* TO 'runner'@'%'")

    def url(self, database: str = "", user: str = "runner") -> str:
        return f"mysql+pymysql://{user}@{self.address}:{self.port}/{database}"

    def admin_url(self) -> str:
        """Root over the server's socket (root may log in from localhost only)."""
        return f"mysql+pymysql://root@/?unix_socket={self.base / 'mysqld.sock'}"

    def sql(self, statement: str, **params: Any) -> list[Any]:
        with _admin_engine(self.admin_url()).connect() as conn:
            result = conn.execute(sa.text(statement), params)
            return list(result) if result.returns_rows else []

    def cpu_seconds(self) -> float:
        """User + system CPU the server has used so far (from /proc)."""
        assert self.proc is not None
        return proc_cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)
            self.proc = None
        shutil.rmtree(self.base, ignore_errors=True)


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a live process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(action: Callable[[], Any]) -> float:
    """Seconds `action` took."""
    started = time.monotonic()
    action()
    return time.monotonic() - started
