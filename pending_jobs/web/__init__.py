"""The optional web side (`pip install './pending-jobs[web]'`): the operator console and the push endpoints."""
