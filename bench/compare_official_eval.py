"""Compares tal_keras.metrics with the official ActivityNet evaluation code.

A dev tool, not a test: it needs pandas and a checkout of the official
Evaluation/ folder (github.com/activitynet/ActivityNet). The official code is
Python 2; it is loaded with minimal source fixes (print statements,
iteritems, xrange, np.float/np.int, np.trapz) and two shims (no network for
`urllib2`, a sequential `joblib.Parallel`), then both implementations score
the same random JSON files.

    pip install pandas
    python bench/compare_official_eval.py /path/to/ActivityNet/Evaluation \
        --fixtures 300

Exits with status 1 if any number differs by more than --tolerance.
"""

import argparse
import contextlib
import io
import json
import os
import re
import sys
import tempfile
import time
import types
import warnings

import numpy as np

# Runnable from a checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tal_keras import metrics


def load_official(evaluation_dir):
    """Imports utils, eval_detection and eval_proposal from the official folder."""
    urllib2 = types.ModuleType("urllib2")

    def no_network(*args, **kwargs):
        raise RuntimeError("no network: use check_status=False")

    urllib2.Request = urllib2.urlopen = no_network
    joblib = types.ModuleType("joblib")

    def delayed(function):
        return lambda *args, **kwargs: (function, args, kwargs)

    class Parallel:
        def __init__(self, n_jobs=None, **kwargs):
            pass

        def __call__(self, calls):
            return [function(*args, **kwargs) for function, args, kwargs in calls]

    joblib.Parallel, joblib.delayed = Parallel, delayed
    sys.modules["urllib2"], sys.modules["joblib"] = urllib2, joblib
    modules = {}
    for name in ("utils", "eval_detection", "eval_proposal"):
        with open(os.path.join(evaluation_dir, f"{name}.py")) as stream:
            source = stream.read()
        source = re.sub(
            r"^(\s*)print (.+)$", r"\1print(\2)", source, flags=re.MULTILINE
        )
        source = source.replace(".iteritems()", ".items()").replace("xrange(", "range(")
        source = source.replace("np.float)", "np.float64)").replace("np.int)", "int)")
        source = source.replace("np.trapz(", "np.trapezoid(")
        module = types.ModuleType(name)
        module.__file__ = os.path.join(evaluation_dir, f"{name}.py")
        # Runs the official source, loaded from the folder the user named.
        exec(compile(source, module.__file__, "exec"), module.__dict__)  # noqa: S102
        sys.modules[name] = modules[name] = module
    return modules


def random_fixture(rng, index):
    """Ground truth and predictions with the edge cases the official code meets.

    Segments on a coarse grid (tied tIoU, duplicates, zero-length segments,
    start > end), tied scores, integer scores, videos of the validation subset
    with no predictions or no segments, predictions for videos outside the
    ground truth or of the training subset, classes with no prediction, and
    videos with more than 16 or 100 predictions (other sort kernels).
    """
    grid = rng.choice([2, 5, 20, 1000])
    num_videos = int(rng.integers(1, 30))
    num_labels = int(rng.integers(1, 7))
    labels = [f"class {n}" for n in range(num_labels)]
    database = {}
    for video in range(num_videos):
        subset = "validation" if rng.random() < 0.8 else "training"
        annotations = []
        for _ in range(int(rng.choice([0, 1, 1, 2, 3, 5, 20]))):
            start, end = np.sort(rng.integers(0, grid + 1, size=2)) * 100.0 / grid
            if rng.random() < 0.05:
                start, end = end, start
            annotations.append(
                {"label": str(rng.choice(labels)), "segment": [start, end]}
            )
        if annotations and rng.random() < 0.2:
            annotations.append(dict(annotations[0]))
        database[f"video_{index}_{video}"] = {
            "subset": subset,
            "duration": 100.0,
            "annotations": annotations,
        }
    known = sorted(
        {
            annotation["label"]
            for video in database.values()
            if video["subset"] == "validation"
            for annotation in video["annotations"]
        }
    )
    if not known:
        first = next(iter(database.values()))
        first["subset"] = "validation"
        first["annotations"] = [{"label": labels[0], "segment": [10.0, 20.0]}]
        known = [labels[0]]
    # Leave one class without any prediction now and then.
    predicted = known[:-1] if len(known) > 1 and rng.random() < 0.3 else known
    integer_scores = rng.random() < 0.15
    video_ids = list(database) + [f"other_{index}_{n}" for n in range(3)]
    rng.shuffle(video_ids)
    results = {}
    for video_id in video_ids:
        if rng.random() < 0.15:
            continue
        count = int(rng.choice([0, 1, 3, 10, 17, 40, 150]))
        gt = database.get(video_id, {}).get("annotations", [])
        entries = []
        for _ in range(count):
            if gt and rng.random() < 0.4:
                segment = list(gt[int(rng.integers(len(gt)))]["segment"])
            else:
                segment = list(
                    np.sort(rng.integers(0, grid + 1, size=2)) * 100.0 / grid
                )
                if rng.random() < 0.05:
                    segment = segment[::-1]
            if integer_scores:
                score = int(rng.integers(0, 4))
            elif rng.random() < 0.5:
                score = float(rng.integers(0, 5)) / 4
            else:
                score = float(rng.random())
            entries.append(
                {
                    "label": str(rng.choice(predicted)),
                    "score": score,
                    "segment": segment,
                }
            )
        if entries and rng.random() < 0.2:
            entries.extend(dict(entry) for entry in entries[: int(rng.integers(1, 4))])
        results[video_id] = entries
    if not any(results.values()):
        results[video_ids[0]] = [
            {"label": known[0], "score": 0.5, "segment": [0, 50.0]}
        ]
    ground_truth = {"version": "fixture", "taxonomy": [], "database": database}
    submission = {"version": "fixture", "external_data": {}, "results": results}
    return ground_truth, submission


