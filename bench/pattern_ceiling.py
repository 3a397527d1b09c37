"""How much of the proposal AUC can each kind of evidence give on a
benchmark dataset (tal_keras.data.benchmarks)? (docs/benchmarks.md)

    python bench/pattern_ceiling.py RUN_FOLDER [RUN_FOLDER ...] [--out ceiling.md]

Each RUN_FOLDER is a train.py run on one benchmark dataset (only its
config and clip caches are read; nothing is written into it). On the
run's evaluation videos, at its N, every proposal is scored by the log of
the content-blind length prior plus one kind of evidence times a weight, and
the official AUC of the proposals (same NMS and count as train.py) is
printed for the best weight of a small grid:

- "length prior": the prior alone (the baseline train.py reports);
- "true boundaries": the generator's own onset and offset patterns (read
  back from the dataset's benchmark.json): a proposal's start clip scored
  by its best onset match (that clip or the next), its end clip by its best
  offset match; what a perfect boundary detector could add;
- "true bodies": the generator's body patterns: a proposal's mean body
  match inside minus outside, best class;
- "true both": both of the above, each with its own weight;
- "class-mean prototypes": no generator knowledge; the best start and end
  matches with each class's mean start and end clip window over the
  training videos (`tal_keras.class_means`), summed;
- "class-mean bodies": no generator knowledge; "true bodies" with each
  class's mean clip inside its training instances in place of the body
  pattern;
- "true bodies (flanks)", "class-mean bodies (flanks)": the same with
  outside = the proposal's flanks, ceil(FLANK * L) clips on each side of a
  proposal of L clips (`--class_mean_flank`);
- "class means: min boundaries + bodies (flanks)": min(start, end) of the
  class-mean prototypes (best class) plus "class-mean bodies (flanks)",
  each with its own weight, close to where the class-mean evidence's
  weighted sum starts (`layers.ClassMeanEvidence`);
- "true IoU": P_over = the true max IoU (the ceiling of any scorer at this
  N with this NMS).

The weight (0 included: the prior alone) is chosen on the evaluation
videos themselves, so each number is an upper bound for its kind of
evidence with this scorer, not a result a method reaches; "true both"
shows its boundary weight.
"""

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.run_folder_table import print_run_folder_table

WEIGHTS = (0.0, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4)
FLANK = 0.25


def unit_matches(features, patterns):
    """float64 [V, N, K]: each clip's dot product with each row of `patterns`
    divided by that row's norm."""
    norms = np.linalg.norm(patterns, axis=1)
    return features @ (patterns / np.maximum(norms, 1e-12)[:, None]).T


def centred_best_match(features, patterns):
    """float64 [V, N]: each clip's best dot product with a row of `patterns`
    (divided by the patterns' norm), minus its video's mean."""
    best = unit_matches(features, patterns).max(axis=-1)
    return best - best.mean(axis=1, keepdims=True)


def body_contrast(features, bodies, lattice, flank_fraction=0.0):
    """float64 [V, P]: per proposal, the best class's mean body match inside
    it minus outside it (with `flank_fraction` f > 0: minus its flanks,
    ceil(f * L) clips on each side, 0 when it has none)."""
    matches = unit_matches(features, bodies)
    cumulative = np.concatenate(
        [np.zeros_like(matches[:, :1]), np.cumsum(matches, axis=1)], axis=1
    )
    lengths = (lattice.ends - lattice.starts + 1)[None, :, None]
    inside = cumulative[:, lattice.ends + 1] - cumulative[:, lattice.starts]
    num_clips = matches.shape[1]
    if flank_fraction > 0:
        width = np.ceil(flank_fraction * (lattice.ends - lattice.starts + 1))
        left = np.maximum(lattice.starts - width.astype(int), 0)
        right = np.minimum(lattice.ends + 1 + width.astype(int), num_clips)
        outside = (cumulative[:, lattice.starts] - cumulative[:, left]) + (
            cumulative[:, right] - cumulative[:, lattice.ends + 1]
        )
        counts = ((lattice.starts - left) + (right - lattice.ends - 1))[None, :, None]
    else:
        outside = cumulative[:, -1:] - inside
        counts = num_clips - lengths
    contrast = inside / lengths - outside / np.maximum(counts, 1)
    return contrast.max(axis=-1)


def open_benchmark_run(run_folder):
    """A train.py run on a benchmark dataset, read back: its config and
    lattice, the dataset's generator parameters, the training annotations
    and both clip caches, the log length prior [P], and `auc(logits)`, the
    official AUC (%) on the evaluation videos of proposals scored by
    logits [V, P] (same NMS and count as train.py)."""
    import types

    from tal_keras import evaluation, inference, run
    from tal_keras.data import benchmarks

    run_config = run.RunFolder(run_folder).read_config()
    lattice = run_config.model.lattice
    data_dir = os.path.dirname(os.path.abspath(run_config.data.annotations))
    with open(os.path.join(data_dir, benchmarks.PARAMETERS_FILE)) as stream:
        parameters = json.load(stream)
    train_annotations, train_cache = run.open_subset(
        run_config, run_config.data.train_subset
    )
    annotations, cache = run.open_subset(run_config, run_config.data.eval_subset)
    ground_truth = evaluation.ground_truth_of(annotations, run_config.data.blocklist)
    log_prior = np.log(
        np.clip(evaluation.length_prior(lattice, train_annotations), 1e-4, 1.0)
    )

    def auc(logits):
        scores = np.exp(logits - logits.max(axis=1, keepdims=True))
        results = inference.proposal_results(
            run_config, lattice, cache, scores.astype(np.float32)
        )
        return (
            100
            * evaluation.proposal_summary(
                evaluation.score_proposals(ground_truth, results)
            )["AUC"]
        )

    return types.SimpleNamespace(
        run_config=run_config,
        lattice=lattice,
        parameters=parameters,
        train_annotations=train_annotations,
        train_cache=train_cache,
        cache=cache,
        log_prior=log_prior,
        auc=auc,
    )


