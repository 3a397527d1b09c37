"""Postprocessing (docs/design.md section 7): lattice scores of one video ->
proposals and detections in seconds -> an ActivityNet submission file.
numpy only.

Ordering is deterministic everywhere: candidates are ranked by decreasing
score, ties by increasing index (for lattice proposals: lattice order; for
(proposal, class) pairs: proposal, then class), and NMS keeps that order.
"""

import numpy as np

from tal_keras.atomic import write_json_atomic
from tal_keras.errors import DataError
from tal_keras.targets import segment_iou

# The (proposal, class) pairs kept before NMS. NMS only ever looks at
# higher-scored candidates of the same class, so keeping a score prefix gives
# exactly the detections hard NMS over all P x C pairs would give, as long as at
# least top_k survive; 2000 = 20 x top_k leaves room for the duplicates NMS
# removes on a dense lattice, and keeps NMS cheap (P x C is 3.5 M on HACS).
DEFAULT_TOP_M = 2000
# Width of the soft-NMS penalty exp(-tIoU^2 / sigma) (see `soft_nms`).
DEFAULT_SOFT_NMS_SIGMA = 0.5
# The "version" string ActivityNet submission files carry.
DEFAULT_VERSION = "VERSION 1.3"


def nms(segments, scores, iou_threshold=0.5, top_k=None, classes=None):
    """Greedy non-maximum suppression of 1-D segments.

    Takes the best-scored segment, drops every other one whose tIoU with it
    is above `iou_threshold` (strictly), and repeats. Ties in score go to the
    lower index.

    Args:
        segments: float [K, 2], (start, end).
        scores: float [K].
        iou_threshold: tIoU above which a segment is suppressed.
        top_k: stop after this many kept segments; None = all.
        classes: optional int [K]; a segment only suppresses segments of its
            own class (per-class NMS in one pass).

    Returns:
        int64 [k]: indices of the kept segments, by decreasing score.
    """
    segments, scores, classes = _candidates(segments, scores, classes)
    remaining = np.argsort(-scores, kind="stable")
    kept = []
    while remaining.size and (top_k is None or len(kept) < top_k):
        best, rest = remaining[0], remaining[1:]
        kept.append(best)
        overlapping = _iou(segments[best], segments[rest]) > iou_threshold
        if classes is not None:
            overlapping &= classes[rest] == classes[best]
        remaining = rest[~overlapping]
    return np.asarray(kept, dtype=np.int64)


def soft_nms(
    segments,
    scores,
    iou_threshold=0.5,
    sigma=DEFAULT_SOFT_NMS_SIGMA,
    top_k=None,
    min_score=0.0,
    classes=None,
):
    """Gaussian soft-NMS (Bodla et al. 2017), as in BSN/BMN postprocessing.

    Takes the best current score; every other segment whose tIoU with it is
    above `iou_threshold` has its score multiplied by exp(-tIoU^2 / sigma);
    repeats. BMN uses the same Gaussian with a threshold that grows with the
    segment's width (0.5 to 0.9) and sigma 0.4; here the threshold is fixed
    (0 gives Bodla's original, which decays every overlap) and sigma is
    Bodla's default 0.5. Ties go to the lower index.

    Args:
        segments: float [K, 2].
        scores: float [K].
        iou_threshold: tIoU above which a score is decayed.
        sigma: width of the Gaussian penalty; smaller decays harder.
        top_k: stop after this many selections; None = all.
        min_score: stop when the best current score is below this.
        classes: optional int [K]; decay only segments of the same class.

    Returns:
        (int64 [k] indices in selection order, float64 [k] their decayed
        scores, non-increasing).
    """
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}.")
    segments, current, classes = _candidates(segments, scores, classes)
    current = current.copy()
    remaining = np.arange(len(current))
    selected, selected_scores = [], []
    while remaining.size and (top_k is None or len(selected) < top_k):
        position = int(np.argmax(current[remaining]))
        best = remaining[position]
        if current[best] < min_score:
            break
        selected.append(best)
        selected_scores.append(current[best])
        remaining = np.delete(remaining, position)
        tiou = _iou(segments[best], segments[remaining])
        decayed = tiou > iou_threshold
        if classes is not None:
            decayed &= classes[remaining] == classes[best]
        current[remaining[decayed]] *= np.exp(-np.square(tiou[decayed]) / sigma)
    return (
        np.asarray(selected, dtype=np.int64),
        np.asarray(selected_scores, dtype=np.float64),
    )


