"""A Flask producer: the user row and its welcome-email job commit together, or not at all.

    export PENDING_JOBS_DATABASE_URL=sqlite:///app.sqlite3
    pending-jobs migrate                                   # once: the job tables
    flask --app examples/flask_producer.py run

The app's engine is plain SQLAlchemy's, so its URL names the driver: `mysql+pymysql://…` for MariaDB
(pending-jobs alone also reads `mysql://` as PyMySQL; SQLAlchemy reads it as MySQLdb, not installed).

`pending_jobs.enqueue(conn, ...)` takes the request's connection, so the job is inserted inside the
application's own transaction: when the request fails after the insert, the job is rolled back too.
"""

from __future__ import annotations

import os
from typing import Any

import sqlalchemy as sa
from flask import Flask, abort, jsonify, request

import pending_jobs

metadata = sa.MetaData()
users = sa.Table(
    "users",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("email", sa.String(191), nullable=False, unique=True),
)


def create_app(database_url: str | None = None) -> Flask:
    """The application; `database_url` defaults to PENDING_JOBS_DATABASE_URL."""
    app = Flask(__name__)
    engine = sa.create_engine(database_url or os.environ["PENDING_JOBS_DATABASE_URL"])
    metadata.create_all(engine)

    @app.post("/signup")
    def signup() -> Any:
        data = request.get_json(force=True)
        email = str(data.get("email", ""))
        if "@" not in email:
            abort(400, "an email address is needed")
        try:
            with engine.begin() as conn:  # one transaction: the user, the job, or neither
                user_id = conn.execute(users.insert().values(email=email)).inserted_primary_key[0]
                job_id = pending_jobs.enqueue(conn, "send_welcome_email", {"email": email}, queue="mail",
                                              idempotency_key=f"welcome-{email}")
                if not data.get("accept_terms"):
                    abort(400, "terms not accepted")  # raises: the user row and the job are rolled back
        except sa.exc.IntegrityError:  # the email's unique key: signed up before (its mail was enqueued then)
            abort(409, "already signed up")
        return jsonify(user_id=user_id, job_id=job_id), 201

    return app
