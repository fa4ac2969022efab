"""Benchmarks of pending-jobs on SQLite, MariaDB and PostgreSQL: `python -m benchmarks` (or `make bench`)."""