# `video_detections` has a `soft_nms` flag, which hides the function there.
_soft_nms = soft_nms


def video_proposals(
    lattice, duration, overlap_scores, nms_threshold=0.5, top_k=100, soft_nms_sigma=0.0
):
    """Class-agnostic proposals of one video: P_over, NMS, top_k.

    With `soft_nms_sigma` > 0, Gaussian soft-NMS replaces NMS: every
    overlapping proposal's score is multiplied by exp(-tIoU^2 / sigma) at
    each selection (threshold 0, Bodla et al.'s original; `soft_nms`), and
    the decayed scores are returned. Near-duplicates of a good proposal then
    come back further down the list instead of never, which is what recall
    at high tIoU needs (docs/benchmarks.md, "Postprocessing").

    Args:
        lattice: the `Lattice` the scores are in.
        duration: the video's duration in seconds.
        overlap_scores: float [P], P_over in lattice order.
        nms_threshold: tIoU above which NMS suppresses (hard NMS only).
        top_k: proposals kept.
        soft_nms_sigma: 0 for NMS, else the soft-NMS width.

    Returns:
        [{"score": float, "segment": [start, end]}], by decreasing score,
        seconds.
    """
    overlap_scores = _lattice_scores(lattice, overlap_scores, "overlap_scores")
    seconds = lattice.seconds(duration)
    if soft_nms_sigma > 0:
        kept, kept_scores = soft_nms(
            seconds, overlap_scores, 0.0, soft_nms_sigma, top_k
        )
    else:
        kept = nms(seconds, overlap_scores, nms_threshold, top_k)
        kept_scores = overlap_scores[kept]
    return [
        {"score": float(score), "segment": seconds[index].tolist()}
        for index, score in zip(kept, kept_scores)
    ]


def video_detections(
    lattice,
    duration,
    overlap_scores,
    class_scores,
    class_names,
    top_m=DEFAULT_TOP_M,
    nms_threshold=0.5,
    soft_nms=False,
    top_k=100,
    video_labels=None,
    soft_nms_sigma=DEFAULT_SOFT_NMS_SIGMA,
):
    """Detections of one video: P_final(p, c) = P_over(p) * P_class(p, c).

    The best `top_m` (proposal, class) pairs are kept, NMS (or soft-NMS) runs
    per class, and the best `top_k` detections of all classes are returned.

    Fusion with an external video-level classifier, as the ActivityNet and
    HACS entries do (e.g. UntrimmedNet scores): `video_labels` = the video's
    top labels with their scores; only those classes are kept and
    P_final(p, c) = P_over(p) * P_class(p, c) * score(c). With
    `class_scores=None` the per-proposal classifier is left out:
    P_final(p, c) = P_over(p) * score(c).

    Args:
        lattice: the `Lattice` the scores are in.
        duration: seconds.
        overlap_scores: float [P], P_over in lattice order.
        class_scores: float [P, C], P_class in lattice order, or None (then
            `video_labels` is required).
        class_names: C labels, the column order of `class_scores`.
        top_m: (proposal, class) pairs kept before NMS; None = all.
        nms_threshold: tIoU above which NMS suppresses (or soft-NMS decays).
        soft_nms: Gaussian soft-NMS (`soft_nms`) instead of hard NMS.
        top_k: detections kept.
        video_labels: None, or [(label, score)] (or a dict label -> score)
            of the video-level classifier.
        soft_nms_sigma: sigma of the soft-NMS penalty.

    Returns:
        [{"label": ..., "score": float, "segment": [start, end]}], by
        decreasing score, seconds.
    """
    overlap_scores = _lattice_scores(lattice, overlap_scores, "overlap_scores")
    class_names = list(class_names)
    columns, weights = _fusion_columns(class_names, class_scores, video_labels)
    rows = np.arange(lattice.num_proposals)
    if class_scores is None:
        final = overlap_scores[:, None] * weights
    else:
        class_scores = _class_score_matrix(lattice, class_scores, len(class_names))
        if weights is None:
            # Only rows whose best pair can be among the top_m are multiplied.
            rows = _candidate_rows(overlap_scores, class_scores, top_m)
            final = overlap_scores[rows, None] * class_scores[rows].astype(np.float64)
        else:
            final = overlap_scores[:, None] * class_scores[:, columns] * weights
    pairs = _best_pairs(final, top_m)
    proposal, column = np.divmod(pairs, final.shape[1])
    scores = final.ravel()[pairs]
    proposal = rows[proposal]
    seconds = lattice.seconds(duration)[proposal]
    if soft_nms:
        kept, scores = _soft_nms(
            seconds, scores, nms_threshold, soft_nms_sigma, top_k, classes=column
        )
    else:
        kept = nms(seconds, scores, nms_threshold, top_k, classes=column)
        scores = scores[kept]
    return [
        {
            "label": class_names[columns[column[index]]],
            "score": float(score),
            "segment": seconds[index].tolist(),
        }
        for index, score in zip(kept, scores)
    ]


