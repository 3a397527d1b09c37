"""ActivityNet evaluation: detection mAP and proposal AR-AN. numpy only.

This reproduces the official code of activitynet/ActivityNet, folder
Evaluation/ (eval_detection.py, eval_proposal.py, utils.py), including its
quirks, vectorised so that a 5,000-video validation set scores in seconds.
`bench/compare_official_eval.py` checks the numbers against the official code.

Reading the files (as the official `_import_ground_truth`/`_import_prediction`):
    - Ground truth: `{"database": {VIDEO_ID: {"subset": ..., "annotations":
      [{"label": ..., "segment": [start, end]}]}}}`. Only videos of `subset`
      count. Classes are the labels of that subset's segments, indexed in
      order of first appearance (videos in JSON order, annotations in list
      order). Videos of the subset with no segment play no part. A segment
      with end < start is kept as given, as officially (one warning line
      counts them).
    - Predictions: `{"results": {VIDEO_ID: [{"label": ..., "score": ...,
      "segment": [start, end]}]}}`; proposals need no label. Segment times go
      through `float()` (strings such as "3.2" are accepted, as officially);
      a segment with start > end is kept as given.
    - Video ids are matched exactly as strings, as officially: no `v_` prefix
      is added or removed. The ids of the predictions must be those of the
      ground-truth file (HACS and ActivityNet v1.3 ids have no `v_`). A
      warning is issued when no predicted video is a ground-truth video.
    - A predicted label that is not a class of the subset raises `DataError`
      (the official code dies with a KeyError). Predictions for videos that
      are not in the subset's ground truth are kept: in detection they are
      false positives, in proposals they count in the total number of
      proposals (the official `ratio`, see below).
    - `blocked_videos` replaces the official `check_status=True`, which
      downloads a list of blocked videos from a server: there is no network
      access here; pass the list yourself if you have it.

Detection (official `compute_average_precision_detection`):
    For each class c and each tIoU threshold: the class's predictions, taken
    in score order, are matched greedily; each walks the ground-truth segments
    of its video and class in decreasing tIoU; it stops (false positive) at
    the first one with tIoU < threshold, skips those already matched, and
    takes the first free one (true positive). No ground truth of class c in
    its video: false positive. AP = VOC 2011 interpolated AP
    (`interpolated_prec_rec`) with npos = number of segments of c. mAP =
    mean over the subset's classes (a class with no prediction has AP 0);
    average_mAP = mean of mAP over the thresholds (default 0.50:0.05:0.95,
    `np.linspace(0.5, 0.95, 10)` exactly as officially).

Proposals (official `average_recall_vs_avg_nr_proposals`):
    videos = the subset's videos with at least one segment, in JSON order.
    ratio = max_avg_nr_proposals * len(videos) / (number of proposals in the
    whole file, including videos outside the ground truth). Each video keeps
    its first min(int(n * ratio), n) proposals by score. A ground-truth video
    with no proposal counts as one proposal of tIoU 0 that does not enter the
    total. The 100-point grid: pcn = (1..100) / 100 * max_avg_nr_proposals *
    len(videos) / total_kept; at grid point k a video uses its first
    min(int(n_kept * pcn[k]), n_kept) proposals, and a segment is recalled if
    one of them has tIoU >= threshold. proposals_per_video = pcn * total_kept
    / len(videos), so point k is about k * max_avg_nr_proposals / 100
    proposals per video. AR@k = average recall (over thresholds) at grid
    point k * 100 / max_avg_nr_proposals (with the default 100: point k).
    AUC = trapz(average_recall, proposals_per_video) / proposals_per_video[-1],
    the fraction the official script prints as a percentage.

Order and ties (must be the official order for the same numbers):
    The official code sorts with numpy's default (not stable) argsort,
    ascending, then reversed: `scores.argsort()[::-1]`, on a pandas column
    built from the predictions with videos in JSON order and each video's
    predictions in list order. This module builds its arrays in exactly that
    order and calls the same `argsort()[::-1]` on arrays of the same values,
    length and dtype (int64 when every score is an integer, float64
    otherwise), so ties come out in the same order as the official code on
    the same numpy build. Which order that is depends on numpy's sort kernel:
    the scalar introsort sorts arrays of up to 16 elements by insertion
    (ties in file order, hence the later of two tied predictions first after
    the reversal), while the AVX-512 kernels numpy uses on recent x86 CPUs
    leave ties in no documented order; do not rely on either. It is applied
    (1) per class over the class's predictions (detection), (2) per
    prediction over the tIoU with the ground-truth segments of its video and
    class, listed in JSON order (which segment a prediction locks when two
    have the same tIoU; numpy sorts NaN last, so after the reversal a NaN
    tIoU, from two zero-length segments, is tried first and, since NaN < t
    is false, matches, as officially), and (3) per video over its proposals
    (proposals). Sums over classes and thresholds are taken in the official
    order too: on 600 random fixtures full of ties the results were
    bit-identical to the official code's (bench/compare_official_eval.py).
    The official code is Python 2, whose dicts iterate in no set order; run
    under Python 3 (as every port of it is) it reads JSON order, as here.

Deviations, on inputs where the official code crashes or returns NaN:
    a ground-truth subset with no segment, a video of the subset without
    `annotations`, non-finite segment times, NaN or non-numeric scores raise
    `DataError`; an empty prediction file gives mAP 0 and an empty proposal
    file (or no kept proposal on any ground-truth video) gives a zero
    recall curve and AUC 0.
"""

