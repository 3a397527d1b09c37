"""A subset's resampled clips and proposal targets, computed once and cached.

numpy only. The cache is a folder of .npy arrays (memory-mapped when read, so
HACS-sized caches need not fit in memory) plus `index.json`; it is built in a
folder `.NAME-KEY.building` and renamed into place, so an interrupted build is
never mistaken for a finished one. The builder holds an flock on a file inside
that folder (a second process building the same cache waits for it) and
writes the arrays in blocks of videos, recording after each block how far it
got: a killed build resumes from its last block, and the builder's memory
does not grow with the number of videos. Build folders that cannot resume
(no progress record, or made for a configuration since changed) are removed
once their lock is free.
"""

import collections
import concurrent.futures
import contextlib
import fcntl
import hashlib
import io
import itertools
import json
import logging
import mmap
import os
import shutil
import time

import numpy as np

from tal_keras.atomic import umask, write_json_atomic
from tal_keras.clips import resample_to_clips
from tal_keras.errors import DataError
from tal_keras.targets import proposal_targets

logger = logging.getLogger("tal_keras")

_CACHE_VERSION = 2  # 2: features checked against durations and magnitude
_BUILD_LOCK = ".building"  # flock-ed by the builder inside its build folder
_BUILDING_SUFFIX = ".building"  # of the build folder, .NAME-KEY.building
_PROGRESS = "progress.json"  # in the build folder: how far the build got
_BLOCK_VIDEOS = 64  # videos per written block: what a killed build redoes at most
_LOCKLESS_GRACE_SECONDS = 60  # a folder made but not yet locked is this young


class ClipCache:
    """Clips and targets of the usable videos of one subset.

    Attributes:
        video_ids: list of V video ids, in annotation order.
        durations: float64 [V] seconds.
        clips: [V, N, D] resampled clip features (memory-mapped).
        max_iou: float32 [V, P] max tIoU of each lattice proposal with the GT.
        classes: int16 [V, P] class of the best-matching segment, -1 if none
            above the classifier's IoU threshold.
        skipped: list of (video_id, reason) left out when the cache was built.
        length_warnings: list of (video_id, message) of videos kept although
            their feature length does not fit their duration.
    """

    def __init__(self, folder):
        self.folder = folder
        with open(os.path.join(folder, "index.json")) as stream:
            index = json.load(stream)
        self.video_ids = index["video_ids"]
        self.skipped = [tuple(item) for item in index["skipped"]]
        self.length_warnings = [
            tuple(item) for item in index.get("length_warnings", [])
        ]
        self.durations = np.asarray(index["durations"], dtype=np.float64)
        self.clips = np.load(os.path.join(folder, "clips.npy"), mmap_mode="r")
        self.max_iou = np.load(os.path.join(folder, "max_iou.npy"), mmap_mode="r")
        self.classes = np.load(os.path.join(folder, "classes.npy"), mmap_mode="r")

    def __len__(self):
        return len(self.video_ids)

    def load_into_memory(self):
        """Replaces the memory maps by in-memory arrays (small caches)."""
        # np.array copies; np.asarray of a memmap is a view of the same map.
        self.clips = np.array(self.clips)
        self.max_iou = np.array(self.max_iou)
        self.classes = np.array(self.classes)
        return self

    def subset(self, indices):
        """A `CacheSubset` of the videos at `indices` (rows of this cache)."""
        return CacheSubset(self, indices)


class CacheSubset:
    """Some videos of a `ClipCache`, without copying its arrays: `clips`,
    `max_iou` and `classes` read the base cache's rows on indexing, so that
    a held-out slice of a HACS-sized memory-mapped cache costs nothing.

    Args:
        cache: the `ClipCache`.
        indices: int [V'] rows of `cache`, kept in ascending order (sorted
            reads stay sequential in a memory map).
    """

    def __init__(self, cache, indices):
        self.rows = np.unique(np.asarray(indices, np.int64))
        if self.rows.size and not 0 <= self.rows[0] <= self.rows[-1] < len(cache):
            raise IndexError(f"subset rows outside 0..{len(cache) - 1}")
        self.video_ids = [cache.video_ids[row] for row in self.rows]
        self.durations = cache.durations[self.rows]
        self.skipped = []
        self.length_warnings = []
        self.clips = _Rows(cache.clips, self.rows)
        self.max_iou = _Rows(cache.max_iou, self.rows)
        self.classes = _Rows(cache.classes, self.rows)

    def __len__(self):
        return len(self.video_ids)