def proposals_with(settings, lattice, duration, overlap_scores):
    """`video_proposals` with a `config.Postprocessing`'s settings (or an
    `EvalConfig`'s): what evaluation and serving both run."""
    return video_proposals(
        lattice,
        duration,
        overlap_scores,
        nms_threshold=settings.nms_threshold,
        top_k=settings.proposals_per_video,
        soft_nms_sigma=settings.proposal_soft_nms_sigma,
    )


def detections_with(
    settings,
    lattice,
    duration,
    overlap_scores,
    class_scores,
    class_names,
    video_labels=None,
):
    """`video_detections` with a `config.Postprocessing`'s settings (or an
    `EvalConfig`'s): what evaluation and serving both run."""
    return video_detections(
        lattice,
        duration,
        overlap_scores,
        class_scores,
        class_names,
        top_m=settings.top_pairs,
        nms_threshold=settings.nms_threshold,
        soft_nms=settings.soft_nms,
        top_k=settings.detections_per_video,
        video_labels=video_labels,
        soft_nms_sigma=settings.soft_nms_sigma,
    )


def sliding_window_proposals(
    lattice, duration, prior=None, nms_threshold=0.5, top_k=100, soft_nms_sigma=0.0
):
    """A content-blind baseline: every lattice proposal, scored by a prior
    that ignores the video, through the same NMS and top_k as the network.

    With `prior=None` every proposal scores 1, so NMS keeps lattice order
    (short proposals first, starts ascending). A prior that depends only on
    the length, such as how often training segments have that length
    (`prior_by_length[lattice.lengths]`), makes it a sliding-window baseline
    at the common lengths.

    Args:
        lattice: a `Lattice`.
        duration: seconds.
        prior: None, a number, or float [P] in lattice order.
        nms_threshold, top_k, soft_nms_sigma: as `video_proposals`.

    Returns:
        as `video_proposals`.
    """
    if prior is None:
        prior = 1.0
    prior = np.asarray(prior, dtype=np.float64)
    if prior.ndim == 0:
        prior = np.full(lattice.num_proposals, float(prior))
    return video_proposals(
        lattice, duration, prior, nms_threshold, top_k, soft_nms_sigma
    )


def submission(results, version=DEFAULT_VERSION, external_data=None):
    """The ActivityNet submission dict.

    Args:
        results: {video_id: [{"score", "segment"[, "label"]}]}, as returned
            by `video_proposals` or `video_detections`.
        version: the "version" string.
        external_data: the "external_data" object ({"used": bool, "details":
            str} in ActivityNet's format); {} by default.

    Returns:
        {"version": ..., "results": {...}, "external_data": {...}} with plain
        Python numbers, ready for `json.dump`.

    Raises:
        DataError: an entry without a numeric score or a [start, end] segment.
    """
    if not isinstance(results, dict):
        raise TypeError(
            f"results must be a dict video_id -> list, got {type(results)}."
        )
    clean = {}
    for video_id, entries in results.items():
        clean[str(video_id)] = [_clean_entry(video_id, entry) for entry in entries]
    return {
        "version": version,
        "results": clean,
        "external_data": {} if external_data is None else dict(external_data),
    }


def write_submission(
    path, results, version=DEFAULT_VERSION, external_data=None, indent=None
):
    """Writes `submission(results, ...)` to `path` atomically."""
    write_json_atomic(path, submission(results, version, external_data), indent)


