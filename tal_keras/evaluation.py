"""Running trained networks over a subset and scoring them with the official
ActivityNet protocol; the content-blind baseline; the metric table.

Scores are always computed against the raw annotation file (as the official
evaluator reads it), so videos whose features were unusable count as missed.
"""

import json
import logging
import os

import numpy as np

from tal_keras import detections, metrics
from tal_keras.atomic import write_json_atomic
from tal_keras.errors import DataError

logger = logging.getLogger("tal_keras")


def predict_scores(model, cache, batch_size):
    """Runs `model` over every video of `cache`; numpy outputs in cache order."""
    from tal_keras import pipeline

    outputs = model.predict(
        pipeline.make_inference_dataset(cache, batch_size), verbose=0
    )
    if isinstance(outputs, dict):
        return {name: np.asarray(value) for name, value in outputs.items()}
    return np.asarray(outputs)


def ground_truth_of(annotations, blocklist=()):
    """The official evaluator's view of the annotation file's evaluation subset
    (raw segments, as the official code reads them), loaded once."""
    subset = annotations.subsets[0] if annotations.subsets else "validation"
    return metrics.load_ground_truth(
        annotations.path, subset=subset, blocked_videos=blocklist
    )


def proposal_results(run_config, lattice, cache, overlap_scores):
    """{video_id: [{"score", "segment"}]} of every cached video."""
    return {
        video_id: detections.video_proposals(
            lattice,
            duration,
            overlap_scores[row],
            nms_threshold=run_config.eval.nms_threshold,
            top_k=run_config.eval.proposals_per_video,
        )
        for row, (video_id, duration) in enumerate(
            zip(cache.video_ids, cache.durations)
        )
    }


def detection_results(
    run_config,
    lattice,
    cache,
    overlap_scores,
    class_scores,
    class_names,
    video_labels=None,
):
    """{video_id: [{"label", "score", "segment"}]} of every cached video."""
    video_labels = video_labels or {}
    return {
        video_id: detections.video_detections(
            lattice,
            duration,
            overlap_scores[row],
            class_scores[row],
            class_names,
            top_m=run_config.eval.top_pairs,
            nms_threshold=run_config.eval.nms_threshold,
            soft_nms=run_config.eval.soft_nms,
            top_k=run_config.eval.detections_per_video,
            video_labels=video_labels.get(video_id),
        )
        for row, (video_id, duration) in enumerate(
            zip(cache.video_ids, cache.durations)
        )
    }


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


def detection_map_scorer(run_config, lattice, cache, ground_truth, proposal_model_path):
    """classifier -> validation average mAP with the trained proposal network."""
    import keras

    proposal_model = keras.saving.load_model(proposal_model_path, compile=False)
    overlap_scores = predict_scores(proposal_model, cache, run_config.eval.batch_size)
    class_names = _class_names(run_config)

    def score(model):
        class_scores = predict_scores(model, cache, run_config.eval.batch_size)
        results = detection_results(
            run_config, lattice, cache, overlap_scores, class_scores, class_names
        )
        return score_detections(ground_truth, results)["average_mAP"]

    return score


def _class_names(run_config):
    from tal_keras.experiment import class_names_of

    return class_names_of(run_config.data)


def baseline_results(run_config, lattice, cache, train_cache=None):
    """Content-blind sliding windows: every lattice proposal scored by a prior
    that depends only on its length (see detections.sliding_window_proposals)."""
    prior = None
    if train_cache is not None:
        prior = length_prior(lattice, train_cache)
    return {
        video_id: detections.sliding_window_proposals(
            lattice,
            duration,
            prior=prior,
            nms_threshold=run_config.eval.nms_threshold,
            top_k=run_config.eval.proposals_per_video,
        )
        for video_id, duration in zip(cache.video_ids, cache.durations)
    }


def length_prior(lattice, cache):
    """float64 [P]: mean max IoU with the ground truth of each lattice cell over
    the training videos, averaged over cells of the same length (so it knows
    which lengths are common, and nothing of any video's content)."""
    mean_iou = np.asarray(cache.max_iou, dtype=np.float64).mean(axis=0)
    by_length = np.bincount(lattice.lengths, weights=mean_iou) / np.maximum(
        np.bincount(lattice.lengths), 1
    )
    return by_length[lattice.lengths]


def read_video_labels(path, class_names):
    """{video_id: [(label, score), ...]} from an external video-level classifier."""
    try:
        with open(path) as stream:
            payload = json.load(stream)
    except (OSError, json.JSONDecodeError) as error:
        raise DataError(f"{path}: cannot read the video labels: {error}") from None
    payload = payload.get("results", payload)
    known = set(class_names)
    labels = {}
    for video_id, pairs in payload.items():
        try:
            labels[video_id] = [(str(label), float(score)) for label, score in pairs]
        except (TypeError, ValueError):
            raise DataError(
                f"{path}: video {video_id}: expected [[label, score], ...], got {pairs!r}"
            ) from None
        for label, _ in labels[video_id]:
            if label not in known:
                raise DataError(
                    f"{path}: video {video_id}: label {label!r} is not one of the {len(known)} classes"
                )
    return labels


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
    return {"proposals": _proposal_summary(result)}


