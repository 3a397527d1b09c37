"""Per-video feature arrays [T, D] on disk (their timing: `tal_keras.clips.FeatureTiming`).

Two stores share one interface (`has`, `load`, `path_of`): a directory of
`ID.npy` / `v_ID.npy` files (HACS SlowFast) and one HDF5 file with a dataset
per video (2D-TAN style). `load` validates what it reads and raises
`DataError` naming the file, the video, and the expected and found values.
`find_usable_videos` checks a whole annotation set up front and skips bad
videos with one log line each. `check_feature_length` compares the seconds
the steps cover with the annotated duration. numpy only (h5py is imported
when an HDF5 store is opened).

A video id names an array inside the store and is never a path: an id with a
path separator, "..", a control character (NUL included) or an absolute or
drive form is refused (`video_id_problem`) by every store before anything is
looked up, so training, evaluation and serving skip it with one line and
count it as they do any unusable video, and nothing outside the store is read.
"""

import contextlib
import logging
import ntpath
import os

import numpy as np

from tal_keras.clips import HACS_TIMING, FeatureTiming  # noqa: F401 (also found here)
from tal_keras.data.annotations import feature_key_candidates
from tal_keras.errors import DataError

logger = logging.getLogger("tal_keras")

HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")
# Larger magnitudes are corrupt data: they overflow the networks' float32 sums.
MAX_ABS_FEATURE = 1e6
# Steps x stride / fps against the duration: features are often a little
# longer or shorter (frame-count rounding, trimmed video ends). Beyond 10%
# (plus two steps' slack) a warning; beyond a factor of 2 the video is skipped.
LENGTH_WARN_FRACTION = 0.1
LENGTH_SKIP_FACTOR = 2.0
LENGTH_SLACK_STEPS = 2


def video_id_problem(video_id):
    """Why `video_id` cannot name a file inside a folder, or None when it can.

    Refused: the empty id, a control character (NUL, newline, ...), a path
    separator ("/", "\\", os.sep), "..", "." alone, and absolute or drive
    forms ("C:x"); "v_abc", "Zumba-03" or "a.b" pass.
    """
    video_id = str(video_id)
    if not video_id:
        return "is empty"
    control = next((char for char in video_id if ord(char) < 32), None)
    if control is not None:
        return f"holds the control character {control!r}"
    if os.path.isabs(video_id) or ntpath.isabs(video_id):
        return "is an absolute path"
    drive = ntpath.splitdrive(video_id)[0]
    if drive:
        return f"starts with the drive {drive!r}"
    if ".." in video_id:
        return "holds '..'"
    separators = {"/", "\\", os.sep, os.altsep} - {None}
    separator = next((char for char in video_id if char in separators), None)
    if separator is not None:
        return f"holds the path separator {separator!r}"
    if video_id == ".":
        return "is '.'"
    return None


