"""Times the ActivityNet evaluation (tal_keras.metrics) on a synthetic
validation set the size of ActivityNet's or HACS's: 5,000 videos, 200
classes, 1 to 5 segments per video, 100 predictions per video (labels drawn
mostly from the video's own classes, as after video-level fusion).

    python bench/bench_metrics.py [--num_videos 5000] [--per_video 100]
"""

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

# Runnable from a checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tal_keras import metrics


def synthetic_files(num_videos, per_video, num_classes, seed):
    """(ground truth dict, submission dict)."""
    rng = np.random.default_rng(seed)
    labels = [f"class {n}" for n in range(num_classes)]
    database, results = {}, {}
    for video in range(num_videos):
        video_id = f"video{video:05d}"
        duration = float(rng.uniform(20.0, 240.0))
        num_segments = int(rng.integers(1, 6))
        bounds = np.sort(rng.uniform(0.0, duration, size=(num_segments, 2)), axis=1)
        classes = rng.integers(0, num_classes, size=2)
        segment_classes = rng.choice(classes, size=num_segments)
        database[video_id] = {
            "subset": "validation",
            "duration": duration,
            "annotations": [
                {"label": labels[c], "segment": bound.tolist()}
                for c, bound in zip(segment_classes, bounds)
            ],
        }
        centres = rng.uniform(0.0, duration, size=per_video)
        widths = rng.uniform(0.02, 0.6, size=per_video) * duration
        predicted = np.where(
            rng.random(per_video) < 0.9,
            rng.choice(classes, size=per_video),
            rng.integers(0, num_classes, size=per_video),
        )
        results[video_id] = [
            {
                "label": labels[c],
                "score": float(score),
                "segment": [
                    float(max(0.0, m - w / 2)),
                    float(min(duration, m + w / 2)),
                ],
            }
            for c, score, m, w in zip(predicted, rng.random(per_video), centres, widths)
        ]
    ground_truth = {"version": "synthetic", "taxonomy": [], "database": database}
    return ground_truth, {
        "version": "synthetic",
        "results": results,
        "external_data": {},
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_videos", type=int, default=5000)
    parser.add_argument("--per_video", type=int, default=100)
    parser.add_argument("--num_classes", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    ground_truth, submission = synthetic_files(
        args.num_videos, args.per_video, args.num_classes, args.seed
    )
    num_predictions = args.num_videos * args.per_video
    print(
        f"{args.num_videos} videos, {num_predictions} predictions, "
        f"{args.num_classes} classes"
    )
    with tempfile.TemporaryDirectory() as directory:
        gt_path = os.path.join(directory, "gt.json")
        prediction_path = os.path.join(directory, "predictions.json")
        with open(gt_path, "w") as stream:
            json.dump(ground_truth, stream)
        with open(prediction_path, "w") as stream:
            json.dump(submission, stream)

        began = time.perf_counter()
        gt = metrics.load_ground_truth(gt_path)
        labelled = metrics.load_predictions(prediction_path, gt)
        unlabelled = metrics.load_predictions(prediction_path)
        loading = time.perf_counter() - began

        began = time.perf_counter()
        detection = metrics.evaluate_detection(gt, labelled)
        detection_time = time.perf_counter() - began

        began = time.perf_counter()
        proposals = metrics.evaluate_proposals(gt, unlabelled)
        proposal_time = time.perf_counter() - began

        began = time.perf_counter()
        metrics.evaluate_detection(gt_path, prediction_path)
        metrics.evaluate_proposals(gt_path, prediction_path)
        end_to_end = time.perf_counter() - began
    print(f"reading the JSON files (gt + predictions twice): {loading:.2f} s")
    print(
        f"detection mAP: {detection_time:.2f} s "
        f"(average mAP {detection['average_mAP']:.4f})"
    )
    print(
        f"proposal AR-AN: {proposal_time:.2f} s "
        f"(AR@100 {proposals['AR@100']:.4f}, AUC {proposals['AUC']:.4f})"
    )
    print(f"both from the file paths, reading included: {end_to_end:.2f} s")


if __name__ == "__main__":
    main()
