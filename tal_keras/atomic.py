"""Atomic file writes: a reader sees the old file or the new one, never half
(`atomic_folder`: the same for a folder of files).

Files get the permissions the umask gives an ordinary new file (mkstemp's
private 0600 is widened to match). `check_writable` tells, before any work,
whether an output can be written where the user asked.

A temporary is held under an exclusive flock while it is written, so that
what a killed writer left (an unlocked temporary) is told apart from the
live temporary of a writer still running: `remove_stale` removes only the
former, and every atomic write of a path first removes its stale
temporaries.
"""

import contextlib
import fcntl
import glob
import json
import os
import shutil
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


def temporary_pattern(path):
    """The glob pattern of the temporaries `atomic_path(path)` makes."""
    return os.path.join(
        glob.escape(os.path.dirname(os.path.abspath(path))),
        f".{glob.escape(os.path.basename(path))}.*.tmp",
    )


@contextlib.contextmanager
def atomic_path(path, prefix=None):
    """Yields a temporary path beside `path`; renames it onto `path` on success.

    On an exception the temporary file is removed and `path` is left
    untouched. The temporary name starts with `prefix` (default ".NAME.",
    ending ".tmp") so that leftovers of a killed process can be recognised;
    it stays flock-ed until renamed, and stale temporaries of `path` (default
    prefix) are removed first.

    Raises:
        OutputError: an OSError of the write that names no other file (a
            full disk, an I/O error), re-raised naming `path`.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    if prefix is None:
        remove_stale(glob.glob(temporary_pattern(path)))
    handle, temporary = tempfile.mkstemp(
        dir=directory,
        prefix=prefix or f".{os.path.basename(path)}.",
        suffix=".tmp" if prefix is None else os.path.splitext(path)[1],
    )
    try:
        # Where the file system has no flock it stays unlocked, and looks
        # like a killed writer's to `remove_stale`.
        with contextlib.suppress(OSError):
            fcntl.flock(handle, fcntl.LOCK_EX)
        os.fchmod(handle, new_file_mode())
        try:
            yield temporary
            os.replace(temporary, path)
        except BaseException as error:
            with contextlib.suppress(FileNotFoundError):
                os.remove(temporary)
            unnamed = isinstance(error, OSError) and error.filename in (None, temporary)
            if unnamed and not isinstance(error, OutputError):
                reason = error.strerror or str(error)
                raise OutputError(f"{path}: cannot write it: {reason}.") from error
            raise
    finally:
        os.close(handle)


def remove_stale(paths):
    """Removes those of `paths` that no process holds an flock on (the
    temporaries of killed writers); returns the paths removed."""
    removed = []
    for path in paths:
        try:
            handle = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # a live writer's
        finally:
            os.close(handle)
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
            removed.append(path)
    return removed


def write_text_atomic(path, text):
    """Writes `text` to `path` atomically (flushed to disk first)."""
    with atomic_path(path) as temporary, open(temporary, "w") as stream:
        stream.write(text)
        stream.flush()
        os.fsync(stream.fileno())


def write_json_atomic(path, payload, indent=None):
    """Writes `payload` as JSON to `path` atomically."""
    write_text_atomic(path, json.dumps(payload, indent=indent))


@contextlib.contextmanager
def atomic_folder(path, overwrite=False):
    """Yields a new folder beside `path` to fill; moves it onto `path` when
    the block ends, or removes it on an exception.

    A reader sees no folder at `path`, the old one or the new one, never half
    of one. An empty folder at `path` is replaced; a non-empty one (one that
    appeared while the block ran included) only with `overwrite`, moved aside
    first so that `path` is always whole, else FileExistsError. The new
    folder is world-readable (mkdtemp's is private).
    """
    path = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    building = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(path)}.tmp-")
    try:
        os.chmod(building, 0o755)
        yield building
        _move_folder_into_place(building, path, overwrite)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise


def _move_folder_into_place(building, path, overwrite):
    if os.path.isdir(path) and not os.listdir(path):
        os.rmdir(path)
    if not os.path.exists(path):
        try:
            os.rename(building, path)
            return
        except OSError:  # someone else renamed theirs in first
            if not (os.path.isdir(path) and os.listdir(path)):
                raise
    if not overwrite:
        raise FileExistsError(
            f"{path} appeared while it was made; it is replaced only with overwrite."
        )
    retired = tempfile.mkdtemp(dir=os.path.dirname(path), prefix=".retired-")
    os.rename(path, os.path.join(retired, "old"))
    os.rename(building, path)
    shutil.rmtree(retired, ignore_errors=True)


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
        raise OutputError(
            f"{path}: cannot write the {what} in {directory}: "
            f"{folder_problem(directory, error)}."
        ) from None


def probe_folder(directory):
    """Makes `directory` if missing and creates and removes a file in it;
    raises the `OSError` of whichever step fails."""
    os.makedirs(directory, exist_ok=True)
    handle, probe = tempfile.mkstemp(dir=directory, prefix=".write-check-")
    os.close(handle)
    os.remove(probe)


def folder_problem(directory, error):
    """Why `directory` cannot be made or written, from the `OSError` of
    `probe_folder`; a part of the path that is a file is named (makedirs
    says only "File exists" or "Not a directory")."""
    existing = os.path.abspath(directory)
    while not os.path.lexists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    if os.path.lexists(existing) and not os.path.isdir(existing):
        return f"{existing} is a file, not a folder"
    return error.strerror or str(error)
