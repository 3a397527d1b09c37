"""Errors a user can cause with bad input, and a stop request (SIGTERM)
turned into the Ctrl-C the entry points already handle."""

import contextlib
import signal
import threading


class DataError(ValueError):
    """Bad input data: the message names the file, the video and what was expected."""


class OutputError(OSError):
    """An output that cannot be written where asked: the message names the path."""

    def __str__(self):
        return self.args[0] if self.args else ""


class RunFolderError(ValueError):
    """A run folder that cannot be used as asked (in use, a corrupt or
    missing state or checkpoint): the message names the file and what to do."""


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Within the block, SIGTERM (kill, a scheduler's stop) raises
    KeyboardInterrupt as Ctrl-C does, so both end with the same line, exit
    status and clean state; the previous handler is restored after. Outside
    the main thread, where handlers cannot be set, it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
