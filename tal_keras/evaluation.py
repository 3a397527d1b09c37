"""Scoring with the official ActivityNet protocol: a run's proposals and
detections, the validation metrics that pick the best epochs, the
content-blind baseline, and submission files (evaluate.py's scoring mode).

Scores are always computed against the raw annotation file (as the official
evaluator reads it), so videos whose features were unusable count as missed.
numpy only.
"""

import functools
import os

import numpy as np

from tal_keras import detections, metrics
from tal_keras.inference import (
    detection_results,
    load_network,
    predict_scores,
    proposal_results,
)
from tal_keras.targets import proposal_targets

PROPOSAL_SUMMARY = ("AR@1", "AR@5", "AR@10", "AR@100", "AUC")


def ground_truth_of(annotations, blocklist=()):
    """The official evaluator's view of the annotation file's evaluation subset
    (raw segments, as the official code reads them), read once per process
    while the file is unchanged (so its warnings are said once)."""
    subset = annotations.subsets[0] if annotations.subsets else "validation"
    stat = os.stat(annotations.path)
    return _read_ground_truth(
        annotations.path, subset, tuple(blocklist), stat.st_mtime_ns, stat.st_size
    )


@functools.lru_cache(maxsize=4)
def _read_ground_truth(path, subset, blocklist, mtime_ns, size):
    del mtime_ns, size  # in the cache key only: a changed file is read again
    return metrics.load_ground_truth(path, subset=subset, blocked_videos=blocklist)


def score_proposals(ground_truth, results):
    """Official proposal metrics of {video_id: proposals} against a `GroundTruth`."""
    return metrics.evaluate_proposals(
        ground_truth, detections.submission(results), subset=ground_truth.subset
    )


def score_detections(ground_truth, results):
    """Official detection metrics of {video_id: detections} against a `GroundTruth`.

    Detections of classes the subset's ground truth never uses are left out
    first: the official evaluator raises on them, and as mAP averages the
    per-class APs of the ground truth's classes only, leaving them out changes
    no number.
    """
    known = set(ground_truth.class_names)
    kept = {
        video_id: [entry for entry in entries if entry["label"] in known]
        for video_id, entries in results.items()
    }
    return metrics.evaluate_detection(
        ground_truth, detections.submission(kept), subset=ground_truth.subset
    )


def proposal_auc_scorer(run_config, lattice, cache, ground_truth):
    """model -> validation AUC of its proposals (for the best-epoch choice)."""

    def score(model):
        overlap_scores = predict_scores(model, cache, run_config.eval.batch_size)
        return score_proposals(
            ground_truth, proposal_results(run_config, lattice, cache, overlap_scores)
        )["AUC"]

    return score


def detection_map_scorer(
    run_config, lattice, cache, ground_truth, proposal_model_path, class_names
):
    """classifier -> validation average mAP with the trained proposal network."""
    proposal_model = load_network(proposal_model_path)
    overlap_scores = predict_scores(proposal_model, cache, run_config.eval.batch_size)

    def score(model):
        class_scores = predict_scores(model, cache, run_config.eval.batch_size)
        results = detection_results(
            run_config, lattice, cache, overlap_scores, class_scores, class_names
        )
        return score_detections(ground_truth, results)["average_mAP"]

    return score


def baseline_results(run_config, lattice, cache, prior=None):
    """Content-blind sliding windows on the videos of `cache`: every lattice
    proposal scored by a prior that depends only on its length (`length_prior`
    of the training annotations; None: detections.sliding_window_proposals'
    default)."""
    return {
        video_id: detections.sliding_window_proposals(
            lattice,
            duration,
            prior=prior,
            nms_threshold=run_config.eval.nms_threshold,
            top_k=run_config.eval.proposals_per_video,
            soft_nms_sigma=run_config.eval.proposal_soft_nms_sigma,
        )
        for video_id, duration in zip(cache.video_ids, cache.durations)
    }


def length_prior(lattice, annotations):
    """float64 [P]: mean max IoU with the ground truth of each lattice cell over
    the videos of `annotations` (the training subset), averaged over cells of
    the same length (so it knows which lengths are common, and nothing of any
    video's content). Needs the annotations only, no features; None when there
    are no videos."""
    if not len(annotations.videos):
        return None
    total_iou = np.zeros(lattice.num_proposals, np.float64)
    # Row by row, in annotation order: the same sums as a mean over the
    # stacked float32 targets of the clip cache.
    for video in annotations.videos.values():
        max_iou, _ = proposal_targets(
            lattice, video.duration, video.segments, video.labels
        )
        total_iou += max_iou
    mean_iou = total_iou / len(annotations.videos)
    by_length = np.bincount(lattice.lengths, weights=mean_iou) / np.maximum(
        np.bincount(lattice.lengths), 1
    )
    return by_length[lattice.lengths]


def score_file(
    ground_truth_path, predictions_path, subset="validation", task="detection"
):
    """Official ActivityNet metrics of a submission file, in the metrics.json layout."""
    if task == "detection":
        return {
            "detection": metrics.evaluate_detection(
                ground_truth_path, predictions_path, subset=subset
            )
        }
    result = metrics.evaluate_proposals(
        ground_truth_path, predictions_path, subset=subset
    )
    return {"proposals": proposal_summary(result)}


def proposal_summary(result):
    """The scalar proposal metrics of `metrics.evaluate_proposals` output."""
    return {key: float(result[key]) for key in PROPOSAL_SUMMARY}