class FeatureStore:
    """Interface of the feature stores: per-video arrays by video id.

    Subclasses implement `_find` (where a video's array lives, or None) and
    `_read` (the raw array); `load` validates. Ids that are not plain names
    (`video_id_problem`) never reach `_find`.
    """

    description = "feature store"

    def path_of(self, video_id):
        """A printable location of the video's array, or None if absent or
        its id is refused (`video_id_problem`)."""
        if video_id_problem(video_id) is not None:
            return None
        return self._find(video_id)

    def _find(self, video_id):
        raise NotImplementedError

    def _read(self, video_id, location):
        raise NotImplementedError

    def _shape(self, video_id, location):
        """(shape, dtype) without reading the values."""
        array = self._read(video_id, location)
        return array.shape, array.dtype

    def has(self, video_id):
        """Whether features exist for the video (under its id or "v_" form)."""
        return self.path_of(video_id) is not None

    def load(self, video_id, feature_dim=None, duration=None, timing=None):
        """float32 [T, D] features of the video, validated.

        With `duration` (seconds) and `timing`, T is checked against the
        duration (`check_feature_length`) from the shape alone, before the
        values are read; only the hard limit raises here.

        Raises:
            DataError: missing, unreadable or corrupt (a .npy header that
                claims more than the file holds included), not 2-D, empty
                (T = 0), non-numeric, NaN/inf, a value beyond
                +-MAX_ABS_FEATURE, D != feature_dim (when given), or T far
                from what `duration` holds.
        """
        location, _ = self._check_header(video_id, feature_dim, duration, timing)
        array = self._read(video_id, location)
        self._check_shape(video_id, location, array.shape, array.dtype, feature_dim)
        with np.errstate(
            over="ignore"
        ):  # values beyond float32 become inf: caught below
            features = np.array(array, dtype=np.float32)  # read (not a memory map)
        finite = np.isfinite(features)
        if not finite.all():
            bad_steps = np.flatnonzero(~finite.all(axis=1))
            raise DataError(
                f"{location}: video {video_id}: expected finite features, found "
                f"{np.count_nonzero(~finite)} NaN/inf values in {bad_steps.size} "
                f"of {features.shape[0]} steps (first at step {bad_steps[0]})."
            )
        huge = np.abs(features) > MAX_ABS_FEATURE
        if huge.any():
            bad_steps = np.flatnonzero(huge.any(axis=1))
            raise DataError(
                f"{location}: video {video_id}: expected feature values within "
                f"+-{MAX_ABS_FEATURE:g}, found {np.count_nonzero(huge)} beyond "
                f"(largest {np.abs(features).max():.3g}) in {bad_steps.size} of "
                f"{features.shape[0]} steps (first at step {bad_steps[0]})."
            )
        return features

    def check(
        self, video_id, feature_dim=None, check_values=True, duration=None, timing=None
    ):
        """Validates the video's features without keeping them.

        With `check_values=False` only the shape is read (no NaN/inf check),
        which is fast for large stores. With `duration` and `timing`, T is
        checked against the duration as `load` does. Returns (T, D); raises
        `DataError`.
        """
        if check_values:
            return self.load(video_id, feature_dim, duration, timing).shape
        _, shape = self._check_header(video_id, feature_dim, duration, timing)
        return tuple(shape)

    def _check_header(self, video_id, feature_dim, duration, timing):
        """(location, shape) of the video's array after the checks that need
        only its shape and dtype (`_check_shape`, and `check_feature_length`
        with a `duration`); the values are not read."""
        location = self._locate(video_id)
        shape, dtype = self._shape(video_id, location)
        self._check_shape(video_id, location, shape, dtype, feature_dim)
        if duration is not None:
            check_feature_length(
                f"{location}: video {video_id}", shape[0], duration, timing
            )
        return location, shape

    def length_warning(self, video_id, num_steps, duration, timing=None):
        """The one-line warning of `check_feature_length` for `num_steps`
        steps of this video against `duration` seconds, or None when they fit.
        Call it after `load` or `check` with the duration, which raise when T
        is beyond the hard limit."""
        return check_feature_length(
            f"{self.path_of(video_id)}: video {video_id}", num_steps, duration, timing
        )

    def _locate(self, video_id):
        problem = video_id_problem(video_id)
        if problem is not None:
            raise DataError(
                f"{self.description}: video {video_id!r}: refused: the id {problem}; "
                "an id names a file inside the features and is never a path."
            )
        location = self.path_of(video_id)
        if location is None:
            names = " or ".join(feature_key_candidates(video_id))
            raise DataError(
                f"{self.description}: video {video_id}: no features found "
                f"(looked for {names})."
            )
        return location

    @staticmethod
    def _check_shape(video_id, location, shape, dtype, feature_dim):
        where = f"{location}: video {video_id}"
        if not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)):
            raise DataError(f"{where}: expected numeric features, found dtype {dtype}.")
        if len(shape) != 2:
            raise DataError(
                f"{where}: expected a 2-D array [T, D], found shape {tuple(shape)}."
            )
        if shape[0] == 0:
            raise DataError(
                f"{where}: expected at least one step, found shape {tuple(shape)}."
            )
        if feature_dim is not None and shape[1] != feature_dim:
            raise DataError(
                f"{where}: expected feature width {feature_dim}, found {shape[1]} "
                f"(shape {tuple(shape)})."
            )


