"""Migrations: no drift from the declared schema, reversible, and never touching the host's Alembic."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from pending_jobs import migrate
from pending_jobs.schema import metadata
from pending_jobs.store import create_engine
from tests.conftest import ROOT, cli


def _diff(engine: sa.Engine) -> list[object]:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True,
                                                         "include_object": _ours})
        return list(compare_metadata(context, metadata))


def _ours(obj: object, name: str | None, type_: str, reflected: bool, compare_to: object) -> bool:
    if type_ == "table":
        return name is not None and name.startswith("pending_job") and name != migrate.VERSION_TABLE
    # Alembic cannot compare an index with a DESC column; _check_claim_index does those.
    return not (type_ == "index" and name in (CLAIM_INDEX, CONCURRENCY_INDEX))


CLAIM_INDEX = "ix_pending_jobs_claim"
CONCURRENCY_INDEX = "ix_pending_jobs_concurrency"


def _check_claim_index(engine: sa.Engine) -> None:
    _check_concurrency_index(engine)
    index = next(i for i in sa.inspect(engine).get_indexes("pending_jobs") if i["name"] == CLAIM_INDEX)
    assert index["column_names"] == ["status", "queue", "priority", "run_at", "id"]
    if engine.dialect.name == "postgresql":
        assert index.get("column_sorting") == {"priority": ("desc",)}
    if engine.dialect.name in ("mysql", "mariadb"):
        with engine.connect() as conn:
            order = conn.execute(sa.text(f"SHOW INDEX FROM pending_jobs WHERE Key_name = '{CLAIM_INDEX}'")).mappings()
            assert [r["Collation"] for r in order] == ["A", "A", "D", "A", "A"]


def _check_concurrency_index(engine: sa.Engine) -> None:
    index = next(i for i in sa.inspect(engine).get_indexes("pending_jobs") if i["name"] == CONCURRENCY_INDEX)
    assert index["column_names"] == ["concurrency_key", "status", "priority", "run_at", "id"]
    if engine.dialect.name == "postgresql":
        assert index.get("column_sorting") == {"priority": ("desc",)}
        assert "concurrency_key IS NOT NULL" in str(index.get("dialect_options", {}).get("postgresql_where"))
    if engine.dialect.name in ("mysql", "mariadb"):
        with engine.connect() as conn:
            order = conn.execute(sa.text(f"SHOW INDEX FROM pending_jobs WHERE Key_name = '{CONCURRENCY_INDEX}'"))
            assert [r["Collation"] for r in order.mappings()] == ["A", "A", "D", "A", "A"]


def test_upgrade_matches_schema_downgrade_and_upgrade_again(empty_url: str) -> None:
    engine = create_engine(empty_url)
    with engine.begin() as conn:  # the host application's own Alembic history
        conn.execute(sa.text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)"))
        conn.execute(sa.text("INSERT INTO alembic_version VALUES ('host_app_rev_1')"))

    migrate.upgrade(engine)
    assert migrate.current(engine) == migrate.head()
    assert _diff(engine) == []
    _check_claim_index(engine)
    names = set(sa.inspect(engine).get_table_names())
    ours = {"pending_jobs", "pending_job_callback_attempts", "pending_job_runs", "pending_jobs_alembic_version"}
    assert ours <= names
    assert "pending_jobs_summary" in sa.inspect(engine).get_view_names()

    migrate.downgrade(engine)
    remaining = set(sa.inspect(engine).get_table_names())
    assert not {n for n in remaining if n.startswith("pending_jobs") and n != "pending_jobs_alembic_version"}
    assert migrate.current(engine) is None

    migrate.upgrade(engine)
    assert _diff(engine) == []
    _check_claim_index(engine)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all() == ["host_app_rev_1"]
    engine.dispose()


def test_run_refuses_a_database_not_at_head(empty_url: str) -> None:
    if empty_url.startswith("sqlite"):  # an empty file: a missing one is refused as missing (test_cli_core)
        Path(str(sa.make_url(empty_url).database)).touch()
    result = cli("run", env={"PENDING_JOBS_DATABASE_URL": empty_url})
    assert result.returncode == 2
    assert "pending-jobs migrate" in result.stderr and result.stdout == ""
    assert f"database schema is not migrated, this pending-jobs needs {migrate.HEAD}" in result.stderr
    # The database it looked at, to tell a typo in the URL from a database not yet migrated; no password.
    shown = sa.make_url(empty_url).set(query={}).render_as_string(hide_password=True)
    assert f"(database_url: {shown})" in result.stderr


def test_head_is_the_newest_migration_script() -> None:
    """`migrate.HEAD` (what `run` checks the database against without Alembic) is the scripts' head."""
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory.from_config(migrate.alembic_config())
    assert migrate.head() == scripts.get_current_head()
    assert migrate.known() == sorted(script.revision for script in scripts.walk_revisions())
    assert migrate.known()[-1] == migrate.head()


