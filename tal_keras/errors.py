"""Errors a user can cause with bad input, and a stop request (Ctrl-C or
SIGTERM) turned into the KeyboardInterrupt the entry points handle."""

import contextlib
import signal
import sys
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


_stop_requested = threading.Event()


def _raise_interrupt(signum, frame):
    _stop_requested.set()
    raise KeyboardInterrupt


def raise_if_stop_requested():
    """Raises KeyboardInterrupt if Ctrl-C or SIGTERM came within
    `stop_signals_as_interrupt`'s block. The signal handler raises at once,
    but where that lands in a library's bare `except:` (Keras's
    `pythonify_logs` waits for each step's logs inside one) or in a
    finalizer, it is lost; loops that run for long ask
    here at each step, so a stop is never lost."""
    if _stop_requested.is_set():
        raise KeyboardInterrupt


def _quiet_about_stops(previous_hook):
    """An unraisable-exception hook that drops the KeyboardInterrupt of a
    remembered stop (raised in a finalizer: Python would print its traceback
    and go on; `raise_if_stop_requested` raises it again) and hands anything
    else to `previous_hook`."""

    def hook(unraisable):
        stopped = isinstance(unraisable.exc_value, KeyboardInterrupt)
        if not (stopped and _stop_requested.is_set()):
            previous_hook(unraisable)

    return hook


@contextlib.contextmanager
def stop_signals_as_interrupt():
    """Within the block, Ctrl-C and SIGTERM (kill, a scheduler's stop) raise
    KeyboardInterrupt and are remembered for `raise_if_stop_requested`, so
    both end with the same line, exit status and clean state; one raised in a
    finalizer prints nothing. The previous handlers are restored after.
    Outside the main thread, where handlers cannot be set, it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _stop_requested.clear()
    previous = {
        number: signal.signal(number, _raise_interrupt)
        for number in (signal.SIGINT, signal.SIGTERM)
    }
    previous_hook = sys.unraisablehook
    sys.unraisablehook = _quiet_about_stops(previous_hook)
    try:
        yield
    finally:
        sys.unraisablehook = previous_hook
        for number, handler in previous.items():
            # None: a handler set outside Python, which cannot be set back.
            signal.signal(number, signal.SIG_DFL if handler is None else handler)
