"""What `pending-jobs check` verifies of each declared task, without running any of them.

SQL is prepared by the database (never executed) in a transaction that is rolled back; the command
must exist and be executable; the URL's host must resolve and the signing secret must be valid.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping

import sqlalchemy as sa
from sqlalchemy import exc

from ..callbacks.guard import Guard, Refused, Unresolved, parse
from ..callbacks.signing import Signer
from ..config import Settings
from ..errors import ConfigError, Fail
from ..schedules import Schedule
from ..store import create_engine, dialect_for
from .command import located, missing_interpreter
from .spec import CommandSpec, HttpSpec, Spec, SqlSpec
from .sql import SqlTask, refused
from .sqlerrors import driver_message


def check(specs: Mapping[str, Spec], settings: Settings, engine: sa.Engine) -> tuple[list[str], list[str]]:
    """(problems, notes) for every declared task; a problem makes `check` fail, a note does not."""
    problems: list[str] = []
    notes: list[str] = []
    for name, spec in specs.items():
        if isinstance(spec, SqlSpec):
            found = sql_problems(spec, engine)
            if spec.database_url is not None:
                notes.append(f"task {name} runs on its own database_url: at least once, not exactly-once")
        elif isinstance(spec, CommandSpec):
            found = command_problems(spec)
        else:
            found = http_problems(spec, settings)
            if spec.secret is None and not settings.callback_secret:
                notes.append(f"task {name}: no secret and no callback_secret, so its requests are unsigned")
        problems.extend(f"task {name}: {problem}" for problem in found)
    return problems, notes


def sql_problems(spec: SqlSpec, engine: sa.Engine) -> list[str]:
    """Each statement prepared on its database; a problem per statement that does not prepare."""
    try:
        target = engine if spec.database_url is None else create_engine(spec.database_url, pool_size=1, create=False)
    except ConfigError as error:  # a missing SQLite file or folder: this task's problem, the others still checked
        return [str(error)]
    found: list[str] = []
    try:
        with target.connect() as conn:
            for number, statement in enumerate(spec.statements, 1):
                # a refused statement is never prepared: PostgreSQL's PREPARE ran all of "SELECT 1; DELETE …"
                problem = refused(statement, dialect_for(conn)) or prepare(conn, statement)
                if problem:
                    which = f"statement {number} " if len(spec.statements) > 1 else "its SQL "
                    found.append(f"{which}does not prepare: {problem}")
    except exc.DBAPIError as error:
        found.append(f"cannot connect to its database: {driver_message(error.orig)}")
    finally:
        if target is not engine:
            target.dispose()
    return found


def schedule_problems(specs: Mapping[str, Spec], plan: Mapping[str, Schedule], payload_limit: int) -> list[str]:
    """A problem per schedule whose payload its sql task would refuse (a key no statement uses, a parameter
    it lacks, an object): every job the schedule enqueues would fail, each with the same reason."""
    found: list[str] = []
    for name, schedule in plan.items():
        spec = specs.get(schedule.task)
        if not isinstance(spec, SqlSpec):
            continue  # a Python handler, an HTTP or command task takes any JSON payload
        try:
            SqlTask(spec, payload_limit, 1).bind(schedule.payload_for(dt.datetime.now(dt.UTC)))
        except Fail as error:
            found.append(f"[schedules.{name}] {error.reason}, so each of its jobs would fail")
    return found


def prepare(conn: sa.Connection, statement: str) -> str | None:
    """Why the database refuses to prepare `statement` (None: it prepares); nothing is executed or kept."""
    transaction = conn.begin()
    try:
        return dialect_for(conn).prepare_problem(conn, statement)
    finally:
        transaction.rollback()


def command_problems(spec: CommandSpec) -> list[str]:
    """The working directory exists; the program exists (as a path, or on PATH) and may be executed."""
    found: list[str] = []
    if spec.cwd is not None and not os.path.isdir(spec.cwd):
        found.append(f"working directory {spec.cwd!r} does not exist")
    program = spec.argv[0]
    path = located(spec)
    if path is None or not os.path.exists(path):
        where = "" if "/" in program else " on PATH"
        found.append(f"command not found: {program!r} does not exist{where}")
    elif os.path.isdir(path) or not os.access(path, os.X_OK):
        found.append(f"command is not executable: {path!r}")
    elif (interpreter := missing_interpreter(path)) is not None:
        found.append(f"command cannot start: {path!r}: {interpreter}")
    return found


def http_problems(spec: HttpSpec, settings: Settings) -> list[str]:
    """The signing secrets are valid and the URL's host resolves (its host is trusted, so not refused)."""
    found: list[str] = []
    try:
        Signer(spec.secret if spec.secret is not None else settings.callback_secret)
    except ConfigError as error:
        found.append(f"secret: {str(error).split(': ', 1)[-1]}")
    try:
        Guard([parse(spec.url)[1]]).check(spec.url)
    except (Refused, Unresolved) as error:
        found.append(str(error).removeprefix("refused: "))
    return found