def _proposal_summary(result):
    return {
        key: float(result[key]) for key in ("AR@1", "AR@5", "AR@10", "AR@100", "AUC")
    }


def format_metrics_table(rows):
    """A plain-text table, one row per named metrics dict, in percent."""
    columns = [
        ("AR@1", ("proposals", "AR@1")),
        ("AR@10", ("proposals", "AR@10")),
        ("AR@100", ("proposals", "AR@100")),
        ("AUC", ("proposals", "AUC")),
        ("mAP@0.5", ("detection", "mAP", "0.50")),
        ("mAP@0.75", ("detection", "mAP", "0.75")),
        ("mAP@0.95", ("detection", "mAP", "0.95")),
        ("avg mAP", ("detection", "average_mAP")),
    ]
    present = [
        (title, keys)
        for title, keys in columns
        if any(_dig(row, keys) is not None for row in rows.values())
    ]
    width = max(len(name) for name in rows) + 2
    lines = ["".ljust(width) + "".join(title.rjust(10) for title, _ in present)]
    for name, row in rows.items():
        cells = []
        for _, keys in present:
            value = _dig(row, keys)
            cells.append(("-" if value is None else f"{100 * value:.2f}").rjust(10))
        lines.append(name.ljust(width) + "".join(cells))
    return "\n".join(lines)


def _dig(mapping, keys):
    for key in keys:
        if not isinstance(mapping, dict) or key not in mapping:
            return None
        mapping = mapping[key]
    return mapping


def evaluate_run(
    run_config, eval_annotations=None, eval_cache=None, video_labels="", show=""
):
    """Runs the best epochs of both networks on the evaluation subset; writes
    proposals.json, detections.json, metrics.json (with the baseline's) and
    ar_an.png into the workdir; prints the metric table."""
    import keras

    from tal_keras import experiment, plots

    workdir = run_config.workdir
    if eval_cache is None:
        eval_annotations, eval_cache = experiment.open_subset(
            run_config, run_config.data.eval_subset
        )
    lattice = run_config.model.lattice
    ground_truth = ground_truth_of(eval_annotations, run_config.data.blocklist)
    class_names = _class_names(run_config)
    paths = {
        network: os.path.join(workdir, network, "best.keras")
        for network in ("proposal", "classifier")
    }
    if not os.path.exists(paths["proposal"]):
        raise FileNotFoundError(
            f"{paths['proposal']} does not exist: train the proposal network first."
        )
    proposal_model = keras.saving.load_model(paths["proposal"], compile=False)
    overlap_scores = predict_scores(
        proposal_model, eval_cache, run_config.eval.batch_size
    )
    proposals = proposal_results(run_config, lattice, eval_cache, overlap_scores)
    detections.write_submission(os.path.join(workdir, "proposals.json"), proposals)
    proposal_metrics = score_proposals(ground_truth, proposals)
    summary = {"proposals": _proposal_summary(proposal_metrics)}
    class_scores = results = None
    if os.path.exists(paths["classifier"]):
        classifier = keras.saving.load_model(paths["classifier"], compile=False)
        class_scores = predict_scores(
            classifier, eval_cache, run_config.eval.batch_size
        )
        labels = read_video_labels(video_labels, class_names) if video_labels else None
        results = detection_results(
            run_config,
            lattice,
            eval_cache,
            overlap_scores,
            class_scores,
            class_names,
            labels,
        )
        detections.write_submission(os.path.join(workdir, "detections.json"), results)
        summary["detection"] = score_detections(ground_truth, results)
    else:
        logger.warning(
            "%s does not exist: no detections (train the classifier)",
            paths["classifier"],
        )
    train_cache = None
    try:
        _, train_cache = experiment.open_subset(
            run_config, run_config.data.train_subset
        )
    except DataError as error:
        logger.warning("baseline prior without training data (%s)", error)
    baseline = baseline_results(run_config, lattice, eval_cache, train_cache)
    baseline_metrics = score_proposals(ground_truth, baseline)
    summary["baseline"] = {"proposals": _proposal_summary(baseline_metrics)}
    plots.ar_an_curve(
        proposal_metrics, os.path.join(workdir, "ar_an.png"), baseline=baseline_metrics
    )
    write_json_atomic(os.path.join(workdir, "metrics.json"), summary, indent=2)
    print(
        f"\n{run_config.data.eval_subset}: {len(eval_cache)} videos scored ({len(eval_cache.skipped)} skipped)"
    )
    print(
        format_metrics_table(
            {"S-2D-TAN": summary, "baseline (content-blind)": summary["baseline"]}
        )
    )
    print(
        f"results in {workdir}: proposals.json, detections.json, metrics.json, ar_an.png"
    )
    if show:
        if show not in eval_cache.video_ids:
            raise DataError(
                f"--show {show}: not a usable video of subset {run_config.data.eval_subset}"
            )
        row = eval_cache.video_ids.index(show)
        path = os.path.join(workdir, f"show_{show}.png")
        plots.video_figure(
            lattice,
            eval_annotations[show],
            class_names,
            overlap_scores[row],
            (results if class_scores is not None else proposals)[show],
            path,
        )
        print(f"figure of {show} in {path}")
    return summary
