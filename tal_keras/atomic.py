"""Atomic file writes: a reader sees the old file or the new one, never half."""

import contextlib
import json
import os
import tempfile


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path beside `path`; renames it onto `path` on success.

    On an exception the temporary file is removed and `path` is left untouched.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp"
    )
    os.close(handle)
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise


def write_json_atomic(path, payload, indent=None):
    """Writes `payload` as JSON to `path` atomically."""
    with atomic_path(path) as temporary, open(temporary, "w") as stream:
        json.dump(payload, stream, indent=indent)
        stream.flush()
        os.fsync(stream.fileno())