def test_run_against_a_schema_a_newer_pending_jobs_migrated_says_to_upgrade_here(db_url: str) -> None:
    """Hosts upgraded one at a time: the first migrates, and a tick of an older one must not advise a
    `migrate` that would not know the revision either."""
    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(sa.text(f"UPDATE {migrate.VERSION_TABLE} SET version_num = '0999'"))
    engine.dispose()
    result = cli("run", env={"PENDING_JOBS_DATABASE_URL": db_url})
    assert result.returncode == 2
    assert "0999, newer than this pending-jobs knows" in result.stderr and "upgrade pending-jobs here" in result.stderr
    assert "run `pending-jobs migrate`" not in result.stderr


def test_a_run_imports_neither_alembic_nor_multiprocessing(empty_url: str) -> None:
    """A cron tick's `run` leaves out what it does not use: Alembic (with Mako and Pygments) and
    multiprocessing (for process-isolated tasks only), about 70 ms of imports per tick."""
    engine = create_engine(empty_url)
    migrate.upgrade(engine)
    engine.dispose()
    code = ("import sys; from pending_jobs.cli import main; code = main(['run', '--drain']); "
            "print(code, sorted(m for m in ('alembic', 'mako', 'multiprocessing') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT,
                            env={"PYTHONPATH": str(ROOT), "PENDING_JOBS_DATABASE_URL": empty_url,
                                 "PENDING_JOBS_LOCK_FILE": "none", "PENDING_JOBS_TASKS": "benchmarks.noop"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0", "[]"]


def test_migrate_sql_prints_ddl_without_touching_the_database(empty_url: str) -> None:
    result = cli("migrate", "--sql", env={"PENDING_JOBS_DATABASE_URL": empty_url})
    assert result.returncode == 0, result.stderr
    assert "CREATE TABLE pending_jobs" in result.stdout
    assert "ix_pending_jobs_claim" in result.stdout and "pending_jobs_alembic_version" in result.stdout
    engine = create_engine(empty_url)
    assert "pending_jobs" not in sa.inspect(engine).get_table_names()
    engine.dispose()


def test_installed_package_migrates_from_any_directory(tmp_path: Path) -> None:
    """`pip install .` (not editable) ships the migrations inside the package."""
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(ROOT)], check=True, capture_output=True, timeout=300)
    assert (target / "pending_jobs" / "migrations" / "versions" / "0001_initial.py").exists()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    url = f"sqlite:///{elsewhere / 'jobs.sqlite3'}"
    result = subprocess.run([sys.executable, "-m", "pending_jobs", "migrate"], cwd=elsewhere, capture_output=True,
                            text=True, env={"PYTHONPATH": str(target), "PENDING_JOBS_DATABASE_URL": url}, timeout=120)
    assert result.returncode == 0, result.stderr
    engine = create_engine(url)
    assert migrate.current(engine) == migrate.head()
    engine.dispose()


def test_0003_ends_rows_with_a_status_no_run_would_pick_up_as_failed_with_the_reason(empty_url: str) -> None:
    """Rows a producer wrote before the CHECK existed ('RUNNING', '', 'done') would block the constraint
    and never run: the migration ends them `failed`, saying why, and leaves known statuses alone."""
    engine = create_engine(empty_url)
    try:
        migrate.upgrade(engine, "0002")
        with engine.begin() as conn:
            for status in ("RUNNING", "", "done", "pending"):
                conn.execute(sa.text("INSERT INTO pending_jobs (task, payload, status) VALUES ('t', '{}', :s)"),
                             {"s": status})
            conn.execute(sa.text("INSERT INTO pending_jobs (task, payload, callback_url, callback_status) "
                                 "VALUES ('t', '{}', 'http://x/', 'sometime')"))
        migrate.upgrade(engine, "0003")
        with engine.connect() as conn:
            rows = conn.execute(sa.text(
                "SELECT status, last_error, callback_status FROM pending_jobs ORDER BY id")).all()
    finally:
        engine.dispose()
    assert [r[0] for r in rows] == ["failed", "failed", "failed", "pending", "pending"]
    for row, old in zip(rows[:3], ("RUNNING", "", "done"), strict=True):
        assert row[1] == f"status {old} is not a status pending-jobs knows; ended as failed by migration 0003"
    assert rows[3][1] is None
    assert rows[4][2] == "failed"


