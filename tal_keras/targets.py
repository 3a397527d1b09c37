"""Training targets of every lattice proposal (docs/design.md section 6). numpy only."""

import numpy as np

from tal_keras.clips import checked_duration

NO_CLASS = -1  # class of a proposal whose max IoU is not above the threshold
# docs/design.md section 6: classifier cells have max IoU > 0.5.
CLASS_IOU_THRESHOLD = 0.5


def segment_iou(proposals, segments):
    """float64 [P, K]: temporal IoU of every proposal with every segment; 0
    where the union is empty. The IoU of training targets and of NMS
    (`detections`); the official evaluator's own formula, NaN on empty unions
    included, is `metrics.segment_iou`.

    Args:
        proposals: [P, 2] (start, end) seconds.
        segments: [K, 2] (start, end) seconds.
    """
    proposals = np.asarray(proposals, np.float64)
    segments = np.asarray(segments, np.float64)
    starts, ends = proposals[:, :1], proposals[:, 1:]
    intersection = np.minimum(ends, segments[:, 1]) - np.maximum(starts, segments[:, 0])
    np.maximum(intersection, 0.0, out=intersection)
    union = (ends - starts) + (segments[:, 1] - segments[:, 0]) - intersection
    return np.divide(
        intersection, union, out=np.zeros_like(intersection), where=union > 0
    )


def proposal_targets(lattice, duration, segments, labels):
    """Max IoU and class of every lattice proposal.

    Args:
        lattice: the `Lattice`; proposals are in its order.
        duration: the video's duration in seconds.
        segments: [K, 2] ground-truth (start, end) seconds; K may be 0.
        labels: [K] class index of each segment.

    Returns:
        max_iou: float32 [P], max temporal IoU (in seconds) with any segment;
            0 when K = 0.
        classes: int64 [P], label of the segment of highest IoU (the first one
            on ties) where that IoU > 0.5, else -1.
    """
    segments = np.asarray(segments, np.float64).reshape(-1, 2)
    labels = np.asarray(labels, np.int64).reshape(-1)
    if labels.shape[0] != segments.shape[0]:
        raise ValueError(
            f"Got {segments.shape[0]} segments but {labels.shape[0]} labels."
        )
    duration = checked_duration(duration)
    if np.any(segments[:, 1] < segments[:, 0]) or not np.isfinite(segments).all():
        raise ValueError(
            f"segments must be finite with end >= start, got {segments.tolist()}."
        )
    num_proposals = lattice.num_proposals
    max_iou = np.zeros(num_proposals, np.float64)
    best = np.zeros(num_proposals, np.int64)
    clip_seconds = duration / lattice.num_clips
    # Same arithmetic as Lattice.seconds: proposal (i, j) is [i, j + 1) * d / N.
    starts = lattice.starts * clip_seconds
    ends = (lattice.ends + 1) * clip_seconds
    lengths = ends - starts  # > 0, so every union below is > 0
    # One pass per segment (K is small) keeps every array 1-D over proposals.
    for index, (segment_start, segment_end) in enumerate(segments):
        iou = np.minimum(ends, segment_end)
        iou -= np.maximum(starts, segment_start)
        np.maximum(iou, 0.0, out=iou)  # the intersection
        iou /= lengths + (segment_end - segment_start) - iou
        np.putmask(best, iou > max_iou, index)  # strict: first of equal maxima wins
        np.maximum(max_iou, iou, out=max_iou)
    classes = np.full(num_proposals, NO_CLASS, np.int64)
    positive = max_iou > CLASS_IOU_THRESHOLD
    classes[positive] = labels[best[positive]]
    return max_iou.astype(np.float32), classes


def scaled_overlap(max_iou, t_min=0.5, t_max=1.0):
    """float32: the overlap target clip((t - t_min) / (t_max - t_min), 0, 1)."""
    if not t_max > t_min:
        raise ValueError(f"t_max must exceed t_min, got t_min={t_min}, t_max={t_max}.")
    scaled = (np.asarray(max_iou, np.float64) - t_min) / (t_max - t_min)
    return np.clip(scaled, 0.0, 1.0).astype(np.float32)
