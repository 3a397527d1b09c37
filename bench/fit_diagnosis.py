"""Does a trained proposal network underfit or overfit? (docs/benchmarks.md)

    python bench/fit_diagnosis.py RUN_FOLDER [RUN_FOLDER ...] [--out diag.md]

For each run folder (after train.py) and for both its training and its
evaluation subset: the proposals' AUC and the content-blind baseline's
(length prior of the training annotations), the overlap loss of the network
and of the length prior itself (in target units: the training videos' mean
target per proposal length), the mean true IoU of each video's top-scored proposal
(network and prior), and how far P_over follows the true max IoU
beyond the length prior (the correlation of both after the mean of each
proposal length is taken out, over all videos; overall and per third of the
lengths). A network whose training loss is above the prior's underfits; one
whose training residual correlation is far above its validation one
overfits the content. Nothing is written into the run folders.
"""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.run_folder_table import print_run_folder_table
from tal_keras.targets import scaled_overlap

EPSILON = 1e-7


def length_prior_targets(targets, lengths):
    """float64 [P]: the mean of `targets` [V, P] over the videos and over the
    proposals of each length, per proposal."""
    mean = np.asarray(targets, np.float64).mean(axis=0)
    by_length = np.bincount(lengths, weights=mean) / np.maximum(np.bincount(lengths), 1)
    return by_length[lengths]


def overlap_bce(targets, scores):
    """Mean binary cross-entropy of `scores` against `targets` (broadcast)."""
    scores = np.clip(np.asarray(scores, np.float64), EPSILON, 1 - EPSILON)
    targets = np.asarray(targets, np.float64)
    return float(
        -(targets * np.log(scores) + (1 - targets) * np.log(1 - scores)).mean()
    )


def residual_correlation(scores, max_iou, lengths, cells=None):
    """Pearson correlation of `scores` and `max_iou` [V, P] after the mean over
    all videos and proposals of each length is subtracted from both (what the
    scores say beyond a length prior); restricted to the proposals `cells`
    (bool [P]) when given."""
    scores = np.asarray(scores, np.float64)
    max_iou = np.asarray(max_iou, np.float64)
    score_residual = scores - length_prior_targets(scores, lengths)
    iou_residual = max_iou - length_prior_targets(max_iou, lengths)
    if cells is not None:
        score_residual, iou_residual = score_residual[:, cells], iou_residual[:, cells]
    denominator = np.sqrt((score_residual**2).sum() * (iou_residual**2).sum())
    return float((score_residual * iou_residual).sum() / max(denominator, 1e-12))


def top1_iou(scores, max_iou):
    """Mean over the videos of the true max IoU of the proposal scored
    highest (`scores` [V, P] or [P], the same for every video)."""
    max_iou = np.asarray(max_iou, np.float64)
    scores = np.broadcast_to(scores, max_iou.shape)
    return float(max_iou[np.arange(len(max_iou)), scores.argmax(axis=1)].mean())


def length_thirds(lengths):
    """Three bool [P] masks: the shortest, middle and longest third of the
    proposal lengths (by quantile)."""
    low, high = np.quantile(lengths, [1 / 3, 2 / 3])
    return lengths < low, (lengths >= low) & (lengths < high), lengths >= high


def diagnose_subset(run_config, model, subset, baseline_prior, prior_targets):
    """The metrics of one subset (see the module docstring) as a dict, with
    the baseline scored by `baseline_prior` (`evaluation.length_prior`); also
    returns `prior_targets`, the training subset's when it was None."""
    from tal_keras import evaluation, inference, run

    lattice = run_config.model.lattice
    lengths = np.asarray(lattice.lengths)
    annotations, cache = run.open_subset(run_config, subset)
    ground_truth = evaluation.ground_truth_of(annotations, run_config.data.blocklist)
    scores = inference.predict_scores(model, cache, run_config.eval.batch_size)
    proposals = inference.proposal_results(run_config, lattice, cache, scores)
    auc = evaluation.proposal_summary(
        evaluation.score_proposals(ground_truth, proposals)
    )["AUC"]
    baseline = evaluation.baseline_results(run_config, lattice, cache, baseline_prior)
    baseline_auc = evaluation.proposal_summary(
        evaluation.score_proposals(ground_truth, baseline)
    )["AUC"]
    max_iou = np.asarray(cache.max_iou, np.float64)
    train = run_config.train
    targets = scaled_overlap(max_iou, train.overlap_t_min, train.overlap_t_max)
    if prior_targets is None:
        prior_targets = length_prior_targets(targets, lengths)
    row = {
        "videos": len(cache),
        "AUC": 100 * auc,
        "baseline AUC": 100 * baseline_auc,
        "loss": overlap_bce(targets, scores),
        "prior loss": overlap_bce(targets, prior_targets[None, :]),
        "top-1 IoU": top1_iou(scores, max_iou),
        "prior top-1 IoU": top1_iou(prior_targets, max_iou),
        "residual corr": residual_correlation(scores, max_iou, lengths),
    }
    for name, cells in zip(("short", "middle", "long"), length_thirds(lengths)):
        row[f"{name} third"] = residual_correlation(scores, max_iou, lengths, cells)
    return row, prior_targets


def diagnose(run_folder):
    """[(subset, metrics dict)] of the training and evaluation subsets."""
    from tal_keras import evaluation, inference, run

    folder = run.RunFolder(run_folder)
    run_config = folder.read_config()
    model = inference.load_network(
        folder.require_best_model("proposal", "train it first.")
    )
    train_subset = run_config.data.train_subset
    baseline_prior = evaluation.length_prior(
        run_config.model.lattice, run.open_annotations(run_config, train_subset)
    )
    rows, prior_targets = [], None
    for subset in (train_subset, run_config.data.eval_subset):
        row, prior_targets = diagnose_subset(
            run_config, model, subset, baseline_prior, prior_targets
        )
        rows.append((subset, row))
    return rows


def table_rows(run_folder):
    """The table's rows of one run folder: its training and evaluation subsets."""
    for subset, row in diagnose(run_folder):
        cells = {
            name: f"{value:.4f}"
            if isinstance(value, float) and abs(value) < 2
            else (f"{value:.2f}" if isinstance(value, float) else str(value))
            for name, value in row.items()
        }
        yield {"run": run_folder, "subset": subset, **cells}


def main(argv=None):
    print_run_folder_table(__doc__.split("\n\n")[0], table_rows, argv)


if __name__ == "__main__":
    main()