import dataclasses
import itertools
import json
import logging
import math
import os
import warnings

import numpy as np

from tal_keras.data.annotations import database_of, finite_number, read_database
from tal_keras.errors import DataError

logger = logging.getLogger("tal_keras")

# Exactly the official default: its 0.9 is 0.8999999999999999, which matters
# for a tIoU of exactly 0.9.
DEFAULT_TIOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
# The AR@k points reported by `evaluate_proposals` (the AR-AN curve has 100).
DEFAULT_AR_AT = (1, 5, 10, 100)


@dataclasses.dataclass(frozen=True)
class GroundTruth:
    """Ground-truth segments of one subset, in the official order.

    Attributes:
        source: the file path, or a description of the dict it came from.
        subset: the subset these segments belong to.
        video_ids: tuple of the subset's videos that have at least one
            segment, in JSON order.
        class_names: tuple of labels, in order of first appearance.
        segment_videos: int64 [G], index into `video_ids` of each segment.
        segments: float64 [G, 2], (start, end) in seconds, as given.
        labels: int64 [G], index into `class_names`.
        durations: {video_id: seconds or None} of the subset's videos (for
            the warnings about predictions past the end; unused in scores).
    """

    source: str
    subset: str
    video_ids: tuple
    class_names: tuple
    segment_videos: np.ndarray
    segments: np.ndarray
    labels: np.ndarray
    durations: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Predictions:
    """Predictions (or proposals) of a submission, in file order.

    Attributes:
        source: the file path, or a description of the dict it came from.
        video_ids: tuple of the videos of `results`, in JSON order (those
            with an empty list included).
        segment_videos: int64 [K], index into `video_ids` of each prediction;
            non-decreasing (each video's predictions are contiguous).
        segments: float64 [K, 2], (start, end) in seconds, as given.
        scores: int64 [K] when every score is an integer, else float64 [K]
            (the dtype pandas gives the official code).
        labels: int64 [K], index into `class_names`, or None when read
            without a ground truth (proposals).
        class_names: the ground truth's `class_names` the labels index, or
            None.
    """

    source: str
    video_ids: tuple
    segment_videos: np.ndarray
    segments: np.ndarray
    scores: np.ndarray
    labels: np.ndarray | None
    class_names: tuple | None = None


@dataclasses.dataclass(frozen=True)
class ProposalCurve:
    """The average recall vs average number of proposals curve.

    Attributes:
        tiou_thresholds: float64 [T].
        recall: float64 [T, 100], recall at each threshold and grid point.
        average_recall: float64 [100], `recall.mean(axis=0)`.
        proposals_per_video: float64 [100], average number of proposals per
            video at each grid point.
        auc: area under the curve divided by `proposals_per_video[-1]`.
        max_avg_nr_proposals: the average number of proposals at the last
            grid point.
    """

    tiou_thresholds: np.ndarray
    recall: np.ndarray
    average_recall: np.ndarray
    proposals_per_video: np.ndarray
    auc: float
    max_avg_nr_proposals: float

    def average_recall_at(self, num_proposals):
        """Average recall at `num_proposals` per video, a point of the grid.

        Raises:
            ValueError: if `num_proposals` is not on the 100-point grid.
        """
        if not self.on_grid(num_proposals):
            raise ValueError(
                f"AR@{num_proposals} is not on the grid of "
                f"max_avg_nr_proposals={self.max_avg_nr_proposals} "
                "(points k * max_avg_nr_proposals / 100, k = 1..100)."
            )
        point = num_proposals * 100 / self.max_avg_nr_proposals
        return float(self.average_recall[round(point) - 1])

    def on_grid(self, num_proposals):
        """Whether `num_proposals` per video is one of the 100 grid points."""
        if not self.max_avg_nr_proposals:
            return False
        point = num_proposals * 100 / self.max_avg_nr_proposals
        return 1 <= round(point) <= 100 and abs(point - round(point)) < 1e-9


