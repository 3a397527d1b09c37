"""One run, from a `RunConfig`: training both networks, then the final
evaluation (inference, writing, scoring, reporting). The entry points
(train.py, evaluate.py) call `train_and_evaluate` and `evaluate_run`; the run
folder and the data are `tal_keras.run`'s."""

import logging
import os

import numpy as np

from tal_keras import (
    detections,
    evaluation,
    inference,
    pipeline,
    plots,
    report,
    run,
    training,
)
from tal_keras.atomic import write_json_atomic
from tal_keras.errors import DataError
from tal_keras.networks import NETWORKS

logger = logging.getLogger("tal_keras")


def train_and_evaluate(run_config, resume=False, evaluate_at_end=True):
    """Trains the networks of `run_config.train.networks`, then evaluates.
    Call it holding the run folder's lock (`RunFolder.lock`)."""
    folder = run.folder_of(run_config)
    if resume:
        folder.check_resumable(run_config.train)
    else:
        folder.check_fresh(run_config.train.networks)
    class_names = run_class_names(run_config)
    train_config = run_config.train
    train_annotations, train_cache = run.open_subset(
        run_config, run_config.data.train_subset
    )
    if train_annotations.num_segments == 0:
        raise DataError(
            f"{run_config.data.annotations}: subset {run_config.data.train_subset!r} "
            f"has {len(train_annotations)} videos but no segment: nothing to train on."
        )
    eval_annotations, eval_cache = run.open_subset(
        run_config, run_config.data.eval_subset
    )
    if train_cache.clips.nbytes < 4 << 30:
        train_cache.load_into_memory()
        eval_cache.load_into_memory()
    ground_truth = evaluation.ground_truth_of(
        eval_annotations, run_config.data.blocklist
    )
    # Written once the data is known to be usable: a failed start leaves no
    # config.json claiming a run.
    folder.write_config(run_config)
    folder.write_class_names(class_names)
    # Where the prototype layers of both networks start (one pass over the
    # training clips).
    prototypes = initial_prototypes(run_config, train_annotations, train_cache)
    for network in train_config.networks:
        spec = NETWORKS[network]
        metric_name, score_fn = spec.validation(
            run_config, eval_cache, ground_truth, class_names
        )
        dataset = pipeline.make_dataset(
            train_cache,
            spec.target,
            train_config.batch_size,
            shuffle=True,
            seed=train_config.seed,
        )
        training.train_network(
            network,
            run_config,
            dataset,
            score_fn=score_fn,
            metric_name=metric_name,
            resume=resume,
            overlap_prior=overlap_prior(run_config, train_cache)
            if network == "proposal" and run_config.model.overlap_cell_bias
            else None,
            prototypes=prototypes,
        )
    if evaluate_at_end:
        evaluate_run(
            run_config, eval_annotations=eval_annotations, eval_cache=eval_cache
        )


def initial_prototypes(run_config, train_annotations, train_cache):
    """{layer name: {weight name: array}}: where the prototype layers of both
    networks start (`training.train_network`, which skips the layers a
    network lacks): each class's mean start and end clip window
    (`class_mean_prototypes`) and mean clip inside its instances
    (`class_mean_bodies`) over the training videos, for --boundary_prototypes,
    --body_prototypes, --prototype_evidence and --class_prototypes; {}
    without any of them."""
    from tal_keras.layers.body_prototypes import class_mean_bodies
    from tal_keras.layers.boundary_prototypes import class_mean_prototypes

    model = run_config.model
    evidence = model.prototype_evidence > 0
    boundaries = model.boundary_prototypes or model.class_prototypes or evidence
    bodies = model.body_prototypes or model.class_prototypes or evidence
    if not (boundaries or bodies):
        return {}
    videos = [
        (
            train_annotations.videos[video_id].segments,
            train_annotations.videos[video_id].labels,
        )
        for video_id in train_cache.video_ids
    ]
    prototypes = {}
    if boundaries:
        start, end = class_mean_prototypes(
            train_cache.clips, train_cache.durations, videos, model.num_classes
        )
        if model.boundary_prototypes:
            prototypes["boundary_prototypes"] = {
                "start_prototypes": start,
                "end_prototypes": end,
            }
    if bodies:
        body = class_mean_bodies(
            train_cache.clips, train_cache.durations, videos, model.num_classes
        )
        if model.body_prototypes:
            prototypes["body_prototypes"] = {"prototypes": body}
    if evidence:
        prototypes["prototype_evidence"] = {
            "start_prototypes": start,
            "end_prototypes": end,
            "body_prototypes": body,
        }
    if model.class_prototypes:
        prototypes["class_prototypes"] = {
            "start_prototypes": start,
            "end_prototypes": end,
            "body_prototypes": body,
        }
    return prototypes


def overlap_prior(run_config, train_cache):
    """float64 [P]: the mean overlap target of the proposals of each length
    over the training videos, per proposal (where --overlap_cell_bias starts
    its biases: the content-blind baseline's length prior, in target units;
    per length rather than per cell, which generalises better)."""
    from tal_keras.targets import scaled_overlap

    train = run_config.train
    targets = scaled_overlap(
        np.asarray(train_cache.max_iou), train.overlap_t_min, train.overlap_t_max
    )
    lengths = run_config.model.lattice.lengths
    mean = targets.astype(np.float64).mean(axis=0)
    by_length = np.bincount(lengths, weights=mean) / np.maximum(np.bincount(lengths), 1)
    return by_length[lengths]