class NpyFeatureStore(FeatureStore):
    """A directory of `ID.npy` (or `v_ID.npy`) files, one [T, D] array each.

    Args:
        directory: the folder holding the files.
    """

    def __init__(self, directory):
        self.directory = os.fspath(directory)
        if not os.path.isdir(self.directory):
            raise DataError(f"{self.directory}: feature directory not found.")
        self.description = self.directory

    def _find(self, video_id):
        for key in feature_key_candidates(video_id):
            path = os.path.join(self.directory, key + ".npy")
            if os.path.isfile(path):
                return path
        return None

    def _read(self, video_id, location):
        # Memory-mapped: a header claiming more than the file holds fails here
        # (nothing is allocated), and only the bytes used are read.
        try:
            return np.load(location, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as error:
            reason = _not_npy_problem(location) or (
                f"(expected a .npy array){_npy_size_problem(location)}: {error}"
            )
            raise DataError(
                f"{location}: video {video_id}: cannot read the feature file {reason}"
            ) from error

    def __repr__(self):
        return f"NpyFeatureStore({self.directory!r})"


def _not_npy_problem(path):
    """ "(not a .npy file: ...)" when the file does not start as one (numpy
    would call it pickled data), else ""."""
    magic = np.lib.format.MAGIC_PREFIX
    try:
        with open(path, "rb") as stream:
            start = stream.read(len(magic))
    except OSError:
        return ""
    if start == magic:
        return ""
    return (
        f"(not a .npy file: it starts with {start!r}, a .npy file with {magic!r}; "
        "corrupt or of another format)"
    )


def _npy_size_problem(path):
    """ ", the header claims shape S (B bytes) but the file holds M" when it does."""
    try:
        with open(path, "rb") as stream:
            version = np.lib.format.read_magic(stream)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
            else:
                return ""
            offset = stream.tell()
        size = os.path.getsize(path)
    except (OSError, ValueError, EOFError):
        return ""
    claimed = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if offset + claimed <= size:
        return ""
    return (
        f"; its header claims shape {tuple(shape)} ({claimed} bytes of {dtype}) "
        f"but the file holds {size - offset} bytes of data"
    )


class Hdf5FeatureStore(FeatureStore):
    """One HDF5 file, a [T, D] dataset per video keyed by ID or v_ID.

    A key may also name a group holding exactly one dataset. The file is
    opened on first use and reopened after a fork or unpickling, so a store
    can be handed to worker processes.

    Args:
        path: the .h5 / .hdf5 file.
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        self.description = self.path
        self._handle, self._pid = None, None
        self._keys = frozenset(self._file().keys())

    def _file(self):
        import h5py  # only HDF5 users need it

        if self._handle is None or self._pid != os.getpid():
            if not os.path.isfile(self.path):
                raise DataError(f"{self.path}: HDF5 feature file not found.")
            try:
                self._handle = h5py.File(self.path, "r")
            except OSError as error:
                raise DataError(
                    f"{self.path}: cannot open the HDF5 feature file: {error}"
                ) from error
            self._pid = os.getpid()
        return self._handle

    def _find(self, video_id):
        for key in feature_key_candidates(video_id):
            if key in self._keys:
                return f"{self.path}:/{key}"
        return None

    def _dataset(self, video_id, location):
        import h5py

        key = location.rsplit(":/", 1)[1]
        try:
            node = self._file()[key]
            if isinstance(node, h5py.Group):
                datasets = [
                    name for name in node if isinstance(node[name], h5py.Dataset)
                ]
                if len(datasets) != 1:
                    raise DataError(
                        f"{location}: video {video_id}: expected a dataset or a group "
                        f"holding one dataset, found a group with datasets {datasets}."
                    )
                node = node[datasets[0]]
            return node
        except (OSError, KeyError, RuntimeError) as error:
            raise DataError(
                f"{location}: video {video_id}: cannot read the dataset: {error}"
            ) from error

    def _read(self, video_id, location):
        dataset = self._dataset(video_id, location)
        try:
            return np.asarray(dataset[()])
        except (OSError, RuntimeError, TypeError, ValueError) as error:
            raise DataError(
                f"{location}: video {video_id}: cannot read the dataset: {error}"
            ) from error

    def _shape(self, video_id, location):
        dataset = self._dataset(video_id, location)
        return dataset.shape, dataset.dtype

    def close(self):
        if self._handle is not None and self._pid == os.getpid():
            self._handle.close()
        self._handle, self._pid = None, None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_handle"], state["_pid"] = None, None
        return state

    def __repr__(self):
        return f"Hdf5FeatureStore({self.path!r})"


def written_features_path(root, format):
    """Where `feature_writer(root, format)` writes: ROOT/features (a folder of
    .npy files) or ROOT/features.h5."""
    return os.path.join(root, "features.h5" if format == "hdf5" else "features")


@contextlib.contextmanager
def feature_writer(root, format):
    """Yields write(key, features [T, D]), which stores one video's array where
    `open_feature_store` finds it: ROOT/features/KEY.npy ("npy") or dataset
    KEY of ROOT/features.h5 ("hdf5": datasets in creation order, without
    their own timestamps)."""
    path = written_features_path(root, format)
    if format == "npy":
        os.makedirs(path)

        def write(key, features):
            np.save(os.path.join(path, key + ".npy"), features)

        yield write
        return
    import h5py  # only the HDF5 format needs it

    # Videos in the order written, and no timestamps (the root group's too),
    # so that the same features make the same bytes.
    creation = h5py.h5p.create(h5py.h5p.FILE_CREATE)
    creation.set_obj_track_times(False)
    creation.set_link_creation_order(
        h5py.h5p.CRT_ORDER_TRACKED | h5py.h5p.CRT_ORDER_INDEXED
    )
    file_id = h5py.h5f.create(os.fsencode(path), h5py.h5f.ACC_TRUNC, fcpl=creation)
    with h5py.File(file_id) as handle:

        def write(key, features):
            handle.create_dataset(key, data=features, track_times=False)

        yield write


def check_feature_length(where, num_steps, duration, timing=None):
    """Checks that `num_steps` feature steps fit a video of `duration` seconds.

    The steps cover T * stride / fps seconds. Within LENGTH_WARN_FRACTION of
    the duration (plus LENGTH_SLACK_STEPS steps) they fit; further apart the
    video is still used and a one-line warning is returned for the caller to
    log and count; beyond a factor LENGTH_SKIP_FACTOR either way (plus the
    slack) the clips would not describe the video and `DataError` is raised.

    Args:
        where: "FILE: video ID", the start of the messages.
        num_steps: T.
        duration: the video's duration in seconds.
        timing: `FeatureTiming` (default HACS_TIMING).

    Returns:
        None, or the warning message.
    """
    timing = timing or HACS_TIMING
    duration = float(duration)
    covered = num_steps * timing.step_seconds
    slack = LENGTH_SLACK_STEPS * timing.step_seconds
    expected = timing.num_steps(duration) if np.isfinite(duration) else None
    text = (
        f"{where}: {num_steps} feature steps cover {covered:.1f} s "
        f"({timing.stride} frames each at {timing.fps:g} fps) but the duration "
        f"is {duration:.6g} s (about {expected} steps)"
    )
    if not (
        duration / LENGTH_SKIP_FACTOR - slack
        <= covered
        <= duration * LENGTH_SKIP_FACTOR + slack
    ):
        raise DataError(
            f"{text}; more than {LENGTH_SKIP_FACTOR:g} times apart, so the "
            "features do not belong to this duration."
        )
    if abs(covered - duration) > LENGTH_WARN_FRACTION * duration + slack:
        return f"{text}; more than {LENGTH_WARN_FRACTION:.0%} apart, used anyway."
    return None


def open_feature_store(path):
    """`NpyFeatureStore` for a directory, `Hdf5FeatureStore` for an .h5/.hdf5 file."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return NpyFeatureStore(path)
    if not os.path.exists(path):
        raise DataError(
            f"{path}: features not found; expected a directory of .npy files or "
            f"an HDF5 file ({', '.join(HDF5_SUFFIXES)})."
        )
    if path.lower().endswith(HDF5_SUFFIXES):
        return Hdf5FeatureStore(path)
    raise DataError(
        f"{path}: unknown feature format; expected a directory of .npy files or "
        f"an HDF5 file ({', '.join(HDF5_SUFFIXES)})."
    )


def find_usable_videos(annotations, store, feature_dim=None, check_values=True):
    """The videos whose features are usable, without keeping any in memory.

    Args:
        annotations: an `Annotations` (its videos are checked) or video ids.
        store: a `FeatureStore`.
        feature_dim: expected width D; None takes the first readable video's.
        check_values: also read the values to reject NaN/inf (slower); with
            False only shapes are checked and `load` catches bad values later.

    Returns:
        (usable video ids in order, [(video_id, reason), ...] skipped).
        Logs one warning per skipped video and one count line.

    Raises:
        DataError: when no video is usable.
    """
    return _scan(annotations, store, feature_dim, check_values, keep=False)


def load_usable_videos(annotations, store, feature_dim=None):
    """Like `find_usable_videos`, but returns {video_id: float32 [T, D]}.

    For sets that fit in memory; skipping and logging are the same.
    """
    return _scan(annotations, store, feature_dim, check_values=True, keep=True)


def _scan(annotations, store, feature_dim, check_values, keep):
    video_ids = list(
        annotations.videos if hasattr(annotations, "videos") else annotations
    )
    usable, loaded, skipped = [], {}, []
    for video_id in video_ids:
        try:
            if keep:
                features = store.load(video_id, feature_dim)
                loaded[video_id] = features
                width = features.shape[1]
            else:
                width = store.check(video_id, feature_dim, check_values)[1]
        except DataError as error:
            skipped.append((video_id, str(error)))
            logger.warning("Skipping video %s: %s", video_id, error)
            continue
        if feature_dim is None:
            feature_dim = width
        usable.append(video_id)
    level = logging.WARNING if skipped else logging.INFO
    logger.log(
        level,
        "Features (%s): %d of %d videos usable, %d skipped.",
        store.description,
        len(usable),
        len(video_ids),
        len(skipped),
    )
    if not usable:
        first = f" First reason: {skipped[0][1]}" if skipped else ""
        raise DataError(
            f"{store.description}: none of the {len(video_ids)} videos has usable "
            f"features.{first}"
        )
    return (loaded if keep else usable), skipped
