"""Errors a user can cause with bad input."""


class DataError(ValueError):
    """Bad input data: the message names the file, the video and what was expected."""


class OutputError(OSError):
    """An output that cannot be written where asked: the message names the path."""

    def __str__(self):
        return self.args[0] if self.args else ""


class RunFolderError(ValueError):
    """A run folder that cannot be used as asked (in use, a corrupt or
    missing state or checkpoint): the message names the file and what to do."""
