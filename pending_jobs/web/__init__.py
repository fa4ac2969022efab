"""The operator console (`pending-jobs web`): a Starlette app over the store; needs the `web` extra."""
