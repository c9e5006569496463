"""Errors the command line reports as one line, without a traceback."""


class CLIError(Exception):
    """An error to report to the user as one line, without a traceback."""