class _Rows:
    """Rows `rows` of `array`, read on indexing: [k] or [index array]."""

    def __init__(self, array, rows):
        self.array = array
        self.rows = rows
        self.shape = (len(rows), *array.shape[1:])
        self.dtype = array.dtype
        self.nbytes = int(np.prod(self.shape)) * array.dtype.itemsize

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, index):
        return self.array[self.rows[index]]

    def __array__(self, dtype=None, copy=None):
        rows = np.asarray(self.array[self.rows])
        return rows if dtype is None else rows.astype(dtype)


def drop_mapped_pages(array):
    """Unmaps from this process the pages that reading `array` (a cache's
    memory-mapped array, or the rows of a `CacheSubset` view of one) mapped:
    they stay in the page cache, but no longer count in the process's RSS,
    which then does not grow with the size of the cache read. Arrays in
    memory are left alone."""
    base = getattr(array, "array", array)  # a CacheSubset view's rows
    mapping = getattr(base, "_mmap", None)  # where numpy's memmap keeps it
    if isinstance(mapping, mmap.mmap):
        mapping.madvise(mmap.MADV_DONTNEED)


def cache_key(**fields):
    """A short hash of everything a cache's content depends on."""
    text = json.dumps(
        {"version": _CACHE_VERSION, **fields}, sort_keys=True, default=str
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def build_or_open_cache(
    root,
    name,
    annotations,
    store,
    lattice,
    timing,
    feature_dim,
    dtype="float32",
    num_workers=4,
    key_fields=None,
):
    """Opens the cache of this configuration under `root`, building it if missing.

    Args:
        root: folder holding caches.
        name: readable prefix of the cache folder (e.g. the subset).
        annotations: `Annotations` of the subset (tal_keras.data.annotations).
        store: a feature store (tal_keras.data.features).
        lattice: the `Lattice` targets are computed on.
        timing: `FeatureTiming` of the features.
        feature_dim: expected feature width D.
        dtype: dtype of the cached clips.
        num_workers: threads loading and resampling features.
        key_fields: extra values the cache content depends on (paths, mtimes).

    Returns:
        a `ClipCache`. Videos with unusable features are skipped with one
        logged line each; a subset where every video is skipped is an error.
    """
    key = cache_key(
        name=name,
        num_clips=lattice.num_clips,
        scale_layers=lattice.scale_layers,
        timing=timing,
        feature_dim=feature_dim,
        dtype=dtype,
        videos=[
            (
                video.video_id,
                video.duration,
                video.segments.tolist(),
                video.labels.tolist(),
            )
            for video in annotations.videos.values()
        ],
        extra=key_fields or {},
    )
    folder = os.path.join(root, f"{name}-{key}")
    if os.path.exists(os.path.join(folder, "index.json")):
        return ClipCache(folder)
    os.makedirs(root, exist_ok=True)
    building = os.path.join(root, f".{name}-{key}{_BUILDING_SUFFIX}")
    lock_path = os.path.join(building, _BUILD_LOCK)
    while not os.path.exists(os.path.join(folder, "index.json")):
        try:
            os.makedirs(building, exist_ok=True)
            os.chmod(building, 0o777 & ~umask())  # the finished folder keeps it
            lock = open(lock_path, "a")  # noqa: SIM115 (closed by the with below)
        except FileNotFoundError:
            continue  # renamed into place or removed meanwhile
        with lock:
            # Waits while another process builds the same cache.
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not _is_same_file(lock, lock_path):
                continue  # renamed into place or removed while this one waited
            if os.path.exists(os.path.join(folder, "index.json")):
                # Built by the process waited for: this folder is a leftover.
                shutil.rmtree(building, ignore_errors=True)
                break
            remove_abandoned_builds(root, obsolete_of=(name, key))
            try:
                _build(
                    building,
                    annotations,
                    store,
                    lattice,
                    timing,
                    feature_dim,
                    dtype,
                    num_workers,
                )
            except DataError:
                shutil.rmtree(building, ignore_errors=True)
                raise
            # Anything else (a signal, a full disk) leaves the build to resume.
            os.rename(building, folder)  # still locked: waiters then find it done
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(folder, _BUILD_LOCK))
    return ClipCache(folder)