def load_ground_truth(ground_truth, subset="validation", blocked_videos=()):
    """Reads the segments of `subset` from an ActivityNet-style JSON.

    Args:
        ground_truth: path of the JSON file, its loaded dict, or a
            `GroundTruth` (returned as is if its subset matches).
        subset: "training", "validation" or "testing".
        blocked_videos: video ids to leave out (the official blocked list).

    Returns:
        a `GroundTruth`.

    Raises:
        DataError: unreadable or malformed file, or no segment in `subset`.
    """
    if isinstance(ground_truth, GroundTruth):
        if ground_truth.subset != subset:
            raise ValueError(
                f"{ground_truth.source}: ground truth was loaded for subset "
                f"{ground_truth.subset!r}, asked for {subset!r}."
            )
        return ground_truth
    if isinstance(ground_truth, dict):
        source = "<ground truth dict>"
        database = database_of(ground_truth, source)
    else:
        source = _path_of(ground_truth, "ground truth")
        database = read_database(source, "ground truth file")
    blocked = set(blocked_videos)
    class_index = {}
    video_ids, segment_videos, segments, labels, subsets = [], [], [], [], set()
    durations = {}
    for video_id, video in database.items():
        if not isinstance(video, dict) or "subset" not in video:
            raise DataError(
                f"{source}: video {video_id!r} has no 'subset' field; expected "
                "{'subset': ..., 'annotations': [...]}."
            )
        subsets.add(str(video["subset"]))
        if video["subset"] != subset or video_id in blocked:
            continue
        durations[video_id] = finite_number(video.get("duration"))
        annotations = video.get("annotations")
        if not isinstance(annotations, list):
            raise DataError(
                f"{source}: video {video_id!r} of subset {subset!r} has no "
                "'annotations' list."
            )
        if annotations:
            video_ids.append(video_id)
        for number, annotation in enumerate(annotations):
            try:
                label = annotation["label"]
                index = class_index.setdefault(label, len(class_index))
                start = float(annotation["segment"][0])
                end = float(annotation["segment"][1])
            except (KeyError, IndexError, TypeError, ValueError) as error:
                raise DataError(
                    f"{source}: video {video_id!r}, annotation {number}: expected "
                    "{'label': ..., 'segment': [start, end]} with numeric times, "
                    f"got {annotation!r}."
                ) from error
            if not (math.isfinite(start) and math.isfinite(end)):
                raise DataError(
                    f"{source}: video {video_id!r}, annotation {number}: segment "
                    f"[{start}, {end}] is not finite."
                )
            segment_videos.append(len(video_ids) - 1)
            segments.append((start, end))
            labels.append(index)
    if not segments:
        raise DataError(
            f"{source}: no ground-truth segment in subset {subset!r} "
            f"(subsets present: {sorted(subsets)})."
        )
    _warn_about_reversed_ground_truth(
        source, subset, video_ids, segment_videos, segments
    )
    return GroundTruth(
        source=source,
        subset=subset,
        video_ids=tuple(video_ids),
        class_names=tuple(class_index),
        segment_videos=np.asarray(segment_videos, dtype=np.int64),
        segments=np.asarray(segments, dtype=np.float64).reshape(-1, 2),
        labels=np.asarray(labels, dtype=np.int64),
        durations=durations,
    )


def load_predictions(predictions, ground_truth=None, blocked_videos=()):
    """Reads a submission: `{"results": {VIDEO_ID: [{"label", "score", "segment"}]}}`.

    Args:
        predictions: path of the JSON file, its loaded dict, or `Predictions`
            (returned as is).
        ground_truth: a `GroundTruth` to map labels to its classes; None for
            proposals (labels are then ignored).
        blocked_videos: video ids to leave out.

    Returns:
        a `Predictions`.

    Raises:
        DataError: unreadable or malformed file, NaN or non-numeric score,
            or a label that is not a class of the ground truth.
    """
    if isinstance(predictions, Predictions):
        if ground_truth is not None and predictions.class_names != (
            ground_truth.class_names
        ):
            raise ValueError(
                f"{predictions.source}: predictions were loaded without labels or "
                f"against another ground truth than {ground_truth.source}."
            )
        return predictions
    data, source = _read_json(predictions, "predictions")
    results = data.get("results") if isinstance(data, dict) else None
    if not isinstance(results, dict):
        raise DataError(
            f"{source}: expected a JSON object with a 'results' object mapping "
            "video ids to lists of {'label', 'score', 'segment'}."
        )
    class_index = None
    if ground_truth is not None:
        class_index = {name: i for i, name in enumerate(ground_truth.class_names)}
    blocked = set(blocked_videos)
    video_ids, counts, starts, ends, scores, labels = [], [], [], [], [], []
    for video_id, entries in results.items():
        if video_id in blocked:
            continue
        if not isinstance(entries, list):
            raise DataError(
                f"{source}: video {video_id!r}: expected a list of predictions, "
                f"got {type(entries).__name__}."
            )
        try:
            starts.extend([float(entry["segment"][0]) for entry in entries])
            ends.extend([float(entry["segment"][1]) for entry in entries])
            scores.extend([entry["score"] for entry in entries])
            if class_index is not None:
                labels.extend([class_index[entry["label"]] for entry in entries])
        except (KeyError, IndexError, TypeError, ValueError) as error:
            raise _entry_error(source, video_id, entries, class_index) from error
        video_ids.append(video_id)
        counts.append(len(entries))
    segments = np.stack(
        [np.asarray(starts, dtype=np.float64), np.asarray(ends, dtype=np.float64)],
        axis=1,
    )
    if not np.isfinite(segments).all():
        row = int(np.flatnonzero(~np.isfinite(segments).all(axis=1))[0])
        video = video_ids[int(np.searchsorted(np.cumsum(counts), row, side="right"))]
        raise DataError(
            f"{source}: video {video!r}: segment {segments[row].tolist()} is not finite."
        )
    return Predictions(
        source=source,
        video_ids=tuple(video_ids),
        segment_videos=np.repeat(np.arange(len(counts), dtype=np.int64), counts),
        segments=segments,
        scores=_score_array(scores, source, video_ids, counts),
        labels=None if class_index is None else np.asarray(labels, dtype=np.int64),
        class_names=None if ground_truth is None else ground_truth.class_names,
    )


