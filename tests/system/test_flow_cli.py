"""`pending-jobs schedules`, and late schedules in `status` and `check`, as an operator sees them."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import cli, rows


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
def test_schedules_lists_enqueues_and_names_late_ones(db_url: str, engine: sa.Engine, tmp_path: Path) -> None:
    config = tmp_path / "jobs.toml"
    config.write_text('[schedules.often]\nevery = "1s"\ntask = "tick"\npayload = { kind = "test" }\n\n'
                      '[schedules.nightly]\ncron = "0 2 * * *"\ntimezone = "Europe/Berlin"\ntask = "tick"\n')
    env = {"PENDING_JOBS_DATABASE_URL": db_url, "PENDING_JOBS_TASKS": "tests.jobs,tests.flow_jobs",
           "PENDING_JOBS_CONFIG": str(config), "PENDING_JOBS_CALLBACK_SECRET": "whsec_" + "A" * 32}
    first = cli("schedules", "--json", env=env)
    assert first.returncode == 0, first.stderr
    states = {s["name"]: s for s in json.loads(first.stdout)}
    assert states["nightly"]["state"] == "no run has looked at it yet"
    assert states["nightly"]["fires"] == "0 2 * * * (Europe/Berlin)"

    assert cli("schedules", "--enqueue", env=env).returncode == 0  # creates the rows at the newest slot
    time.sleep(1.2)  # a slot of `often` comes due
    enqueued = cli("schedules", "--enqueue", env=env)
    assert enqueued.returncode == 0 and "often" in enqueued.stdout and "ok" in enqueued.stdout
    jobs = rows(engine, "SELECT task, idempotency_key FROM pending_jobs")
    assert jobs and all(task == "tick" and key.startswith("schedule:often:") for task, key in jobs)

    ran = cli("run", env=env)  # a drain runs them, and enqueues what came due meanwhile
    assert ran.returncode == 0, ran.stderr
    assert rows(engine, "SELECT COUNT(*) FROM pending_jobs WHERE status = 'succeeded'")[0][0] >= len(jobs)
    checked = json.loads(cli("check", "--json", env=env).stdout)
    assert {c["name"]: c["ok"] for c in checked["checks"]}["schedules"] is True
    said = {c["name"]: c["detail"] for c in checked["checks"]}["configuration"]
    assert said == f"settings from {config}"  # PENDING_JOBS_CONFIG, not "defaults and environment"

    an_hour_ago = dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0) - dt.timedelta(hours=1)
    with engine.begin() as conn:  # nothing ran for an hour
        conn.execute(sa.text("UPDATE pending_job_schedules SET last_slot = :t WHERE name = 'often'"),
                     {"t": an_hour_ago})
    late = cli("schedules", env=env)
    assert late.returncode == 1 and "LATE by" in late.stdout
    status = cli("status", env=env)
    assert "schedule often is late" in status.stderr
    checked = json.loads(cli("check", "--json", env=env).stdout)
    assert checked["exit_code"] == 8 and "often is late" in json.dumps(checked)

    config.write_text('[schedules.nightly]\ncron = "0 2 * * *"\ntask = "tick"\n')
    removed = {s["name"]: s for s in json.loads(cli("schedules", "--json", env=env).stdout)}
    assert removed["often"]["state"] == "removed from the config: stopped"


@pytest.mark.parametrize("backend", ["sqlite", "mysql"], indirect=True)
def test_a_bad_table_fails_alone_the_run_serves_the_rest_and_exits_2(tmp_path: Path, db_url: str,
                                                                     engine: sa.Engine) -> None:
    config = tmp_path / "jobs.toml"
    config.write_text('[schedules.x]\ncron = "every day"\ntask = "noop"\n'
                      '[task.hook]\ncommand = ["true"]\nkill_after = "never"\n')
    env = {"PENDING_JOBS_DATABASE_URL": db_url, "PENDING_JOBS_CONFIG": str(config), "PENDING_JOBS_TASKS": "tests.jobs",
           "PENDING_JOBS_CALLBACKS": "off"}
    assert cli("enqueue", "noop", env=env).returncode == 0
    assert cli("enqueue", "hook", env=env).returncode == 0

    ran = cli("run", env=env)
    assert ran.returncode == 2, ran.stderr  # after serving: a config with a mistake is not a clean run
    assert "[schedules.x] cron" in ran.stderr and "skipped until it is fixed" in ran.stderr
    assert "[task.hook] kill_after" in ran.stderr and "held back" in ran.stderr
    states = dict(rows(engine, "SELECT task, status FROM pending_jobs"))
    assert states == {"noop": "succeeded", "hook": "pending"}, states
    served = cli("serve", "--max-runtime", "1", env=env)  # systemd's unit restarts no exit 2: serve ends 0
    assert served.returncode == 0 and "[task.hook] kill_after" in served.stderr, served.stderr
    assert rows(engine, "SELECT exit_code FROM pending_job_runs ORDER BY id DESC")[0][0] == 2  # its runs row says 2
    for command in (["schedules"], ["check"]):  # they name the mistakes and do nothing else
        result = cli(*command, env=env)
        assert result.returncode == 2, (command, result.stderr)
        assert "[schedules.x] cron" in result.stderr + result.stdout
    checked = json.loads(cli("check", "--json", env=env).stdout)["checks"][0]["detail"]
    assert "[task.hook] kill_after" in checked and "[schedules.x] cron" in checked  # every one, not the first

    config.write_text('[task.hook]\ncommand = ["true"]\n')
    with engine.begin() as conn:  # the hold's minute, over
        conn.execute(sa.text("UPDATE pending_jobs SET run_at = :t"), {"t": dt.datetime(2020, 1, 1)})
    fixed = cli("run", env=env)
    assert fixed.returncode == 0, fixed.stderr
    assert rows(engine, "SELECT status, attempts FROM pending_jobs WHERE task = 'hook'") == [("succeeded", 1)]


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_check_names_limits_and_schedules_of_tasks_without_a_handler(tmp_path: Path, db_url: str,
                                                                     engine: sa.Engine) -> None:
    # A misspelt task name: limits that never apply, a schedule whose every job would fail at once.
    config = tmp_path / "jobs.toml"
    env = {"PENDING_JOBS_DATABASE_URL": db_url, "PENDING_JOBS_CONFIG": str(config), "PENDING_JOBS_TASKS": "tests.jobs",
           "PENDING_JOBS_CALLBACK_SECRET": "whsec_" + "A" * 32}
    limits = '[task.noop]\nconcurrency_limit = 1\n[task.nopo]\nconcurrency_limit = 1\n'
    schedule = '[schedules.nightly]\ncron = "0 2 * * *"\ntask = "nightly_report"\n'
    for text, said in ((limits, "[task.NAME] limits name tasks without a handler, so they limit nothing: nopo"),
                       (schedule, "schedules name tasks without a handler: [schedules.nightly] task 'nightly_report'")):
        config.write_text(text)
        checked = json.loads(cli("check", "--json", env=env).stdout)
        handlers = {c["name"]: c for c in checked["checks"]}["handlers"]
        assert checked["exit_code"] == 5 and handlers["ok"] is False and handlers["detail"] == said, checked
    config.write_text('[task.noop]\nconcurrency_limit = 1\n[schedules.nightly]\ncron = "0 2 * * *"\ntask = "noop"\n')
    checked = json.loads(cli("check", "--json", env=env).stdout)
    assert {c["name"]: c for c in checked["checks"]}["handlers"]["ok"] is True, checked
    # Every problem of the handlers check at once (one used to hide the next: a second round of fixes).
    config.write_text(limits + schedule)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO pending_jobs (task, payload) VALUES ('no_such_task', '{}')"))
    checked = json.loads(cli("check", "--json", env=env).stdout)
    assert {c["name"]: c for c in checked["checks"]}["handlers"]["detail"] == (
        "pending jobs name tasks without a handler: no_such_task; "
        "[task.NAME] limits name tasks without a handler, so they limit nothing: nopo; "
        "schedules name tasks without a handler: [schedules.nightly] task 'nightly_report'"), checked


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_check_names_a_schedule_whose_payload_its_sql_task_refuses(tmp_path: Path, db_url: str) -> None:
    # Each job of such a schedule fails at once, for the same reason: check says so before the first one.
    config = tmp_path / "jobs.toml"
    env = {"PENDING_JOBS_DATABASE_URL": db_url, "PENDING_JOBS_CONFIG": str(config),
           "PENDING_JOBS_CALLBACK_SECRET": "whsec_" + "A" * 32}
    task = '[task.stamp]\nsql = "SELECT :region AS region, :_schedule_slot AS slot"\n'
    fires = '[schedules.nightly]\ncron = "0 2 * * *"\ntask = "stamp"\n'
    for payload, said in (
            ('{ regoin = "eu" }', "[schedules.nightly] payload has no parameter 'region' (needed by task stamp), "
                                  "so each of its jobs would fail"),
            ('{ region = "eu", note = "x" }', "[schedules.nightly] payload has key 'note', which no statement of "
                                              "task stamp uses (extra keys are refused: a misspelt key would "
                                              "otherwise be lost silently), so each of its jobs would fail"),
            ('{ region = ["eu"] }', "[schedules.nightly] parameter 'region' of task stamp is an array: only "
                                    "strings, numbers, booleans and null can be bound (send JSON as a string), so "
                                    "each of its jobs would fail")):
        config.write_text(f"{task}{fires}payload = {payload}\n")
        checked = json.loads(cli("check", "--json", env=env).stdout)
        handlers = {c["name"]: c for c in checked["checks"]}["handlers"]
        assert checked["exit_code"] == 5 and handlers["ok"] is False and handlers["detail"] == said, checked
    config.write_text(f'{task}{fires}payload = {{ region = "eu" }}\n')
    checked = json.loads(cli("check", "--json", env=env).stdout)
    assert {c["name"]: c for c in checked["checks"]}["handlers"]["ok"] is True, checked


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_schedules_enqueue_refuses_what_run_refuses_and_lists_the_last_removed_one(tmp_path: Path, db_url: str,
                                                                                  engine: sa.Engine) -> None:
    config = tmp_path / "jobs.toml"
    env = {"PENDING_JOBS_DATABASE_URL": db_url, "PENDING_JOBS_CONFIG": str(config)}
    fires = '[schedules.often]\nevery = "1s"\ntask = "x"\n'
    config.write_text(f'[task.x]\ncommand = ["true"]\nconcurrency_limt = 1\n{fires}')  # a typo run refuses
    refused = cli("schedules", "--enqueue", env=env)
    assert refused.returncode == 2 and "[task.x]" in refused.stderr and "concurrency_limt" in refused.stderr
    assert rows(engine, "SELECT COUNT(*) FROM pending_jobs")[0][0] == 0

    config.write_text(f'[task.x]\ncommand = ["true"]\n{fires}')
    assert cli("schedules", "--enqueue", env=env).returncode == 0
    config.write_text('[task.x]\ncommand = ["true"]\n')  # the last schedule removed: still listed as removed
    listed = json.loads(cli("schedules", "--json", env=env).stdout)
    assert [(s["name"], s["state"]) for s in listed] == [("often", "removed from the config: stopped")]


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_enqueue_sets_the_concurrency_key(db_url: str, engine: sa.Engine) -> None:
    result = cli("enqueue", "noop", "--concurrency-key", "user:42", env={"PENDING_JOBS_DATABASE_URL": db_url})
    assert result.returncode == 0, result.stderr
    assert rows(engine, "SELECT concurrency_key FROM pending_jobs WHERE id = :id",
                id=int(result.stdout))[0][0] == "user:42"