def _is_same_file(stream, path):
    try:
        return os.path.samestat(os.fstat(stream.fileno()), os.stat(path))
    except FileNotFoundError:
        return False


def remove_abandoned_builds(root, obsolete_of=None):
    """Removes the folders of killed builds under `root` that cannot resume.

    A build in progress holds an flock on its `.building` file, which the
    kernel releases when the process dies. An unlocked build folder with a
    progress record is kept for the next build of the same cache to resume;
    one without is removed, and so is, with `obsolete_of=(name, key)`, one of
    cache `name` under another key (its configuration changed). Returns the
    removed folders.
    """
    removed = []
    for entry in os.scandir(root):
        if not (entry.name.startswith(".") and entry.is_dir(follow_symlinks=False)):
            continue
        lock_path = os.path.join(entry.path, _BUILD_LOCK)
        if not os.path.exists(lock_path):
            # Made but not yet locked (a builder just starting), or never locked.
            with contextlib.suppress(OSError):
                if time.time() - entry.stat().st_mtime > _LOCKLESS_GRACE_SECONDS:
                    shutil.rmtree(entry.path, ignore_errors=True)
                    removed.append(entry.path)
            continue
        try:
            with open(lock_path, "r+") as stream:
                try:
                    fcntl.flock(stream, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live build
                if _is_resumable(entry, obsolete_of):
                    continue
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(entry.path)
        except OSError:
            continue
    if removed:
        logger.warning(
            "removed %d unfinished cache build(s) left by a killed run in %s",
            len(removed),
            root,
        )
    return removed


def _is_resumable(entry, obsolete_of):
    """Whether the unlocked build folder `entry` is worth resuming."""
    if not os.path.exists(os.path.join(entry.path, _PROGRESS)):
        return False
    if obsolete_of is None or not entry.name.endswith(_BUILDING_SUFFIX):
        return True
    name, key = obsolete_of
    this_cache = entry.name[1 : -len(_BUILDING_SUFFIX)]
    return not this_cache.startswith(f"{name}-") or this_cache == f"{name}-{key}"


class _RowFile:
    """A [V, ...] .npy array written row block by row block in place (no
    memory map: what is written goes to the page cache, not to the builder's
    memory), reopened as it is when a build resumes.

    Args:
        path: the .npy file.
        dtype: its dtype.
        row_shape: shape of one row.
        num_rows: V.
        resume: open an existing file of that shape (raises `ValueError`
            when it is not one) instead of making a new one.
    """

    def __init__(self, path, dtype, row_shape, num_rows, resume):
        self.path = path
        self.dtype = np.dtype(dtype)
        self.row_shape = tuple(row_shape)
        self.row_bytes = int(np.prod(self.row_shape)) * self.dtype.itemsize
        header = self._header(num_rows)
        if resume:
            with open(path, "rb") as stream:
                if stream.read(len(header)) != header:
                    raise ValueError(f"{path}: not the array this build writes")
            self.handle = os.open(path, os.O_RDWR)
        else:
            self.handle = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o666)
            os.write(self.handle, header)
        self.offset = len(header)
        os.ftruncate(self.handle, self.offset + num_rows * self.row_bytes)

    def _header(self, num_rows):
        # numpy leaves room in the header for the first axis to grow, so its
        # length does not depend on num_rows and `trim` rewrites it in place.
        stream = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            stream,
            {
                "descr": np.lib.format.dtype_to_descr(self.dtype),
                "fortran_order": False,
                "shape": (num_rows, *self.row_shape),
            },
        )
        return stream.getvalue()

    def write(self, first_row, rows):
        """Writes `rows` [k, ...] at rows first_row .. first_row + k - 1."""
        data = np.ascontiguousarray(rows, dtype=self.dtype)
        os.pwrite(self.handle, data, self.offset + first_row * self.row_bytes)

    def sync(self):
        os.fdatasync(self.handle)

    def trim(self, num_rows):
        """Keeps the first `num_rows` rows and closes the file."""
        header = self._header(num_rows)
        if len(header) != self.offset:
            raise ValueError(f"{self.path}: the header of {num_rows} rows differs")
        os.pwrite(self.handle, header, 0)
        os.ftruncate(self.handle, self.offset + num_rows * self.row_bytes)
        os.fsync(self.handle)
        self.close()

    def close(self):
        if self.handle is not None:
            os.close(self.handle)
            self.handle = None


