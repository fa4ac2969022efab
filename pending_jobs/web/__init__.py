"""The optional web side of pending-jobs (`pip install pending-jobs[web]`): the console and the push endpoints."""
