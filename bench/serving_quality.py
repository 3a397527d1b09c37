"""Quality and speed of exported models side by side (e.g. float32 and int8)
on a run's evaluation subset: each file served as `python -m export.serve`
serves it, scored with the official ActivityNet protocol.

    python bench/serving_quality.py --workdir RUN [--models A.onnx,B.onnx]
        [--batch_size 32] [--markdown table.md]

--models defaults to RUN/s2dtan.onnx,RUN/s2dtan.int8.onnx. The videos,
features and ground truth are the run's (its config.json: annotations,
features, eval_subset); postprocessing is each file's own. Proposals are
scored by AR@100 and AUC, detections by mAP at tIoU 0.5 and the average mAP
over tIoU 0.5:0.05:0.95, in percent. Model and postprocessing seconds are
those `export.serve` reports; the models are served one after the other, so
on a shared machine their times are only as comparable as the load allowed.
numpy and onnxruntime only, as serving.
"""

import argparse
import json
import os
import sys

# Runnable from a checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tal_keras.atomic import write_text_atomic

HEADER = [
    "model",
    "precision",
    "videos",
    "AR@100",
    "AUC",
    "mAP@0.5",
    "average mAP",
    "model s",
    "post s",
]


def run_data(workdir):
    """(annotations path, features path, evaluation subset) of a run folder."""
    path = os.path.join(workdir, "config.json")
    try:
        with open(path) as stream:
            data = json.load(stream)["data"]
        return data["annotations"], data["features"], data["eval_subset"]
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(
            f"{path}: cannot read the run's data paths ({error})."
        ) from None


def served_metrics(model_path, annotations, features, subset, batch_size):
    """One table row: the file served on the subset's videos and scored."""
    from export.detector import Detector
    from export.serve import serve, videos_to_serve
    from tal_keras import evaluation, metrics
    from tal_keras.data.features import open_feature_store

    detector = Detector(model_path, providers=["CPUExecutionProvider"])
    videos = videos_to_serve(annotations, subset)
    result = serve(
        detector,
        open_feature_store(features),
        videos,
        batch_size=batch_size,
        progress=False,
    )
    ground_truth = metrics.load_ground_truth(annotations, subset=subset)
    proposals = evaluation.score_proposals(ground_truth, result.proposals)
    found = evaluation.score_detections(ground_truth, result.detections)
    return [
        os.path.basename(model_path),
        detector.spec.precision,
        str(len(result.detections)),
        f"{100 * float(proposals['AR@100']):.2f}",
        f"{100 * float(proposals['AUC']):.2f}",
        f"{100 * float(found['mAP']['0.50']):.2f}",
        f"{100 * float(found['average_mAP']):.2f}",
        f"{result.seconds['inference']:.2f}",
        f"{result.seconds['postprocessing']:.2f}",
    ]


def markdown(rows):
    lines = ["| " + " | ".join(HEADER) + " |", "|" + " --- |" * len(HEADER)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="The run folder.")
    parser.add_argument(
        "--models",
        default=None,
        help="Comma-separated ONNX files; default RUN/s2dtan.onnx,RUN/s2dtan.int8.onnx.",
    )
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--markdown", default=None, help="Also write the table here.")
    args = parser.parse_args(argv)
    models = (
        args.models.split(",")
        if args.models
        else [
            os.path.join(args.workdir, name)
            for name in ("s2dtan.onnx", "s2dtan.int8.onnx")
        ]
    )
    annotations, features, subset = run_data(args.workdir)
    rows = [
        served_metrics(path, annotations, features, subset, args.batch_size)
        for path in models
    ]
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    text = (
        f"{markdown(rows)}\n\n{args.workdir}, {subset} subset of {annotations}; "
        f"batch {args.batch_size}; load average {load} ({os.cpu_count()} CPUs)."
    )
    print(text)
    if args.markdown:
        write_text_atomic(args.markdown, text + "\n")


if __name__ == "__main__":
    main()
