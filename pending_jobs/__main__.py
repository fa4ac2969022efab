"""`python -m pending_jobs` is the `pending-jobs` command."""

import sys

from .cli import main

sys.exit(main())