def evaluate_run(
    run_config, eval_annotations=None, eval_cache=None, video_labels="", show=""
):
    """Runs the best epochs of both networks on the evaluation subset; writes
    proposals.json, detections.json, metrics.json (with the baseline's) and
    ar_an.png into the run folder; prints the metric table. Returns the
    metrics.json dict."""
    folder = run.folder_of(run_config)
    if eval_cache is None:
        eval_annotations, eval_cache = run.open_subset(
            run_config, run_config.data.eval_subset
        )
    lattice = run_config.model.lattice
    class_names = run_class_names(run_config)
    # Inputs are checked before any result is rewritten.
    if show and show not in eval_cache.video_ids:
        raise DataError(
            f"--show {show}: not a usable video of subset "
            f"{run_config.data.eval_subset} ({len(eval_cache)} videos, e.g. "
            f"{eval_cache.video_ids[0]})"
        )
    labels = (
        inference.read_video_labels(video_labels, class_names) if video_labels else None
    )
    ground_truth = evaluation.ground_truth_of(
        eval_annotations, run_config.data.blocklist
    )
    overlap_scores, class_scores = infer(run_config, eval_cache)
    proposals = inference.proposal_results(
        run_config, lattice, eval_cache, overlap_scores
    )
    results = None
    if class_scores is not None:
        results = inference.detection_results(
            run_config,
            lattice,
            eval_cache,
            overlap_scores,
            class_scores,
            class_names,
            labels,
        )
    summary, proposal_metrics, baseline_metrics = score_run(
        ground_truth, proposals, results, baseline_of(run_config, eval_cache)
    )
    write_results(
        folder, proposals, results, summary, proposal_metrics, baseline_metrics
    )
    report.print_run_summary(run_config, summary, eval_cache)
    if show:
        show_video(
            run_config,
            eval_annotations,
            eval_cache,
            show,
            overlap_scores,
            results if results is not None else proposals,
        )
    return summary


def run_class_names(run_config):
    """The class names of the run: those it was trained with (classes.txt),
    which the data's must equal; the data's for runs without the file."""
    folder = run.folder_of(run_config)
    class_names = run.class_names_of(run_config.data)
    trained_with = folder.read_class_names()
    if trained_with is None:
        return class_names
    if trained_with != class_names:
        raise DataError(
            f"{folder.class_names_file}: the run was trained with other class "
            f"names or another order than {run_config.data.category_file or run_config.data.annotations} "
            "gives; pass the category file it was trained with."
        )
    return trained_with


def infer(run_config, cache):
    """(overlap_scores [V, P], class_scores [V, P, C] or None) of the best
    epochs on the videos of `cache`; None when no classifier is trained."""
    folder = run.folder_of(run_config)
    batch_size = run_config.eval.batch_size
    proposal_path = folder.require_best_model(
        "proposal", "train the proposal network first."
    )
    overlap_scores = inference.predict_scores(
        inference.load_network(proposal_path), cache, batch_size
    )
    classifier_path = folder.best_model("classifier")
    if not os.path.exists(classifier_path):
        logger.warning(
            "%s does not exist: no detections (train the classifier)", classifier_path
        )
        return overlap_scores, None
    class_scores = inference.predict_scores(
        inference.load_network(classifier_path), cache, batch_size
    )
    return overlap_scores, class_scores


def write_results(
    folder, proposals, results, summary, proposal_metrics, baseline_metrics
):
    """proposals.json, detections.json (when there are detections; an older
    one is removed otherwise), metrics.json and ar_an.png, replaced as a set."""
    writers = {
        run.PROPOSALS: lambda path: detections.write_submission(path, proposals),
        run.METRICS: lambda path: write_json_atomic(path, summary, indent=2),
        run.AR_AN_PLOT: lambda path: plots.ar_an_curve(
            proposal_metrics, path, baseline=baseline_metrics
        ),
    }
    if results is not None:
        writers[run.DETECTIONS] = lambda path: detections.write_submission(
            path, results
        )
    folder.replace_results(
        writers, remove=() if results is not None else (run.DETECTIONS,)
    )


def baseline_prior(run_config):
    """float64 [P]: the length prior of the training annotations the
    content-blind baseline scores proposals by (no features needed); None,
    with a warning, without training data."""
    try:
        return evaluation.length_prior(
            run_config.model.lattice,
            run.open_annotations(run_config, run_config.data.train_subset),
        )
    except DataError as error:
        logger.warning("baseline prior without training data (%s)", error)
        return None


def baseline_of(run_config, eval_cache):
    """The content-blind baseline's proposals on the evaluation videos
    (`baseline_prior`, the run's postprocessing)."""
    return evaluation.baseline_results(
        run_config, run_config.model.lattice, eval_cache, baseline_prior(run_config)
    )


def score_run(ground_truth, proposals, results, baseline):
    """(metrics.json dict, proposal metrics, baseline proposal metrics): the
    official scores of the run's proposals, detections (None: not scored)
    and the baseline's proposals."""
    proposal_metrics = evaluation.score_proposals(ground_truth, proposals)
    summary = {"proposals": evaluation.proposal_summary(proposal_metrics)}
    if results is not None:
        summary["detection"] = evaluation.score_detections(ground_truth, results)
    baseline_metrics = evaluation.score_proposals(ground_truth, baseline)
    summary["baseline"] = {"proposals": evaluation.proposal_summary(baseline_metrics)}
    return summary, proposal_metrics, baseline_metrics


def show_video(run_config, annotations, cache, video_id, overlap_scores, results):
    """evaluate.py --show: one video's ground truth, predictions and P_over map."""
    if video_id not in cache.video_ids:
        raise DataError(
            f"--show {video_id}: not a usable video of subset {run_config.data.eval_subset}"
        )
    path = run.folder_of(run_config).show_figure(video_id)
    plots.video_figure(
        run_config.model.lattice,
        annotations[video_id],
        run_class_names(run_config),
        overlap_scores[cache.video_ids.index(video_id)],
        results[video_id],
        path,
    )
    print(f"figure of {video_id} in {path}")
