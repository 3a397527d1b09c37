"""A subset's resampled clips and proposal targets, computed once and cached.

numpy only. The cache is a folder of .npy arrays (memory-mapped when read, so
HACS-sized caches need not fit in memory) plus `index.json`; it is built in a
temporary folder and renamed into place, so an interrupted build is never
mistaken for a finished one. The builder holds an flock on a file inside the
temporary folder; the next build removes temporary folders whose lock nobody
holds (their builder was killed).
"""

import concurrent.futures
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time

import numpy as np

from tal_keras.atomic import umask, write_json_atomic
from tal_keras.clips import resample_to_clips
from tal_keras.errors import DataError
from tal_keras.targets import proposal_targets

logger = logging.getLogger("tal_keras")

_CACHE_VERSION = 2  # 2: features checked against durations and magnitude
_BUILD_LOCK = ".building"  # flock-ed by the builder inside its temporary folder
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
        self.clips = np.asarray(self.clips)
        self.max_iou = np.asarray(self.max_iou)
        self.classes = np.asarray(self.classes)
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
    remove_abandoned_builds(root)
    building = tempfile.mkdtemp(dir=root, prefix=f".{name}-{key}.")
    os.chmod(building, 0o777 & ~umask())  # mkdtemp's 0700 would stay after rename
    with open(os.path.join(building, _BUILD_LOCK), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
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
            try:
                os.rename(building, folder)
            except OSError:
                # Another process finished the same cache first; theirs is identical.
                shutil.rmtree(building, ignore_errors=True)
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
    return ClipCache(folder)


def remove_abandoned_builds(root):
    """Removes the temporary folders of builds that were killed under `root`.

    A build in progress holds an flock on its `.building` file, which the
    kernel releases when the process dies; a folder whose lock can be taken
    is abandoned. Returns the removed folders.
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
    videos = list(annotations.videos.values())

    def prepare(video):
        try:
            features = store.load(
                video.video_id,
                feature_dim=feature_dim,
                duration=video.duration,
                timing=timing,
            )
        except DataError as error:
            return video, None, str(error), None
        where = f"{store.path_of(video.video_id)}: video {video.video_id}"
        length_warning = store.length_warning(
            video.video_id, features.shape[0], video.duration, timing
        )
        clips = resample_to_clips(features, video.duration, lattice.num_clips, timing)
        with np.errstate(over="ignore"):  # values float16 cannot hold become inf
            representable = np.isfinite(clips.astype(dtype)).all()
        if not representable:
            limit = float(np.finfo(dtype).max)
            return (
                video,
                None,
                f"{where}: clip values beyond {dtype}'s +-{limit:g}; use --cache_dtype=float32.",
                None,
            )
        return video, clips, None, length_warning

    usable, skipped, length_warnings = [], [], []
    clips_path = os.path.join(folder, "clips.partial.npy")
    clips_array = np.lib.format.open_memmap(
        clips_path,
        mode="w+",
        dtype=dtype,
        shape=(len(videos), lattice.num_clips, feature_dim),
    )
    max_iou = np.zeros((len(videos), lattice.num_proposals), dtype=np.float32)
    classes = np.full((len(videos), lattice.num_proposals), -1, dtype=np.int16)
    with concurrent.futures.ThreadPoolExecutor(num_workers) as pool:
        for video, clips, reason, length_warning in pool.map(prepare, videos):
            if reason is not None:
                logger.warning("skipping video %s: %s", video.video_id, reason)
                skipped.append((video.video_id, reason))
                continue
            if length_warning is not None:
                logger.warning("%s", length_warning)
                length_warnings.append((video.video_id, length_warning))
            row = len(usable)
            clips_array[row] = clips
            max_iou[row], classes[row] = proposal_targets(
                lattice, video.duration, video.segments, video.labels
            )
            usable.append(video)
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
    if not usable:
        raise DataError(
            f"{getattr(store, 'description', store)}: every one of the "
            f"{len(videos)} videos was skipped; first reason: "
            f"{skipped[0][1] if skipped else 'no videos in the subset'}"
        )
    clips_array.flush()
    count = len(usable)
    # Trim to the usable rows: copy into the final file (cheap next to loading).
    final = np.lib.format.open_memmap(
        os.path.join(folder, "clips.npy"),
        mode="w+",
        dtype=dtype,
        shape=(count, lattice.num_clips, feature_dim),
    )
    for begin in range(0, count, 256):
        end = min(begin + 256, count)  # the partial file has a row per video
        final[begin:end] = clips_array[begin:end]
    final.flush()
    del clips_array, final
    os.remove(clips_path)
    np.save(os.path.join(folder, "max_iou.npy"), max_iou[:count])
    np.save(os.path.join(folder, "classes.npy"), classes[:count])
    write_json_atomic(
        os.path.join(folder, "index.json"),
        {
            "video_ids": [video.video_id for video in usable],
            "durations": [video.duration for video in usable],
            "skipped": skipped,
            "length_warnings": length_warnings,
        },
    )
