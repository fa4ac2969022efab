"""`python -m pending_jobs` is the `pending-jobs` command."""

from .cli import entry

entry()
