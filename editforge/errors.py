"""Errors that the command line reports as one clear line instead of a traceback."""


class EditforgeError(Exception):
    """A problem with the user's input or environment, described well enough to act on.

    The CLI prints ``editforge <command>: error: <message>`` and exits with status 2.
    """


class UsageError(EditforgeError, ValueError):
    """Bad arguments or bad input data."""
