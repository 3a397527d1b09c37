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


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    import tal_keras
    from tal_keras.atomic import check_writable, write_json_atomic
    from tal_keras.evaluation import format_metrics_table, score_file

    tal_keras.configure_logging()  # the evaluator's warnings, one line each
    try:
        if args.metrics_out:
            check_writable(args.metrics_out, "metrics")  # before scoring
        metrics = score_file(
            args.ground_truth, args.predictions, subset=args.subset, task=args.task
        )
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_metrics_table({"predictions": metrics}))
    if args.metrics_out:
        write_json_atomic(args.metrics_out, metrics, indent=2)
        print(f"metrics written to {args.metrics_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
