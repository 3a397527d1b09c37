"""Times target preparation (max IoU and class of every proposal) for a
HACS-sized training set: 37,613 synthetic videos of 20 to 240 s with 1 to 5
segments each, on the S-2D-TAN lattice Lattice(256, (64, 32, 32)).

    python bench/bench_targets.py [--num_videos 37613] [--seed 0]
"""

import argparse
import os
import sys
import time

import numpy as np

# Runnable from a checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tal_keras.lattice import Lattice
from tal_keras.targets import proposal_targets, scaled_overlap


def synthetic_annotations(num_videos, num_classes, seed):
    """[(duration, segments [K, 2], labels [K])] with random segments."""
    rng = np.random.default_rng(seed)
    videos = []
    for _ in range(num_videos):
        duration = rng.uniform(20.0, 240.0)
        num_segments = rng.integers(1, 6)
        bounds = np.sort(rng.uniform(0.0, duration, size=(num_segments, 2)), axis=1)
        labels = rng.integers(0, num_classes, size=num_segments)
        videos.append((duration, bounds, labels))
    return videos


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num_videos", type=int, default=37613)
    parser.add_argument("--num_clips", type=int, default=256)
    parser.add_argument("--scale_layers", default="64,32,32")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    lattice = Lattice(
        args.num_clips, tuple(int(n) for n in args.scale_layers.split(","))
    )
    videos = synthetic_annotations(args.num_videos, 200, args.seed)
    positives, overlap_sum = 0, 0.0
    target_seconds, overlap_seconds = 0.0, 0.0
    for duration, segments, labels in videos:
        begin = time.perf_counter()
        max_iou, classes = proposal_targets(lattice, duration, segments, labels)
        middle = time.perf_counter()
        overlap = scaled_overlap(max_iou)
        target_seconds += middle - begin
        overlap_seconds += time.perf_counter() - middle
        positives += int(np.count_nonzero(classes >= 0))
        overlap_sum += float(overlap.sum())

    print(f"{lattice!r}, {len(videos)} videos, 1-5 segments each")
    print(f"{'stage':<28}{'total s':>10}{'per video ms':>15}")
    for stage, seconds in (
        ("proposal_targets", target_seconds),
        ("scaled_overlap", overlap_seconds),
        ("both", target_seconds + overlap_seconds),
    ):
        print(f"{stage:<28}{seconds:>10.2f}{1000 * seconds / len(videos):>15.3f}")
    print(
        f"classifier cells (IoU > 0.5): {positives / len(videos):.1f} per video; "
        f"sum of overlap targets: {overlap_sum / len(videos):.1f} per video"
    )


if __name__ == "__main__":
    main()
