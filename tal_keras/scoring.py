"""Scores an ActivityNet submission file with the official metrics; numpy
only, so it runs where only the serving extra is installed.

    tal-score --ground_truth GT.json --predictions PRED.json \
        [--subset validation] [--task detection|proposals] [--metrics_out M.json]

The same numbers as `python evaluate.py --ground_truth ... --predictions ...`
(its scoring mode), without TensorFlow or absl. Exit status: 0 scored, 2 on
an unreadable or invalid file (the message names it).
"""

import argparse
import sys

TASKS = ("detection", "proposals")


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="tal-score",
        description="Official ActivityNet metrics of a submission file "
        "(detection mAP at tIoU 0.50:0.05:0.95, or proposal AR@AN and AUC).",
    )
    parser.add_argument(
        "--ground_truth", required=True, help="ActivityNet-format ground truth JSON."
    )
    parser.add_argument(
        "--predictions", required=True, help="ActivityNet submission JSON to score."
    )
    parser.add_argument(
        "--subset", default="validation", help="Subset of the ground truth to score on."
    )
    parser.add_argument(
        "--task", default="detection", choices=TASKS, help="What the predictions are."
    )
    parser.add_argument(
        "--metrics_out", default=None, help="Also write the metrics JSON here."
    )
    return parser.parse_args(argv)


def score_and_print(ground_truth, predictions, subset, task, metrics_out=None):
    """Scores the file, prints the table, writes `metrics_out` if given;
    returns the metrics. Raises ValueError or OSError on a bad file (or an
    unwritable `metrics_out`, before scoring)."""
    from tal_keras.atomic import check_writable, write_json_atomic
    from tal_keras.evaluation import score_file
    from tal_keras.report import format_metrics_table

    if metrics_out:
        check_writable(metrics_out, "metrics")
    metrics = score_file(ground_truth, predictions, subset=subset, task=task)
    print(format_metrics_table({"predictions": metrics}))
    if metrics_out:
        write_json_atomic(metrics_out, metrics, indent=2)
        print(f"metrics written to {metrics_out}")
    return metrics


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    import tal_keras

    tal_keras.configure_logging()  # the evaluator's warnings, one line each
    try:
        score_and_print(
            args.ground_truth,
            args.predictions,
            args.subset,
            args.task,
            args.metrics_out,
        )
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