def _build(
    folder,
    annotations,
    store,
    lattice,
    timing,
    feature_dim,
    dtype,
    num_workers,
):
    """Builds (or resumes building) the cache's arrays and index in `folder`.

    Videos are read by `num_workers` threads, at most a few ahead of the one
    written, and written in blocks of `_BLOCK_VIDEOS`; after each block the
    arrays are synced and `progress.json` records how far the build got, so
    a killed build resumes from its last block and memory stays bounded
    whatever the number of videos.
    """
    videos = list(annotations.videos.values())
    num_proposals = lattice.num_proposals

    def prepare(video):
        try:
            features = store.load(
                video.video_id,
                feature_dim=feature_dim,
                duration=video.duration,
                timing=timing,
            )
        except DataError as error:
            return video, str(error), None, None
        where = f"{store.path_of(video.video_id)}: video {video.video_id}"
        length_warning = store.length_warning(
            video.video_id, features.shape[0], video.duration, timing
        )
        clips = resample_to_clips(features, video.duration, lattice.num_clips, timing)
        # Rounding is monotonic: every value fits if the extremes do (a check
        # on two values instead of a pass over float16, slow in numpy).
        with np.errstate(over="ignore"):  # values float16 cannot hold become inf
            extremes = np.array([clips.min(), clips.max()]).astype(dtype)
        if not np.isfinite(extremes).all():
            limit = float(np.finfo(dtype).max)
            return (
                video,
                f"{where}: clip values beyond {dtype}'s +-{limit:g}; use --cache_dtype=float32.",
                None,
                None,
            )
        clips = clips.astype(dtype, copy=False)
        targets = proposal_targets(
            lattice, video.duration, video.segments, video.labels
        )
        return video, None, length_warning, (clips, *targets)

    progress = _read_progress(folder, len(videos))
    arrays = None
    if progress is not None:
        try:
            arrays = _open_arrays(folder, videos, lattice, feature_dim, dtype, True)
        except (OSError, ValueError):
            progress = None  # arrays of another shape: start afresh
    if progress is None:
        arrays = _open_arrays(folder, videos, lattice, feature_dim, dtype, False)
        progress = {
            "num_videos": len(videos),
            "videos_done": 0,
            "rows": 0,
            "skipped": [],
            "length_warnings": [],
        }
        _write_progress(folder, progress, arrays)
    elif progress["videos_done"]:
        logger.info(
            "resuming the cache build in %s at video %d of %d",
            folder,
            progress["videos_done"],
            len(videos),
        )
    block = {
        "clips": np.empty((_BLOCK_VIDEOS, lattice.num_clips, feature_dim), dtype),
        "max_iou": np.empty((_BLOCK_VIDEOS, num_proposals), np.float32),
        "classes": np.empty((_BLOCK_VIDEOS, num_proposals), np.int16),
    }
    filled = since_record = 0

    def write_block():
        first_row = progress["rows"]
        for name, rows in block.items():
            arrays[name].write(first_row, rows[:filled])
        progress["rows"] += filled

    try:
        with concurrent.futures.ThreadPoolExecutor(num_workers) as pool:
            for video, reason, length_warning, values in _ordered(
                pool, prepare, videos[progress["videos_done"] :], 2 * num_workers
            ):
                if reason is not None:
                    logger.warning("skipping video %s: %s", video.video_id, reason)
                    progress["skipped"].append((video.video_id, reason))
                else:
                    if length_warning is not None:
                        logger.warning("%s", length_warning)
                        progress["length_warnings"].append(
                            (video.video_id, length_warning)
                        )
                    for name, value in zip(block, values):
                        block[name][filled] = value
                    filled += 1
                progress["videos_done"] += 1
                since_record += 1
                if since_record == _BLOCK_VIDEOS:
                    write_block()
                    filled = since_record = 0
                    _write_progress(folder, progress, arrays)
        write_block()
    except BaseException:
        for array in arrays.values():
            array.close()  # the files stay for the next build to resume
        raise
    skipped, length_warnings = progress["skipped"], progress["length_warnings"]
    if skipped:
        logger.warning(
            "skipped %d of %d videos (reasons above)", len(skipped), len(videos)
        )
    if length_warnings:
        logger.warning(
            "%d of %d videos have features of a length that does not fit their "
            "duration (used anyway; lines above)",
            len(length_warnings),
            len(videos),
        )
    count = progress["rows"]
    if not count:
        for array in arrays.values():
            array.close()
        raise DataError(
            f"{getattr(store, 'description', store)}: every one of the "
            f"{len(videos)} videos was skipped; first reason: "
            f"{skipped[0][1] if skipped else 'no videos in the subset'}"
        )
    for array in arrays.values():
        array.trim(count)
    skipped_ids = {video_id for video_id, _ in skipped}
    usable = [video for video in videos if video.video_id not in skipped_ids]
    write_json_atomic(
        os.path.join(folder, "index.json"),
        {
            "video_ids": [video.video_id for video in usable],
            "durations": [video.duration for video in usable],
            "skipped": skipped,
            "length_warnings": length_warnings,
        },
    )
    os.remove(os.path.join(folder, _PROGRESS))


