"""Ground truth in the ActivityNet JSON format (HACS, ActivityNet 1.3). numpy only.

The file looks like::

    {"database": {VIDEO_ID: {"subset": "training" | "validation" | "testing",
                             "duration": 92.17,        # or "92.17" (HACS)
                             "annotations": [{"label": "Archery",
                                              "segment": [3.2, 40.5]}]}}}

Testing videos may have no "annotations" key or an empty list. Segments are
clamped to [0, duration]; those left empty or inverted are dropped and counted
in one log line. A video id listed twice (the last entry is used) and videos
of subsets other than training/validation/testing (left out of the standard
subsets: "train", "Validation") get one warning line each with a count.
Anything else that is wrong raises `DataError` naming the file and the video.
"""

import dataclasses
import json
import logging
import math
import os

import numpy as np

from tal_keras.errors import DataError

logger = logging.getLogger("tal_keras")

VIDEO_PREFIX = "v_"  # ActivityNet feature files prefix YouTube ids; HACS ids have none
STANDARD_SUBSETS = ("training", "validation", "testing")


def feature_key_candidates(video_id):
    """The names a video's features may be stored under, the id itself first.

    HACS ids have no "v_" prefix, ActivityNet feature files do; both match:
    "abc" -> ("abc", "v_abc"), "v_abc" -> ("v_abc", "abc").
    """
    video_id = str(video_id)
    if video_id.startswith(VIDEO_PREFIX) and len(video_id) > len(VIDEO_PREFIX):
        return (video_id, video_id[len(VIDEO_PREFIX) :])
    return (video_id, VIDEO_PREFIX + video_id)


@dataclasses.dataclass(frozen=True, eq=False)
class VideoAnnotation:
    """One video's ground truth.

    Attributes:
        video_id: the id as written in the JSON file.
        subset: "training", "validation", "testing" (or the file's own name).
        duration: seconds, > 0.
        segments: float64 [K, 2], (start, end) seconds, 0 <= start < end <= duration.
        labels: int64 [K], index into `Annotations.class_names`.
    """

    video_id: str
    subset: str
    duration: float
    segments: np.ndarray
    labels: np.ndarray

    @property
    def num_segments(self):
        return int(self.labels.shape[0])


@dataclasses.dataclass(frozen=True, eq=False)
class Annotations:
    """The videos of one annotation file, filtered by subset and blocklist.

    Attributes:
        path: the JSON file read.
        videos: dict video_id -> `VideoAnnotation`, ordered by id.
        class_names: list of label names; a label's index is its class id.
        subsets: tuple of the subsets kept (None: all of them).
        dropped_segments: segments dropped as empty or inverted after clamping.
        blocked_videos: videos of the kept subsets removed by the blocklist.
    """

    path: str
    videos: dict
    class_names: list
    subsets: tuple = None
    dropped_segments: int = 0
    blocked_videos: int = 0

    def __len__(self):
        return len(self.videos)

    def __iter__(self):
        return iter(self.videos.values())

    def __getitem__(self, video_id):
        return self.videos[video_id]

    def __contains__(self, video_id):
        return video_id in self.videos

    @property
    def video_ids(self):
        return list(self.videos)

    @property
    def num_classes(self):
        return len(self.class_names)

    @property
    def num_segments(self):
        return sum(video.num_segments for video in self.videos.values())

    def summary(self):
        """One line: what was loaded, and what was dropped."""
        subsets = "all subsets" if self.subsets is None else "+".join(self.subsets)
        return (
            f"{self.path}: {len(self.videos)} videos ({subsets}), "
            f"{self.num_segments} segments, {self.num_classes} classes; "
            f"dropped {self.dropped_segments} empty or inverted segments, "
            f"{self.blocked_videos} blocklisted videos"
        )