def official_detection(official, gt_path, prediction_path, thresholds):
    evaluator = official["eval_detection"].ANETdetection(
        gt_path, prediction_path, tiou_thresholds=thresholds,
        subset="validation", verbose=False, check_status=False,
    )  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()), np.errstate(all="ignore"):
        evaluator.evaluate()
    return np.asarray(evaluator.mAP), float(evaluator.average_mAP)


def official_proposals(official, gt_path, proposal_path, thresholds, max_avg):
    evaluator = official["eval_proposal"].ANETproposal(
        gt_path, proposal_path, tiou_thresholds=thresholds,
        max_avg_nr_proposals=max_avg, subset="validation", verbose=False,
        check_status=False,
    )  # fmt: skip
    with np.errstate(all="ignore"):
        evaluator.evaluate()
    average_recall = np.asarray(evaluator.avg_recall)
    per_video = np.asarray(evaluator.proposals_per_video)
    auc = float(np.trapezoid(average_recall, per_video) / per_video[-1])
    return average_recall, per_video, np.asarray(evaluator.recall), auc


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("evaluation_dir", help="the official Evaluation/ folder")
    parser.add_argument("--fixtures", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tolerance", type=float, default=1e-6)
    args = parser.parse_args()
    official = load_official(args.evaluation_dir)
    # The official code divides 0 by 0 for zero-length segments (NaN tIoU).
    warnings.simplefilter("ignore", RuntimeWarning)
    # Fixtures where no predicted video is a ground-truth video are wanted.
    warnings.simplefilter("ignore", UserWarning)
    rng = np.random.default_rng(args.seed)
    thresholds = np.linspace(0.5, 0.95, 10)
    worst = {"detection": 0.0, "proposals": 0.0}
    exact = {"detection": 0, "proposals": 0}
    timings = {"official": 0.0, "tal_keras": 0.0}
    failures = skipped = 0
    with tempfile.TemporaryDirectory() as directory:
        gt_path = os.path.join(directory, "gt.json")
        prediction_path = os.path.join(directory, "predictions.json")
        for index in range(args.fixtures):
            ground_truth, submission = random_fixture(rng, index)
            with open(gt_path, "w") as stream:
                json.dump(ground_truth, stream)
            with open(prediction_path, "w") as stream:
                json.dump(submission, stream)
            # Threshold 0.0 now and then: exercises zero-length matches.
            fixture_thresholds = thresholds if index % 10 else np.array([0.0, 0.5, 1.0])
            max_avg = [100, 100, 10, 1, None][index % 5]

            began = time.perf_counter()
            mean_ap, average_map = official_detection(
                official, gt_path, prediction_path, fixture_thresholds
            )
            try:
                recall_curve, per_video, recall, auc = official_proposals(
                    official, gt_path, prediction_path, fixture_thresholds, max_avg
                )
            except ZeroDivisionError:
                # No proposal kept on any ground-truth video: the official
                # code divides by zero; tal_keras returns a zero curve.
                recall_curve = None
                skipped += 1
            timings["official"] += time.perf_counter() - began

            began = time.perf_counter()
            ours = metrics.evaluate_detection(
                gt_path, prediction_path, tiou_thresholds=fixture_thresholds
            )
            curve = metrics.proposal_curve(
                gt_path, prediction_path, max_avg_nr_proposals=max_avg,
                tiou_thresholds=fixture_thresholds,
            )  # fmt: skip
            timings["tal_keras"] += time.perf_counter() - began

            ours_map = np.array(list(ours["mAP"].values()))
            detection_error = max(
                np.abs(ours_map - mean_ap).max(), abs(ours["average_mAP"] - average_map)
            )
            proposal_error = 0.0
            if recall_curve is not None:
                proposal_error = max(
                    np.abs(curve.average_recall - recall_curve).max(),
                    np.abs(curve.proposals_per_video - per_video).max(),
                    np.abs(curve.recall - recall).max(),
                    abs(curve.auc - auc),
                )
            exact["detection"] += detection_error == 0
            exact["proposals"] += proposal_error == 0
            worst["detection"] = max(worst["detection"], detection_error)
            worst["proposals"] = max(worst["proposals"], proposal_error)
            if detection_error > args.tolerance or proposal_error > args.tolerance:
                failures += 1
                print(
                    f"fixture {index}: detection error {detection_error:.3g}, "
                    f"proposal error {proposal_error:.3g}"
                )
    print(
        f"{args.fixtures} fixtures (seed {args.seed}): max |difference| detection "
        f"{worst['detection']:.3g} ({exact['detection']} bit-identical), proposals "
        f"{worst['proposals']:.3g} ({exact['proposals']} bit-identical); "
        f"{failures} above {args.tolerance:g}; {skipped} proposal fixtures where "
        f"the official code fails (no kept proposal). Time: official "
        f"{timings['official']:.1f} s, tal_keras {timings['tal_keras']:.1f} s."
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