def evaluate_detection(
    ground_truth,
    predictions,
    subset="validation",
    tiou_thresholds=DEFAULT_TIOU_THRESHOLDS,
    blocked_videos=(),
):
    """Official ActivityNet detection mAP.

    Args:
        ground_truth: path, loaded dict or `GroundTruth` (see
            `load_ground_truth`).
        predictions: path, loaded dict or `Predictions` of a submission.
        subset: the ground-truth subset to score against.
        tiou_thresholds: float [T], default 0.50:0.05:0.95.
        blocked_videos: video ids to leave out of both.

    Returns:
        {"mAP": {"0.50": float, ..., "0.95": float}, "average_mAP": float,
        "per_class_AP": {label: {"0.50": float, ...}}}; fractions in [0, 1].
    """
    ground_truth = load_ground_truth(ground_truth, subset, blocked_videos)
    predictions = load_predictions(predictions, ground_truth, blocked_videos)
    _warn_if_disjoint(ground_truth, predictions)
    warn_about_silent_cases(ground_truth, predictions)
    thresholds = _thresholds(tiou_thresholds)
    average_precision = average_precision_per_class(
        ground_truth, predictions, thresholds
    )
    mean_ap = average_precision.mean(axis=1)
    keys = [_threshold_key(threshold) for threshold in thresholds]
    return {
        "mAP": {key: float(value) for key, value in zip(keys, mean_ap)},
        "average_mAP": float(mean_ap.mean()),
        "per_class_AP": {
            name: {
                key: float(value)
                for key, value in zip(keys, average_precision[:, index])
            }
            for index, name in enumerate(ground_truth.class_names)
        },
    }


def average_precision_per_class(ground_truth, predictions, tiou_thresholds):
    """float64 [T, C]: AP of each class (ground-truth order) at each threshold.

    Args:
        ground_truth: a `GroundTruth`.
        predictions: a `Predictions` with labels of that ground truth.
        tiou_thresholds: float64 [T].
    """
    thresholds = _thresholds(tiou_thresholds)
    num_classes = len(ground_truth.class_names)
    average_precision = np.zeros((len(thresholds), num_classes))
    if len(predictions.scores) == 0:
        return average_precision
    order, class_bounds = _class_score_order(predictions, num_classes)
    true_positive = _match_detections(ground_truth, predictions, order, thresholds)
    positives = np.bincount(ground_truth.labels, minlength=num_classes)
    for index in range(num_classes):
        begin, end = class_bounds[index], class_bounds[index + 1]
        if begin == end:
            continue
        hits = true_positive[:, begin:end].astype(np.float64)
        tp_cumsum = np.cumsum(hits, axis=1)
        fp_cumsum = np.cumsum(1.0 - hits, axis=1)
        recall = tp_cumsum / float(positives[index])
        precision = tp_cumsum / (tp_cumsum + fp_cumsum)
        for row in range(len(thresholds)):
            average_precision[row, index] = interpolated_average_precision(
                precision[row], recall[row]
            )
    return average_precision