def load_annotations(
    path, subset=None, category_file=None, blocklist=(), class_names=None
):
    """Reads an ActivityNet-style annotation file.

    Args:
        path: the JSON file.
        subset: None (every video), one subset name, or a tuple of them.
        category_file: optional text file, one label per line; line order is
            the class index. Without it (and without `class_names`) the
            classes are the sorted label names found anywhere in the file, so
            training and validation loads agree.
        blocklist: video ids to leave out (with or without "v_").
        class_names: optional explicit list of labels, instead of
            `category_file`.

    Returns:
        `Annotations`. Logs one summary line (a warning when segments were
        dropped) on the "tal_keras" logger.

    Raises:
        DataError: unreadable or malformed file, a video without a valid
            duration or subset, a segment that is not two finite numbers, a
            label missing from the given classes, or a subset not in the file.
    """
    path = os.fspath(path)
    database = read_database(path)
    if category_file is not None and class_names is not None:
        raise ValueError("Pass category_file or class_names, not both.")
    if category_file is not None:
        class_names = read_class_names(category_file)
    elif class_names is not None:
        class_names = _checked_class_names(list(class_names), "class_names")
    subsets = _subset_tuple(subset)
    blocked_ids = {key for video in blocklist for key in feature_key_candidates(video)}

    parsed = [
        _parse_video(path, video_id, entry) for video_id, entry in database.items()
    ]
    if class_names is None:
        class_names = sorted({label for video in parsed for label, _ in video[3]})
    class_index = {name: index for index, name in enumerate(class_names)}
    present = {video[1] for video in parsed}
    if subsets is not None:
        missing = [name for name in subsets if name not in present]
        if missing:
            raise DataError(
                f"{path}: no video of subset {missing}; the file has subsets "
                f"{sorted(present)}."
            )
        _warn_unusual_subsets(path, parsed, subsets)

    videos, dropped, blocked = {}, 0, 0
    for video_id, video_subset, duration, raw_segments in sorted(parsed):
        if subsets is not None and video_subset not in subsets:
            continue
        if video_id in blocked_ids:
            blocked += 1
            continue
        for label, _ in raw_segments:
            if label not in class_index:
                source = category_file if category_file is not None else "class_names"
                raise DataError(
                    f"{path}: video {video_id}: label {label!r} is not in "
                    f"{source} ({len(class_names)} classes)."
                )
        segments = np.array([s for _, s in raw_segments], np.float64).reshape(-1, 2)
        labels = np.array([class_index[label] for label, _ in raw_segments], np.int64)
        segments = np.clip(segments, 0.0, duration)
        keep = segments[:, 1] > segments[:, 0]
        dropped += int(np.count_nonzero(~keep))
        videos[video_id] = VideoAnnotation(
            video_id, video_subset, duration, segments[keep], labels[keep]
        )

    annotations = Annotations(
        path, videos, list(class_names), subsets, dropped, blocked
    )
    logger.log(
        logging.WARNING if dropped else logging.INFO, "%s", annotations.summary()
    )
    return annotations


def _warn_unusual_subsets(path, parsed, subsets):
    """One warning when videos sit in subsets outside the standard three that
    were not asked for (e.g. "train", "Validation"): they are left out."""
    counts = {}
    for _, subset, _, _ in parsed:
        if subset not in STANDARD_SUBSETS and subset not in subsets:
            counts[subset] = counts.get(subset, 0) + 1
    if counts:
        listed = ", ".join(
            f"{name!r}: {count}" for name, count in sorted(counts.items())
        )
        logger.warning(
            "%s: %d videos are in subsets other than %s and are left out "
            "(%s); rename the subsets or ask for them by name",
            path,
            sum(counts.values()),
            "/".join(STANDARD_SUBSETS),
            listed,
        )


