"""Alembic environment: runs on the connection `pending_jobs.migrate` hands over."""

from __future__ import annotations

from alembic import context

from pending_jobs.schema import VERSION_TABLE, metadata


def include_object(obj: object, name: str | None, type_: str, reflected: bool, compare_to: object) -> bool:
    # Only our tables: a host application's tables in the same database are not ours to diff.
    if type_ == "table":
        return name is not None and name.startswith("pending_job")
    return True


def run() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:
        context.configure(
            url=context.config.get_main_option("sqlalchemy.url"),
            target_metadata=metadata,
            literal_binds=True,
            version_table=VERSION_TABLE,
            transaction_per_migration=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        # MySQL commits DDL implicitly, so each migration is its own unit.
        transaction_per_migration=True,
        include_object=include_object,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


run()