def _set_revision(engine: sa.Engine, revision: str | None) -> None:
    """Write `revision` into our version table, as a migration that failed after its first steps left it."""
    table = sa.table(migrate.VERSION_TABLE, sa.column("version_num"))
    with engine.begin() as conn:
        conn.execute(table.delete())
        if revision is not None:
            conn.execute(table.insert().values(version_num=revision))


@pytest.mark.parametrize("revision", migrate.known())
def test_every_migration_runs_again_over_its_own_steps(empty_url: str, revision: str) -> None:
    """MariaDB commits each DDL statement alone: a migration that failed halfway (a missing privilege, a lost
    connection) kept its first steps, the version table still named the revision before, and every later
    `migrate` failed on the first step again ("Duplicate column name 'concurrency_key'"); no run started.
    The worst case of that, every step already there, must pass over them and reach head."""
    engine = create_engine(empty_url)
    migrate.upgrade(engine, revision)
    known = migrate.known()
    _set_revision(engine, known[known.index(revision) - 1] if revision != known[0] else None)
    migrate.upgrade(engine)
    assert migrate.current(engine) == migrate.head()
    assert _diff(engine) == []
    _check_claim_index(engine)
    engine.dispose()


def test_a_migration_that_failed_after_its_first_step_is_finished_by_the_next_migrate(empty_url: str) -> None:
    """As reproduced on MariaDB: 0005 added its column, then its index failed (no INDEX privilege)."""
    engine = create_engine(empty_url)
    migrate.upgrade(engine, "0003")
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE pending_jobs ADD COLUMN concurrency_key VARCHAR(191)"))
    result = cli("migrate", env={"PENDING_JOBS_DATABASE_URL": empty_url})
    assert result.returncode == 0, result.stderr
    assert migrate.current(engine) == migrate.head()
    assert _diff(engine) == []
    _check_claim_index(engine)
    engine.dispose()


def test_migrate_waits_a_few_seconds_for_a_table_lock_then_stops_and_says_run_it_again(
        backend: str, empty_url: str) -> None:
    """A producer's transaction left open held pending_jobs: migrate waited for it without limit (PostgreSQL's
    lock_timeout is off, MariaDB's lock_wait_timeout a day), and every INSERT queued behind the waiting DDL."""
    if backend == "sqlite":
        pytest.skip("SQLite has one writer: a migrate waits busy_timeout (30 s) like any other write")
    engine = create_engine(empty_url)
    migrate.upgrade(engine, "0006")  # 0007 creates an index on pending_jobs on every database
    producer = engine.connect()
    producer.execute(sa.text("INSERT INTO pending_jobs (task, payload) VALUES ('a', '{}')"))  # left open
    try:
        result = cli("migrate", env={"PENDING_JOBS_DATABASE_URL": empty_url})
        assert result.returncode == 75, result.stderr
        assert "migrate waited 5 s for a lock on a pending-jobs table that another transaction holds" in result.stderr
        assert "run `pending-jobs migrate` again (at 0006 now)" in result.stderr and "Traceback" not in result.stderr
    finally:
        producer.commit()
        producer.close()
    one = create_engine(empty_url, pool_size=1)  # the next connect gets the connection that migrated
    migrate.upgrade(one)
    assert migrate.current(engine) == migrate.head() and _diff(engine) == []
    with one.connect() as conn:  # the bounded wait was the migration's own: the pooled session is as it was
        setting = "@@lock_wait_timeout" if backend == "mysql" else "current_setting('lock_timeout')"
        assert str(conn.execute(sa.text(f"SELECT {setting}")).scalar()) in ("86400", "31536000", "0")
    one.dispose()
    engine.dispose()