def read_class_names(path):
    """Labels of a category file, one per line (blank lines ignored)."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as stream:
            names = [line.strip() for line in stream]
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read the category file: {error}") from error
    return _checked_class_names([name for name in names if name], path)


def _checked_class_names(names, source):
    if not names:
        raise DataError(f"{source}: no class names.")
    seen = set()
    for name in names:
        if not isinstance(name, str):
            raise DataError(f"{source}: class name {name!r} is not a string.")
        if name in seen:
            raise DataError(f"{source}: class {name!r} is listed twice.")
        seen.add(name)
    return names


def _subset_tuple(subset):
    if subset is None:
        return None
    if isinstance(subset, str):
        return (subset,)
    subsets = tuple(subset)
    if not subsets or not all(isinstance(name, str) for name in subsets):
        raise ValueError(f"subset must be a name or a tuple of names, got {subset!r}.")
    return subsets


def read_database(path, what="annotation file"):
    """{video_id: entry} of an ActivityNet-style JSON file's "database".

    The one reader of these files: the annotations here, the official metrics'
    ground truth (`metrics.load_ground_truth`) and serving's durations
    (`export.serve`) all read them through it, each then parsing the entries
    as strictly as it needs. Video ids that appear twice are warned about
    (the JSON keeps the last).

    Raises:
        DataError: missing, unreadable or invalid file, or no "database"
            object (the message names the file).
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as stream:
            content = json.load(stream, object_pairs_hook=_KeyCountingDict)
    except FileNotFoundError as error:
        raise DataError(f"{path}: {what} not found.") from error
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not valid JSON: {error}") from error
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read the {what}: {error}") from error
    return database_of(content, path)


def database_of(content, source):
    """The "database" object of loaded ActivityNet-style JSON `content`."""
    database = content.get("database") if isinstance(content, dict) else None
    if not isinstance(database, dict):
        raise DataError(
            f"{source}: expected a JSON object with a 'database' object mapping "
            "video ids to {'subset', 'duration', 'annotations'} (ActivityNet format)."
        )
    repeated = getattr(database, "repeated", ())
    if repeated:
        names = sorted(repeated)
        logger.warning(
            "%s: %d video ids appear more than once in the database (%s%s); "
            "the last entry of each is used",
            source,
            len(names),
            ", ".join(names[:5]),
            ", ..." if len(names) > 5 else "",
        )
    return database


class _KeyCountingDict(dict):
    """A JSON object that remembers which keys it saw more than once."""

    def __init__(self, pairs):
        super().__init__()
        self.repeated = set()
        for key, value in pairs:
            if key in self:
                self.repeated.add(key)
            self[key] = value


def _parse_video(path, video_id, entry):
    """(video_id, subset, duration, [(label, [start, end])]) of one entry."""
    where = f"{path}: video {video_id}"
    if not isinstance(entry, dict):
        raise DataError(f"{where}: the entry must be an object, got {entry!r}.")
    subset = entry.get("subset")
    if not isinstance(subset, str) or not subset:
        raise DataError(f'{where}: missing or invalid "subset" {subset!r}.')
    duration = finite_number(entry.get("duration"))
    if duration is None or duration <= 0:
        raise DataError(
            f'{where}: missing or invalid "duration" {entry.get("duration")!r}; '
            "expected a positive number of seconds."
        )
    raw_annotations = entry.get("annotations")
    if raw_annotations is None:
        raw_annotations = []
    if not isinstance(raw_annotations, list):
        raise DataError(f'{where}: "annotations" must be a list.')
    segments = []
    for annotation in raw_annotations:
        if not isinstance(annotation, dict):
            raise DataError(f"{where}: annotation {annotation!r} is not an object.")
        label = annotation.get("label")
        if not isinstance(label, str) or not label:
            raise DataError(f"{where}: annotation without a label: {annotation!r}.")
        segment = annotation.get("segment")
        bounds = (
            [finite_number(value, allow_string=False) for value in segment]
            if isinstance(segment, (list, tuple))
            else []
        )
        if len(bounds) != 2 or None in bounds:
            raise DataError(
                f"{where}: segment {segment!r} of label {label!r} is not two "
                "finite numbers [start, end]."
            )
        segments.append((label, bounds))
    return (str(video_id), subset, duration, segments)


def finite_number(value, allow_string=True):
    """float(value) when it is a finite number (or numeric string), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and allow_string:
        try:
            value = float(value)
        except ValueError:
            return None
    if not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None