def interpolated_average_precision(precision, recall):
    """VOC 2011 interpolated AP, as the official `interpolated_prec_rec`.

    Args:
        precision, recall: float64 [K], cumulative, in score order.
    """
    precision = np.hstack([[0.0], precision, [0.0]])
    recall = np.hstack([[0.0], recall, [1.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.flatnonzero(recall[1:] != recall[:-1]) + 1
    return float(np.sum((recall[steps] - recall[steps - 1]) * precision[steps]))


def segment_iou(segments, reference_segments):
    """tIoU with the official formula, elementwise over broadcast shapes.

    Args:
        segments: float64 [..., 2] (the official "target").
        reference_segments: float64 [..., 2] (the official "candidates").

    Returns:
        float64 [...]: intersection / ((ref_end - ref_start) + (end - start)
        - intersection), the official order of operations. Zero-length pairs
        give NaN, as officially.
    """
    start = np.maximum(segments[..., 0], reference_segments[..., 0])
    end = np.minimum(segments[..., 1], reference_segments[..., 1])
    intersection = (end - start).clip(0)
    union = (
        (reference_segments[..., 1] - reference_segments[..., 0])
        + (segments[..., 1] - segments[..., 0])
        - intersection
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        return intersection / union


def proposal_curve(
    ground_truth,
    proposals,
    subset="validation",
    max_avg_nr_proposals=100,
    tiou_thresholds=DEFAULT_TIOU_THRESHOLDS,
    blocked_videos=(),
):
    """The official average recall vs average number of proposals curve.

    Args:
        ground_truth: path, loaded dict or `GroundTruth`.
        proposals: path, loaded dict or `Predictions` (labels ignored).
        subset: the ground-truth subset.
        max_avg_nr_proposals: average number of proposals per video at the
            end of the curve; None or 0 = all proposals (as officially).
        tiou_thresholds: float [T].
        blocked_videos: video ids to leave out of both.

    Returns:
        a `ProposalCurve`.
    """
    ground_truth = load_ground_truth(ground_truth, subset, blocked_videos)
    proposals = load_predictions(proposals, None, blocked_videos)
    _warn_if_disjoint(ground_truth, proposals)
    warn_about_silent_cases(ground_truth, proposals)
    thresholds = _thresholds(tiou_thresholds)
    num_videos = len(ground_truth.video_ids)
    num_proposals = len(proposals.scores)
    if not max_avg_nr_proposals:
        max_avg_nr_proposals = float(num_proposals) / num_videos
    if num_proposals == 0:
        return _empty_curve(thresholds, max_avg_nr_proposals)
    ratio = max_avg_nr_proposals * float(num_videos) / num_proposals

    kept_segments, kept_counts, has_proposals = _kept_proposals(
        ground_truth, proposals, ratio
    )
    total_kept = int(kept_counts.sum())
    if total_kept == 0:
        return _empty_curve(thresholds, max_avg_nr_proposals)
    fractions = (
        np.arange(1, 101)
        / 100.0
        * (max_avg_nr_proposals * float(num_videos) / total_kept)
    )
    # A video without proposals is scored on one pseudo-proposal of tIoU 0.
    columns = np.where(has_proposals, kept_counts, 1)
    columns_used = np.minimum(
        (columns[:, None] * fractions).astype(np.int64), columns[:, None]
    )
    first_hit = _first_hits(
        ground_truth, kept_segments, kept_counts, has_proposals, thresholds
    )
    used_per_segment = columns_used[ground_truth.segment_videos]
    recall = np.empty((len(thresholds), 100))
    num_segments = float(len(ground_truth.labels))
    for row in range(len(thresholds)):
        matches = (first_hit[:, row, None] < used_per_segment).sum(axis=0)
        recall[row] = matches / num_segments
    average_recall = recall.mean(axis=0)
    proposals_per_video = fractions * (float(total_kept) / num_videos)
    area = _trapezoid(average_recall, proposals_per_video)
    return ProposalCurve(
        tiou_thresholds=thresholds,
        recall=recall,
        average_recall=average_recall,
        proposals_per_video=proposals_per_video,
        auc=float(area / proposals_per_video[-1]),
        max_avg_nr_proposals=float(max_avg_nr_proposals),
    )


def evaluate_proposals(
    ground_truth, proposals, *curve_args, ar_at=None, **curve_kwargs
):
    """Official ActivityNet proposal metrics: AR@k and AUC of the AR-AN curve.

    Args:
        ground_truth, proposals, and in `curve_args` / `curve_kwargs` subset,
            max_avg_nr_proposals, tiou_thresholds, blocked_videos: passed on
            to `proposal_curve` (its defaults are the defaults).
        ar_at: numbers of proposals per video to report AR at; each must be
            on the grid (k * max_avg_nr_proposals / 100). None: those of
            1, 5, 10, 100 that are on the grid (all four for the default 100).

    Returns:
        {"AR@1": float, "AR@5": ..., "AR@10": ..., "AR@100": ..., "AUC": float,
        "average_recall": [100 floats], "proposals_per_video": [100 floats]};
        fractions in [0, 1]. `proposal_curve` gives the per-threshold curve.
    """
    curve = proposal_curve(ground_truth, proposals, *curve_args, **curve_kwargs)
    if ar_at is None:
        ar_at = [k for k in DEFAULT_AR_AT if curve.on_grid(k)]
    summary = {f"AR@{k}": curve.average_recall_at(k) for k in ar_at}
    summary["AUC"] = curve.auc
    summary["average_recall"] = curve.average_recall.tolist()
    summary["proposals_per_video"] = curve.proposals_per_video.tolist()
    return summary


def _read_json(source, what):
    if isinstance(source, dict):
        return source, f"<{what} dict>"
    path = _path_of(source, what)
    try:
        with open(path) as stream:
            return json.load(stream), path
    except OSError as error:
        raise DataError(f"{path}: cannot read the {what} file: {error}") from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(
            f"{path}: the {what} file is not valid JSON: {error}"
        ) from error


def _path_of(source, what):
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            f"{what} must be a path or a loaded JSON dict, got {type(source).__name__}."
        )
    return os.fspath(source)


def _entry_error(source, video_id, entries, class_index):
    """The DataError naming the first bad entry of a video."""
    for number, entry in enumerate(entries):
        try:
            float(entry["segment"][0]), float(entry["segment"][1]), entry["score"]
        except (KeyError, IndexError, TypeError, ValueError):
            return DataError(
                f"{source}: video {video_id!r}, prediction {number}: expected "
                "{'label': ..., 'score': number, 'segment': [start, end]}, "
                f"got {entry!r}."
            )
        if class_index is not None:
            label = entry.get("label")
            try:
                known = label in class_index
            except TypeError:
                known = False
            if not known:
                return DataError(
                    f"{source}: video {video_id!r}, prediction {number}: label "
                    f"{label!r} is not a class of the ground truth's subset "
                    f"({len(class_index)} classes, e.g. {list(class_index)[:3]})."
                )
    return DataError(f"{source}: video {video_id!r}: malformed predictions.")


def _score_array(scores, source, video_ids, counts):
    """int64 when every score is an integer, else float64, as pandas gives."""
    if {bool, np.bool_} & set(map(type, scores)):
        bad = next(i for i, s in enumerate(scores) if isinstance(s, (bool, np.bool_)))
        raise _score_error(source, video_ids, counts, bad, scores[bad])
    try:
        array = np.asarray(scores)
    except (TypeError, ValueError, OverflowError):
        array = np.asarray(scores, dtype=object)
    if array.dtype.kind not in "iuf":
        for index, score in enumerate(scores):
            if not isinstance(score, (int, float, np.integer, np.floating)):
                raise _score_error(source, video_ids, counts, index, score)
        raise DataError(f"{source}: scores are not all numbers.")
    array = array.astype(np.float64 if array.dtype.kind == "f" else np.int64)
    if array.dtype.kind == "f" and np.isnan(array).any():
        bad = int(np.flatnonzero(np.isnan(array))[0])
        raise _score_error(source, video_ids, counts, bad, scores[bad])
    return array.reshape(-1)


def _score_error(source, video_ids, counts, index, score):
    video = int(np.searchsorted(np.cumsum(counts), index, side="right"))
    number = index - (int(np.sum(counts[:video])) if video else 0)
    return DataError(
        f"{source}: video {video_ids[video]!r}, prediction {number}: score "
        f"{score!r} is not a number."
    )


def _warn_if_disjoint(ground_truth, predictions):
    if len(predictions.scores) and not set(predictions.video_ids) & set(
        ground_truth.video_ids
    ):
        example = predictions.video_ids[0]
        warnings.warn(
            f"{predictions.source}: none of its {len(predictions.video_ids)} videos "
            f"is a ground-truth video of {ground_truth.source}; video ids are matched "
            f"exactly (e.g. {example!r} vs {ground_truth.video_ids[0]!r}; a 'v_' "
            "prefix?). Every prediction counts as a miss.",
            stacklevel=3,
        )


def warn_about_silent_cases(ground_truth, predictions):
    """Logs one warning line per kind of prediction the official code scores
    without a word, with how many there are; changes no number.

    The kinds: predictions for videos that are not ground-truth videos of
    the subset (false positives in detection; in the proposal total), +-inf
    scores, reversed segments (start > end) and segments outside [0,
    duration] of their video. Returns {kind: count} of those found.
    """
    source = predictions.source
    counts = {}
    # The subset's videos, those without segments included.
    known = set(ground_truth.durations) | set(ground_truth.video_ids)
    outside = [video for video in predictions.video_ids if video not in known]
    disjoint = not set(predictions.video_ids) & set(ground_truth.video_ids)
    if outside and not disjoint:  # disjoint: `_warn_if_disjoint` says so
        per_video = np.bincount(
            predictions.segment_videos, minlength=len(predictions.video_ids)
        )
        index = {video: row for row, video in enumerate(predictions.video_ids)}
        number = int(sum(per_video[index[video]] for video in outside))
        if number:
            counts["outside_ground_truth"] = number
            logger.warning(
                "%s: %d predictions for %d videos that are not in subset %r of "
                "the ground truth (e.g. %r); scored as the official code "
                "does (false positives; counted in the proposal total)",
                source,
                number,
                len(outside),
                ground_truth.subset,
                outside[0],
            )
    scores = np.asarray(predictions.scores)
    infinite = (
        int(np.count_nonzero(np.isinf(scores))) if scores.dtype.kind == "f" else 0
    )
    if infinite:
        counts["infinite_score"] = infinite
        logger.warning(
            "%s: %d predictions have an infinite score; scored as given (they "
            "sort first or last)",
            source,
            infinite,
        )
    starts, ends = predictions.segments[:, 0], predictions.segments[:, 1]
    reversed_segments = int(np.count_nonzero(starts > ends))
    if reversed_segments:
        counts["reversed_segment"] = reversed_segments
        logger.warning(
            "%s: %d predicted segments end before they start; scored as given "
            "(their tIoU is 0 or less)",
            source,
            reversed_segments,
        )
    durations = np.array(
        [
            np.nan
            if ground_truth.durations.get(video) is None
            else ground_truth.durations[video]
            for video in predictions.video_ids
        ],
        dtype=np.float64,
    ).reshape(-1)
    video_durations = durations[predictions.segment_videos]
    with np.errstate(invalid="ignore"):
        out_of_range = (np.minimum(starts, ends) < 0) | (
            np.maximum(starts, ends) > video_durations
        )
    if np.count_nonzero(out_of_range):
        counts["out_of_range_segment"] = int(np.count_nonzero(out_of_range))
        logger.warning(
            "%s: %d predicted segments lie partly outside [0, duration] of their "
            "video; scored as given (not clipped)",
            source,
            counts["out_of_range_segment"],
        )
    return counts


def _warn_about_reversed_ground_truth(
    source, subset, video_ids, segment_videos, segments
):
    """One warning line counting the ground-truth segments that end before
    they start; they are kept as given, as the official code keeps them:
    their tIoU is 0 with any prediction but one of the same length, whose
    0/0 tIoU (NaN) the official matching takes for a hit."""
    reversed_rows = [row for row, (start, end) in enumerate(segments) if end < start]
    if reversed_rows:
        first = reversed_rows[0]
        logger.warning(
            "%s: %d ground-truth segments of subset %r end before they start "
            "(first: video %r, %s); scored as given, as the official code "
            "does: missed, unless a prediction of the same length matches "
            "them (0/0 tIoU)",
            source,
            len(reversed_rows),
            subset,
            video_ids[segment_videos[first]],
            list(segments[first]),
        )


def _thresholds(tiou_thresholds):
    thresholds = np.asarray(tiou_thresholds, dtype=np.float64).reshape(-1)
    if thresholds.size == 0:
        raise ValueError("tiou_thresholds must hold at least one threshold.")
    return thresholds


def _threshold_key(threshold):
    if abs(threshold * 100 - round(threshold * 100)) < 1e-6:
        return f"{threshold:.2f}"
    return f"{threshold:g}"


def _class_score_order(predictions, num_classes):
    """Predictions grouped by class (class index order), each class sorted as
    the official code sorts it: `scores.argsort()[::-1]` over the class's
    predictions in file order.

    Returns:
        order: int64 [K], prediction indices; bounds: int64 [C + 1].
    """
    by_class = np.argsort(predictions.labels, kind="stable")
    bounds = np.zeros(num_classes + 1, dtype=np.int64)
    bounds[1:] = np.cumsum(np.bincount(predictions.labels, minlength=num_classes))
    order = np.empty_like(by_class)
    for index in range(num_classes):
        members = by_class[bounds[index] : bounds[index + 1]]
        order[bounds[index] : bounds[index + 1]] = members[
            predictions.scores[members].argsort()[::-1]
        ]
    return order, bounds


def _match_detections(ground_truth, predictions, order, thresholds):
    """bool [T, K]: true positive flags of the predictions taken in `order`.

    The official greedy matching, vectorised: the matching of a prediction
    only depends on the earlier predictions of the same (class, video), so
    all (class, video) groups advance together, one prediction per step.
    Groups are bucketed by their number of ground-truth segments, so that
    each prediction's tIoU row is argsorted with the same length as
    officially.
    """
    num_videos = len(ground_truth.video_ids)
    video_index = {video_id: i for i, video_id in enumerate(ground_truth.video_ids)}
    prediction_video = np.array(
        [video_index.get(video_id, -1) for video_id in predictions.video_ids],
        dtype=np.int64,
    )[predictions.segment_videos][order]
    prediction_key = predictions.labels[order] * num_videos + prediction_video
    prediction_key[prediction_video < 0] = -1
    prediction_segments = predictions.segments[order]

    # Ground truth grouped by (class, video), JSON order inside a group.
    gt_key = ground_truth.labels * num_videos + ground_truth.segment_videos
    gt_order = np.argsort(gt_key, kind="stable")
    gt_segments = ground_truth.segments[gt_order]
    group_keys, group_starts, group_sizes = np.unique(
        gt_key[gt_order], return_index=True, return_counts=True
    )
    place = np.clip(np.searchsorted(group_keys, prediction_key), 0, len(group_keys) - 1)
    found = group_keys[place] == prediction_key
    num_gt = np.where(found, group_sizes[place], 0)
    first_gt = group_starts[place]

    true_positive = np.zeros((len(thresholds), len(order)), dtype=bool)
    for size in np.unique(num_gt[num_gt > 0]):
        rows = np.flatnonzero(num_gt == size)
        candidates = gt_segments[first_gt[rows, None] + np.arange(size)]
        tiou = segment_iou(prediction_segments[rows, None, :], candidates)
        preference = tiou.argsort(axis=1)[:, ::-1]
        below = (
            np.take_along_axis(tiou, preference, axis=1)[:, None, :]
            < thresholds[None, :, None]
        )
        # Rows are in score order inside each group: step = rank in the group.
        _, group, group_size = np.unique(
            prediction_key[rows], return_inverse=True, return_counts=True
        )
        by_group = np.argsort(group, kind="stable")
        group_first = np.concatenate([[0], np.cumsum(group_size)[:-1]])
        step = np.empty_like(by_group)
        step[by_group] = np.arange(len(rows)) - group_first[group[by_group]]
        by_step = np.argsort(step, kind="stable")
        step_bounds = np.concatenate([[0], np.cumsum(np.bincount(step))])
        locked = np.zeros((len(group_size), len(thresholds), size), dtype=bool)
        for begin, end in itertools.pairwise(step_bounds):
            active = by_step[begin:end]
            active_groups = group[active]
            active_preference = preference[active]
            locked_in_order = np.take_along_axis(
                locked[active_groups], active_preference[:, None, :], axis=2
            )
            active_below = below[active]
            # The walk stops at the first segment below the threshold or free.
            stop = active_below | ~locked_in_order
            first = stop.argmax(axis=2)
            hit = (
                stop.any(axis=2)
                & ~np.take_along_axis(active_below, first[..., None], axis=2)[..., 0]
            )
            where, threshold = np.nonzero(hit)
            locked[
                active_groups[where],
                threshold,
                active_preference[where, first[where, threshold]],
            ] = True
            true_positive[:, rows[active]] = hit.T
    return true_positive


def _kept_proposals(ground_truth, proposals, ratio):
    """Each ground-truth video's proposals, sorted by score as officially and
    cut to min(int(n * ratio), n).

    Returns:
        segments: float64 [total_kept, 2], video by video.
        counts: int64 [V], kept proposals per ground-truth video.
        has_proposals: bool [V], the video has at least one proposal.
    """
    num_videos = len(ground_truth.video_ids)
    video_index = {video_id: i for i, video_id in enumerate(ground_truth.video_ids)}
    proposal_counts = np.bincount(
        proposals.segment_videos, minlength=len(proposals.video_ids)
    )
    proposal_starts = np.concatenate([[0], np.cumsum(proposal_counts)[:-1]])
    # Per ground-truth video: where its proposals are, and how many.
    first = np.zeros(num_videos, dtype=np.int64)
    count = np.zeros(num_videos, dtype=np.int64)
    for position, video_id in enumerate(proposals.video_ids):
        index = video_index.get(video_id)
        if index is not None:
            first[index] = proposal_starts[position]
            count[index] = proposal_counts[position]
    has_proposals = count > 0
    kept_counts = np.array(
        [min(int(n * ratio), n) for n in count.tolist()], dtype=np.int64
    )
    kept_counts[~has_proposals] = 0
    kept_starts = np.concatenate([[0], np.cumsum(kept_counts)[:-1]])
    kept = np.empty(int(kept_counts.sum()), dtype=np.int64)
    # Videos with the same number of proposals are argsorted row by row
    # together: numpy sorts each row as it would the 1-D array.
    for size in np.unique(count[has_proposals]):
        videos = np.flatnonzero(count == size)
        members = first[videos, None] + np.arange(size)
        ranked = np.take_along_axis(
            members, proposals.scores[members].argsort(axis=1)[:, ::-1], axis=1
        )
        for video, row in zip(videos.tolist(), ranked):
            kept[kept_starts[video] : kept_starts[video] + kept_counts[video]] = row[
                : kept_counts[video]
            ]
    return proposals.segments[kept], kept_counts, has_proposals


def _first_hits(ground_truth, kept_segments, kept_counts, has_proposals, thresholds):
    """float64 [G, T]: rank of each segment's first kept proposal with
    tIoU >= threshold, inf if none."""
    num_segments = len(ground_truth.labels)
    first_hit = np.full((num_segments, len(thresholds)), np.inf)
    videos = ground_truth.segment_videos
    # The pseudo-proposal of a video without proposals has tIoU 0.
    pseudo = ~has_proposals[videos]
    first_hit[pseudo] = np.where(0.0 >= thresholds, 0.0, np.inf)
    segments = np.flatnonzero(kept_counts[videos] > 0)
    if len(segments) == 0:
        return first_hit
    pairs_per_segment = kept_counts[videos[segments]]
    pair_starts = np.concatenate([[0], np.cumsum(pairs_per_segment)[:-1]])
    pair_segment = np.repeat(segments, pairs_per_segment)
    rank = np.arange(int(pairs_per_segment.sum())) - np.repeat(
        pair_starts, pairs_per_segment
    )
    kept_starts = np.concatenate([[0], np.cumsum(kept_counts)[:-1]])
    pair_proposal = kept_starts[videos[pair_segment]] + rank
    tiou = segment_iou(
        kept_segments[pair_proposal], ground_truth.segments[pair_segment]
    )
    rank = rank.astype(np.float64)
    for column, threshold in enumerate(thresholds):
        first_hit[segments, column] = np.minimum.reduceat(
            np.where(tiou >= threshold, rank, np.inf), pair_starts
        )
    return first_hit


def _empty_curve(thresholds, max_avg_nr_proposals):
    return ProposalCurve(
        tiou_thresholds=thresholds,
        recall=np.zeros((len(thresholds), 100)),
        average_recall=np.zeros(100),
        proposals_per_video=np.zeros(100),
        auc=0.0,
        max_avg_nr_proposals=float(max_avg_nr_proposals),
    )


def _trapezoid(y, x):
    """numpy's trapezoid rule, spelled out: np.trapz left numpy in 2.4."""
    return np.add.reduce(np.diff(x) * (y[1:] + y[:-1]) / 2.0)
