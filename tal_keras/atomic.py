"""Atomic file writes: a reader sees the old file or the new one, never half.

Files get the permissions the umask gives an ordinary new file (mkstemp's
private 0600 is widened to match). `check_writable` tells, before any work,
whether an output can be written where the user asked.
"""

import contextlib
import json
import os
import tempfile

from tal_keras.errors import OutputError


def umask():
    """The process umask, read without changing it where /proc allows."""
    try:
        with open("/proc/self/status") as stream:
            for line in stream:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode():
    """Permissions of a new ordinary file under the current umask."""
    return 0o666 & ~umask()


@contextlib.contextmanager
def atomic_path(path, prefix=None):
    """Yields a temporary path beside `path`; renames it onto `path` on success.

    On an exception the temporary file is removed and `path` is left untouched.
    The temporary name starts with `prefix` (default ".NAME.") so that
    leftovers of a killed process can be recognised.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        dir=directory,
        prefix=prefix or f".{os.path.basename(path)}.",
        suffix=".tmp" if prefix is None else os.path.splitext(path)[1],
    )
    os.fchmod(handle, new_file_mode())
    os.close(handle)
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise


def write_text_atomic(path, text):
    """Writes `text` to `path` atomically (flushed to disk first)."""
    with atomic_path(path) as temporary, open(temporary, "w") as stream:
        stream.write(text)
        stream.flush()
        os.fsync(stream.fileno())


def write_json_atomic(path, payload, indent=None):
    """Writes `payload` as JSON to `path` atomically."""
    write_text_atomic(path, json.dumps(payload, indent=indent))


def check_writable(path, what="output"):
    """Raises `OutputError` unless a file can be created at `path` (its folder
    is made if missing). Call it before the work whose result goes there."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise OutputError(f"{path}: cannot write the {what}: it is a directory.")
    try:
        probe_folder(directory)
    except OSError as error:
        reason = error.strerror or str(error)
        raise OutputError(
            f"{path}: cannot write the {what} in {directory}: {reason}."
        ) from None


def probe_folder(directory):
    """Makes `directory` if missing and creates and removes a file in it;
    raises the `OSError` of whichever step fails."""
    os.makedirs(directory, exist_ok=True)
    handle, probe = tempfile.mkstemp(dir=directory, prefix=".write-check-")
    os.close(handle)
    os.remove(probe)
