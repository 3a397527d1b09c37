"""One run, from a `RunConfig`: training both networks, then the final
evaluation (inference, writing, scoring, reporting). The entry points
(train.py, evaluate.py) call `train_and_evaluate` and `evaluate_run`; the run
folder and the data are `tal_keras.run`'s."""

import dataclasses
import logging
import os

import numpy as np

from tal_keras import (
    detections,
    evaluation,
    inference,
    metrics,
    pipeline,
    plots,
    report,
    run,
    training,
)
from tal_keras.atomic import write_json_atomic
from tal_keras.errors import DataError, raise_if_stop_requested
from tal_keras.networks import NETWORKS, TrainingData
from tal_keras.selection import held_out_rows

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
    fit_cache, choice = epoch_choice(
        run_config, train_annotations, train_cache, eval_cache, ground_truth
    )
    logger.info(
        "training on %d videos; kept epochs chosen on %s",
        len(fit_cache),
        choice.description,
    )
    training_data = TrainingData(run_config, train_annotations, fit_cache)
    for network in train_config.networks:
        spec = NETWORKS[network]
        metric_name, score_fn = spec.validation(
            run_config, choice.cache, choice.ground_truth, class_names
        )
        dataset = pipeline.make_dataset(
            fit_cache,
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
            training_data=training_data,
        )
    if evaluate_at_end:
        raise_if_stop_requested()
        evaluate_run(
            run_config, eval_annotations=eval_annotations, eval_cache=eval_cache
        )


@dataclasses.dataclass(frozen=True)
class EpochChoice:
    """The videos each network's kept epoch is chosen on.

    Attributes:
        cache: their clips (a `ClipCache` or `CacheSubset`).
        ground_truth: their official ground truth (`metrics.GroundTruth`).
        description: what they are, one line (metrics.json, the log).
    """

    cache: object
    ground_truth: object
    description: str


def epoch_choice(run_config, train_annotations, train_cache, eval_cache, eval_truth):
    """(the cache the networks train on, `EpochChoice`) under
    `run_config.train.select_epoch_on`: held-out training videos with
    segments (`selection.held_out_rows`), which then do not train, or the
    evaluation subset."""
    train = run_config.train
    if train.select_epoch_on == "eval_subset":
        return train_cache, EpochChoice(
            eval_cache, eval_truth, epoch_choice_description(run_config)
        )
    # Held out from the videos with segments: the official scoring needs some.
    annotated = np.asarray(
        [
            row
            for row, video_id in enumerate(train_cache.video_ids)
            if len(train_annotations[video_id].segments)
        ],
        np.int64,
    )
    rows = annotated[
        held_out_rows(
            [train_cache.video_ids[row] for row in annotated],
            train.selection_fraction,
        )
    ]
    if not len(rows):
        raise DataError(
            f"{run_config.data.annotations}: subset {run_config.data.train_subset!r} "
            f"has {len(annotated)} usable video(s) with segments, too few to hold "
            "any out for choosing the kept epoch; pass --select_epoch_on=eval_subset."
        )
    held_out = train_cache.subset(rows)
    fit_cache = train_cache.subset(np.setdiff1d(np.arange(len(train_cache)), rows))
    # The official ground truth of the held-out videos alone: every other
    # video of the training subset is left out as the blocklist is.
    others = set(train_annotations.video_ids) - set(held_out.video_ids)
    ground_truth = metrics.load_ground_truth(
        run_config.data.annotations,
        subset=run_config.data.train_subset,
        blocked_videos=[*run_config.data.blocklist, *others],
    )
    return fit_cache, EpochChoice(
        held_out, ground_truth, epoch_choice_description(run_config, len(held_out))
    )


def epoch_choice_description(run_config, held_out=None):
    """Where the kept epochs are chosen, one line."""
    if run_config.train.select_epoch_on == "eval_subset":
        return f"the evaluation subset {run_config.data.eval_subset!r}"
    count = "" if held_out is None else f"{held_out} videos, "
    return (
        f"held-out videos of the training subset {run_config.data.train_subset!r} "
        f"({count}{run_config.train.selection_fraction:g} of it)"
    )


