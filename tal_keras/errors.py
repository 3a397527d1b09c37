"""Errors a user can cause with bad input."""


class DataError(ValueError):
    """Bad input data: the message names the file, the video and what was expected."""