def test_sqlite_0003_keeps_a_view_with_an_instead_of_trigger(tmp_path: Path) -> None:
    """Dropping the view drops its INSTEAD OF trigger: the trigger's own DROP then failed ("no such trigger")."""
    engine = create_engine(f"sqlite:///{tmp_path / 'jobs.sqlite3'}")
    migrate.upgrade(engine, "0002")
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE VIEW app_jobs AS SELECT id, queue, task FROM pending_jobs"))
        conn.execute(sa.text("CREATE TRIGGER app_jobs_insert INSTEAD OF INSERT ON app_jobs BEGIN INSERT INTO "
                             "pending_jobs (queue, task, payload) VALUES (NEW.queue, NEW.task, '{}'); END"))
    migrate.upgrade(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO app_jobs (queue, task) VALUES ('default', 'echo')"))
        assert conn.execute(sa.text("SELECT COUNT(*) FROM pending_jobs")).scalar() == 1
    engine.dispose()


def test_sqlite_0003_keeps_the_applications_own_columns_indexes_views_and_triggers(tmp_path: Path) -> None:
    """SQLite adds 0003's CHECKs by rebuilding pending_jobs. The rebuild copied a frozen 0002 table: a column
    the application had added lost its data, its index and its trigger were dropped (migrate said nothing), and
    a view of its own on pending_jobs failed the rebuild's RENAME ("error in view …: no such table")."""
    url = f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
    engine = create_engine(url)
    migrate.upgrade(engine, "0002")
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE pending_jobs ADD COLUMN tenant_id INTEGER"))
        conn.execute(sa.text("CREATE INDEX app_jobs_tenant ON pending_jobs (tenant_id)"))
        conn.execute(sa.text("CREATE TABLE app_log (job_id INTEGER, status TEXT)"))
        conn.execute(sa.text("CREATE TRIGGER app_job_status AFTER UPDATE OF status ON pending_jobs "
                             "BEGIN INSERT INTO app_log VALUES (NEW.id, NEW.status); END"))
        conn.execute(sa.text("CREATE VIEW app_failed AS SELECT id, tenant_id FROM pending_jobs "
                             "WHERE status = 'failed'"))
        conn.execute(sa.text("INSERT INTO pending_jobs (task, payload, tenant_id) VALUES ('t', '{}', 42)"))
    engine.dispose()
    result = cli("migrate", env={"PENDING_JOBS_DATABASE_URL": url})
    assert result.returncode == 0, result.stderr
    engine = create_engine(url)
    try:
        assert migrate.current(engine) == migrate.head()
        with engine.begin() as conn:
            assert conn.execute(sa.text("SELECT tenant_id FROM pending_jobs")).scalars().all() == [42]
            conn.execute(sa.text("UPDATE pending_jobs SET status = 'failed'"))
            assert conn.execute(sa.text("SELECT * FROM app_log")).all() == [(1, "failed")]
            assert conn.execute(sa.text("SELECT id, tenant_id FROM app_failed")).all() == [(1, 42)]
        assert "app_jobs_tenant" in {i["name"] for i in sa.inspect(engine).get_indexes("pending_jobs")}
        _check_claim_index(engine)
        with engine.connect() as conn:
            claim = str(conn.execute(sa.text("SELECT sql FROM sqlite_master WHERE name = :n"),
                                     {"n": CLAIM_INDEX}).scalar())
        assert "priority DESC" in claim
    finally:
        engine.dispose()


def test_migrate_refuses_another_applications_table_of_the_same_name_and_changes_nothing(empty_url: str) -> None:
    """A step that finds its table already there skipped making it (for a migration re-run over a half-applied
    run of itself), whoever made it: over an application's own `pending_jobs`, 0001 went on to add its claim
    index to that table (kept on MariaDB) and failed on the next, naming a column, exit 1."""
    engine = create_engine(empty_url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE pending_jobs (id INTEGER PRIMARY KEY, queue VARCHAR(64), task VARCHAR(191),"
                             " status VARCHAR(16), priority INTEGER, run_at TIMESTAMP)"))
        conn.execute(sa.text("INSERT INTO pending_jobs VALUES (1, 'q', 'mail', 'new', 0, NULL)"))
    try:
        result = cli("migrate", env={"PENDING_JOBS_DATABASE_URL": empty_url})
        assert result.returncode == 2, result.stderr
        assert "already has a table pending_jobs that pending-jobs did not make (it has no column payload," \
            in result.stderr and "Traceback" not in result.stderr
        assert [i["name"] for i in sa.inspect(engine).get_indexes("pending_jobs")] == []
        assert [c["name"] for c in sa.inspect(engine).get_columns("pending_jobs")] == [
            "id", "queue", "task", "status", "priority", "run_at"]
        assert migrate.current(engine) is None
    finally:
        engine.dispose()


def test_check_fails_the_schema_when_an_object_of_head_is_missing(db_url: str) -> None:
    """`check` judged the schema by the version table alone: with the claim index dropped, a column and a table
    gone, it said `schema ok at 0009`, exit 0 past the schema."""
    engine = create_engine(db_url)
    healthy = cli("check", "--no-callbacks", "--json", env={"PENDING_JOBS_DATABASE_URL": db_url})
    assert {"name": "schema", "ok": True, "detail": f"at {migrate.head()}"} in json.loads(healthy.stdout)["checks"]
    with engine.begin() as conn:
        conn.execute(sa.text("DROP INDEX ix_pending_jobs_claim" + (" ON pending_jobs" if engine.dialect.name
                                                                     in ("mysql", "mariadb") else "")))
        conn.execute(sa.text("DROP TABLE pending_job_totals"))
        conn.execute(sa.text("ALTER TABLE pending_job_runs DROP COLUMN cancelled"))
    engine.dispose()
    result = cli("check", "--no-callbacks", "--json", env={"PENDING_JOBS_DATABASE_URL": db_url})
    assert result.returncode == 4, result.stdout + result.stderr
    schema = next(c for c in json.loads(result.stdout)["checks"] if c["name"] == "schema")
    assert schema["ok"] is False and schema["detail"].startswith(f"at {migrate.head()}, but this database has no ")
    for missing in ("table pending_job_totals", "column pending_job_runs.cancelled", "index ix_pending_jobs_claim"):
        assert missing in schema["detail"]


def test_0003_copies_a_mariadb_table_once_for_both_checks(backend: str, empty_url: str) -> None:
    """MariaDB/MySQL add a CHECK by copying the table, INSERTs blocked meanwhile; 0003 added its two in two
    ALTERs, two copies: with 1,000,000 jobs producers waited 18 s, then 16 s more."""
    if backend != "mysql":
        pytest.skip("PostgreSQL adds a CHECK in place; SQLite rebuilds the table once in batch mode")
    engine = create_engine(empty_url)
    migrate.upgrade(engine, "0002")
    statements: list[str] = []
    sa.event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    migrate.upgrade(engine, "0003")
    alters = [s for s in statements if s.lstrip().upper().startswith("ALTER TABLE PENDING_JOBS")]
    assert len(alters) == 1, alters
    assert "ck_pending_jobs_status" in alters[0] and "ck_pending_jobs_callback_status" in alters[0]
    migrate.upgrade(engine)
    assert _diff(engine) == []
    engine.dispose()


def test_postgresql_url_options_choose_the_schema_pending_jobs_migrates_into(backend: str, empty_url: str) -> None:
    """libpq's `options` in the URL (a search_path) were replaced by the engine's own `-c timezone=UTC`: the
    tables went to `public` whatever the URL said, and nothing said so."""
    if backend != "postgresql":
        pytest.skip("a PostgreSQL URL parameter")
    admin = sa.create_engine(sa.make_url(empty_url).set(drivername="postgresql+psycopg"))
    with admin.begin() as conn:
        conn.execute(sa.text("CREATE SCHEMA jobs"))
    url = sa.make_url(empty_url).update_query_dict({"options": "-csearch_path=jobs"}).render_as_string(False)
    result = cli("migrate", env={"PENDING_JOBS_DATABASE_URL": url})
    assert result.returncode == 0, result.stderr
    with admin.connect() as conn:
        where = conn.execute(sa.text("SELECT DISTINCT table_schema FROM information_schema.tables "
                                     "WHERE table_name LIKE 'pending_job%'")).scalars().all()
    admin.dispose()
    assert where == ["jobs"]
    engine = create_engine(url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SHOW timezone")).scalar() == "UTC"
    assert migrate.current(engine) == migrate.head()
    engine.dispose()


def test_migrate_against_a_newer_schema_or_to_an_unknown_revision_exits_2_in_one_line(db_url: str) -> None:
    """An operator running `migrate` on a host not yet upgraded, or a typo in --revision: Alembic's CommandError
    ("Can't locate revision") was a traceback and exit 1."""
    env = {"PENDING_JOBS_DATABASE_URL": db_url}
    for args in (["migrate", "--revision", "bogus"], ["migrate", "--sql", "--revision", "bogus"]):
        result = cli(*args, env=env)
        assert (result.returncode, result.stderr) == (
            2, "pending-jobs: cannot " + ("print the DDL of" if "--sql" in args else "migrate to") +
            " revision 'bogus': Can't locate revision identified by 'bogus'\n"), args
    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(sa.text(f"UPDATE {migrate.VERSION_TABLE} SET version_num = '0999'"))
    engine.dispose()
    result = cli("migrate", env=env)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "0999, newer than this pending-jobs knows" in result.stderr and "upgrade pending-jobs here" in result.stderr
