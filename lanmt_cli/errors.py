"""Errors a user can cause: they end a command with one clear line and a non-zero exit."""


class LanmtError(Exception):
    """A user-facing error; its message is printed as one line, without a traceback."""

    exit_code = 1