def _ordered(pool, function, items, ahead):
    """function(item) for each of `items`, in order, computed by `pool` at
    most `ahead` items ahead of the one yielded (bounded memory)."""
    pending = collections.deque()
    items = iter(items)
    for item in itertools.islice(items, ahead):
        pending.append(pool.submit(function, item))
    while pending:
        result = pending.popleft().result()
        for item in itertools.islice(items, 1):
            pending.append(pool.submit(function, item))
        yield result


def _open_arrays(folder, videos, lattice, feature_dim, dtype, resume):
    """{name: _RowFile} of the cache's arrays, one row per video (trimmed to
    the usable ones at the end)."""
    shapes = {
        "clips": (dtype, (lattice.num_clips, feature_dim)),
        "max_iou": (np.float32, (lattice.num_proposals,)),
        "classes": (np.int16, (lattice.num_proposals,)),
    }
    return {
        name: _RowFile(
            os.path.join(folder, f"{name}.npy"),
            array_dtype,
            row_shape,
            len(videos),
            resume,
        )
        for name, (array_dtype, row_shape) in shapes.items()
    }


def _read_progress(folder, num_videos):
    """The progress record of a build to resume in `folder`, or None to start
    afresh (none, unreadable, or of another number of videos)."""
    try:
        with open(os.path.join(folder, _PROGRESS)) as stream:
            progress = json.load(stream)
        if progress["num_videos"] != num_videos:
            return None
        for name in ("clips", "max_iou", "classes"):
            if not os.path.exists(os.path.join(folder, f"{name}.npy")):
                return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    progress["skipped"] = [tuple(item) for item in progress["skipped"]]
    progress["length_warnings"] = [tuple(item) for item in progress["length_warnings"]]
    return progress


def _write_progress(folder, progress, arrays):
    """Syncs the arrays, then records `progress` (rows written, videos done)."""
    for array in arrays.values():
        array.sync()
    write_json_atomic(os.path.join(folder, _PROGRESS), progress)