def ceiling_rows(run_folder):
    """{scorer: (AUC %, best weight or None)} on the run's evaluation videos."""
    from tal_keras.class_means import class_means, clip_windows
    from tal_keras.clips import standardized_clips
    from tal_keras.data import benchmarks

    opened = open_benchmark_run(run_folder)
    run_config, lattice, parameters = (
        opened.run_config,
        opened.lattice,
        opened.parameters,
    )
    train_annotations = opened.train_annotations
    train_cache, cache = opened.train_cache, opened.cache
    log_prior, auc = opened.log_prior, opened.auc

    def best(evidence, other=None):
        """(best AUC, its weight) over WEIGHTS (for `other`, a second weight
        from the same grid; the first is reported)."""
        seconds = WEIGHTS if other is not None else (0.0,)
        found = [
            (
                auc(
                    log_prior[None]
                    + weight * evidence
                    + (second * other if other is not None else 0.0)
                ),
                weight,
            )
            for weight in WEIGHTS
            for second in seconds
        ]
        return max(found)

    patterns = benchmarks.class_patterns(
        parameters["seed"], parameters["num_classes"], parameters["feature_dim"]
    )
    features = standardized_clips(cache.clips)
    onset = centred_best_match(features, patterns["onset"])
    offset = centred_best_match(features, patterns["offset"])
    # Feature windows are centred after their step's start: an onset shows in
    # the clip holding the start or the next one, an offset in the clip
    # holding the end or the one before.
    onset = np.maximum(onset, np.concatenate([onset[:, 1:], onset[:, -1:]], axis=1))
    offset = np.maximum(offset, np.concatenate([offset[:, :1], offset[:, :-1]], axis=1))
    means = class_means(
        train_cache.clips,
        train_cache.durations,
        [
            (train_annotations[video].segments, train_annotations[video].labels)
            for video in train_cache.video_ids
        ],
        run_config.model.num_classes,
    )
    start_prototypes, end_prototypes = means.start, means.end
    windows = clip_windows(features, 1)
    present = np.linalg.norm(start_prototypes, axis=1) > 0
    start_score = centred_best_match(windows, start_prototypes[present])
    end_score = centred_best_match(windows, end_prototypes[present])
    # Per class: min(start, end) before the max.
    per_class = [
        unit_matches(windows, chosen)
        for chosen in (start_prototypes[present], end_prototypes[present])
    ]
    per_class = [score - score.mean(axis=1, keepdims=True) for score in per_class]
    min_boundaries = np.minimum(
        per_class[0][:, lattice.starts], per_class[1][:, lattice.ends]
    ).max(axis=-1)
    bodies = means.body
    body_present = np.linalg.norm(bodies, axis=1) > 0
    max_iou = np.asarray(cache.max_iou, np.float64)
    true_boundaries = onset[:, lattice.starts] + offset[:, lattice.ends]
    true_bodies = body_contrast(features, patterns["body"], lattice)
    flank_bodies = body_contrast(features, bodies[body_present], lattice, FLANK)
    return {
        "length prior": (auc(np.broadcast_to(log_prior, max_iou.shape)), None),
        "true boundaries": best(true_boundaries),
        "true bodies": best(true_bodies),
        "true both": best(true_boundaries, true_bodies),
        "class-mean prototypes": best(
            start_score[:, lattice.starts] + end_score[:, lattice.ends]
        ),
        "class-mean bodies": best(
            body_contrast(features, bodies[body_present], lattice)
        ),
        "true bodies (flanks)": best(
            body_contrast(features, patterns["body"], lattice, FLANK)
        ),
        "class-mean bodies (flanks)": best(flank_bodies),
        "class means: min boundaries + bodies (flanks)": best(
            min_boundaries, flank_bodies
        ),
        "true IoU": (auc(np.log(np.clip(max_iou, 1e-6, 1.0))), None),
    }


def table_rows(run_folder):
    """The table's row of one run folder: each scorer's AUC and weight."""
    cells = {
        name: f"{value:.2f}" if weight is None else f"{value:.2f} (w {weight:g})"
        for name, (value, weight) in ceiling_rows(run_folder).items()
    }
    yield {"run": run_folder, **cells}


def main(argv=None):
    print_run_folder_table(__doc__.split("\n\n")[0], table_rows, argv)


if __name__ == "__main__":
    main()