def _candidates(segments, scores, classes):
    segments = np.asarray(segments, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if segments.ndim != 2 or segments.shape[1] != 2:
        raise ValueError(f"segments must have shape [K, 2], got {segments.shape}.")
    if scores.shape != (len(segments),):
        raise ValueError(
            f"scores must have shape [{len(segments)}], got {scores.shape}."
        )
    if np.isnan(scores).any():
        raise ValueError("scores holds NaN values.")
    if classes is not None:
        classes = np.asarray(classes)
        if classes.shape != scores.shape:
            raise ValueError(
                f"classes must have shape {scores.shape}, got {classes.shape}."
            )
    return segments, scores, classes


def _iou(segment, segments):
    """float64 [K]: tIoU of one segment with each of `segments`; 0 when the
    union is empty."""
    return segment_iou(np.asarray(segment)[None], segments)[0]


def _lattice_scores(lattice, scores, name):
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (lattice.num_proposals,):
        raise ValueError(
            f"{name} has shape {scores.shape}, expected ({lattice.num_proposals},) "
            f"(one score per proposal of {lattice}, in lattice order)."
        )
    if not np.isfinite(scores).all():
        raise ValueError(f"{name} holds NaN or infinite values.")
    return scores


def _class_score_matrix(lattice, class_scores, num_classes):
    """float [P, C] (float32 kept: rows are converted once chosen)."""
    class_scores = np.asarray(class_scores)
    if class_scores.dtype.kind != "f":
        class_scores = class_scores.astype(np.float64)
    expected = (lattice.num_proposals, num_classes)
    if class_scores.shape != expected:
        raise ValueError(
            f"class_scores has shape {class_scores.shape}, expected {expected} "
            "(proposals in lattice order, one column per class name)."
        )
    if not (np.isfinite(class_scores.max()) and np.isfinite(class_scores.min())):
        raise ValueError("class_scores holds NaN or infinite values.")
    return class_scores


def _candidate_rows(overlap_scores, class_scores, top_m):
    """The proposals that can hold one of the top_m (proposal, class) pairs.

    Each proposal's best pair is overlap * max(class) (rounding is monotone
    for a non-negative factor). The top_m-th best of these row maxima is
    reached by top_m distinct pairs, so the top_m-th best pair is at least
    as high: rows whose maximum is below it hold none of the top_m pairs.
    """
    num_rows = len(overlap_scores)
    if top_m is None or top_m >= num_rows or (overlap_scores < 0).any():
        return np.arange(num_rows)
    row_best = overlap_scores * class_scores.max(axis=1).astype(np.float64)
    bound = np.partition(row_best, num_rows - top_m)[num_rows - top_m]
    return np.flatnonzero(row_best >= bound)


def _fusion_columns(class_names, class_scores, video_labels):
    """(class indices used, their video-level weights or None)."""
    if video_labels is None:
        if class_scores is None:
            raise ValueError("video_detections needs class_scores or video_labels.")
        return np.arange(len(class_names)), None
    labels = dict(video_labels)
    index = {name: position for position, name in enumerate(class_names)}
    unknown = [label for label in labels if label not in index]
    if unknown:
        raise DataError(
            f"video_labels: {unknown[0]!r} is not one of the {len(class_names)} "
            f"class names (e.g. {class_names[:3]})."
        )
    columns = np.array([index[label] for label in labels], dtype=np.int64)
    weights = np.array([float(score) for score in labels.values()])
    if not np.isfinite(weights).all():
        raise ValueError(f"video_labels holds a non-finite score: {labels}.")
    return columns, weights


def _best_pairs(final, top_m):
    """Flat indices of the `top_m` best entries of `final`, by decreasing
    score, ties by increasing flat index (deterministic, unlike argpartition)."""
    flat = final.ravel()
    if top_m is None or top_m >= flat.size:
        chosen = np.arange(flat.size)
    else:
        if top_m < 1:
            raise ValueError(f"top_m must be positive, got {top_m}.")
        threshold = np.partition(flat, flat.size - top_m)[flat.size - top_m]
        above = np.flatnonzero(flat > threshold)
        tied = np.flatnonzero(flat == threshold)[: top_m - above.size]
        chosen = np.concatenate([above, tied])
    return chosen[np.lexsort((chosen, -flat[chosen]))]


def _clean_entry(video_id, entry):
    try:
        start, end = (float(value) for value in entry["segment"])
        clean = {"score": float(entry["score"]), "segment": [start, end]}
    except (KeyError, TypeError, ValueError) as error:
        raise DataError(
            f"results: video {video_id!r}: expected {{'score': number, 'segment': "
            f"[start, end][, 'label': ...]}}, got {entry!r}."
        ) from error
    if "label" in entry:
        label = entry["label"]
        clean = {"label": label.item() if hasattr(label, "item") else label, **clean}
    return clean