def evaluate_run(
    run_config, eval_annotations=None, eval_cache=None, video_labels="", show=""
):
    """Runs the kept epochs of both networks on the evaluation subset; writes
    proposals.json, detections.json, metrics.json (with the baseline's, how
    the epochs were chosen and the last epochs' metrics) and ar_an.png into
    the run folder; prints the metric table. Returns the metrics.json dict."""
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

    def predictions(epoch):
        overlap_scores, class_scores = infer(run_config, eval_cache, epoch)
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
        return overlap_scores, proposals, results

    overlap_scores, proposals, results = predictions("kept")
    summary, proposal_metrics, baseline_metrics = score_run(
        ground_truth, proposals, results, baseline_of(run_config, eval_cache)
    )
    summary["epochs"] = epochs_summary(run_config)
    kept_is_last = all(
        epochs["kept"] == epochs["last"] for epochs in summary["epochs"].values()
    )
    last = {key: summary[key] for key in ("proposals", "detection") if key in summary}
    if not kept_is_last:
        _, last_proposals, last_results = predictions("last")
        last = score_run(ground_truth, last_proposals, last_results, None)[0]
    summary["last_epoch"] = last
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
    which the data's must equal (`RunFolder.checked_class_names`); the data's
    for runs without the file."""
    data = run_config.data
    return run.folder_of(run_config).checked_class_names(
        run.class_names_of(data), data.category_file or data.annotations
    )


def infer(run_config, cache, epoch="kept"):
    """(overlap_scores [V, P], class_scores [V, P, C] or None) of the kept
    (or, epoch="last", the last) epochs on the videos of `cache`; None when
    no classifier is trained."""
    folder = run.folder_of(run_config)
    batch_size = run_config.eval.batch_size
    proposal_path = folder.require_best_model(
        "proposal", "train the proposal network first."
    )
    if epoch == "last":
        proposal_path = last_model(folder, "proposal") or proposal_path
    overlap_scores = inference.predict_scores(
        inference.load_network(proposal_path), cache, batch_size
    )
    classifier_path = folder.best_model("classifier")
    if epoch == "last" and os.path.exists(classifier_path):
        classifier_path = last_model(folder, "classifier") or classifier_path
    if not os.path.exists(classifier_path):
        if epoch == "kept":  # said once per evaluation
            logger.warning(
                "%s does not exist: no detections (train the classifier)",
                classifier_path,
            )
        return overlap_scores, None
    class_scores = inference.predict_scores(
        inference.load_network(classifier_path), cache, batch_size
    )
    return overlap_scores, class_scores


def last_model(folder, network):
    """The path of `network`'s last epoch (its checkpoint), or None."""
    network_dir = folder.network(network)
    return run.checkpoint_of(network_dir, run.read_state(network_dir))


def epochs_summary(run_config):
    """{network: {"kept", "last", "metric", "chosen_on"}} of the trained
    networks: the epoch kept, the last epoch trained, the metric that chose
    and where (metrics.json)."""
    folder = run.folder_of(run_config)
    chosen_on = epoch_choice_description(run_config)
    summary = {}
    for network in NETWORKS:
        state = folder.read_state(network)
        if state is None:
            continue
        summary[network] = {
            "kept": state["best_epoch"],
            "last": state["epochs_done"],
            "metric": state["metric"] if state["best_epoch"] else None,
            "chosen_on": chosen_on,
        }
    return summary


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
    and the baseline's proposals (None: not scored)."""
    proposal_metrics = evaluation.score_proposals(ground_truth, proposals)
    summary = {"proposals": evaluation.proposal_summary(proposal_metrics)}
    if results is not None:
        summary["detection"] = evaluation.score_detections(ground_truth, results)
    baseline_metrics = None
    if baseline is not None:
        baseline_metrics = evaluation.score_proposals(ground_truth, baseline)
        summary["baseline"] = {
            "proposals": evaluation.proposal_summary(baseline_metrics)
        }
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
