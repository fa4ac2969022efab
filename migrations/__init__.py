"""Alembic migrations of pending-jobs, installed as `pending_jobs.migrations`."""
