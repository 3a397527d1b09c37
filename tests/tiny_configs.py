"""The small configurations and files the tests share: a CPU-sized model of
three scales, a train.py flagfile, a scored submission."""

import json

from tal_keras.config import DataConfig, ModelConfig
from tal_keras.recipes import TUNED

# N 16 clips, scales 4,2,2 (P = 72 proposals), D 6, H 4, K 3, L 2, C 5.
TINY_MODEL_FIELDS = {
    "num_clips": 16,
    "scale_layers": (4, 2, 2),
    "feature_dim": 6,
    "hidden_size": 4,
    "kernel_size": 3,
    "num_conv_layers": 2,
    "num_classes": 5,
}

# Variants some tests use: one conv layer, H 8, 3 classes; and the same at N 8.
ONE_LAYER = {"hidden_size": 8, "num_conv_layers": 1, "num_classes": 3}
EIGHT_CLIPS = {**ONE_LAYER, "num_clips": 8, "scale_layers": (2, 1, 1), "hidden_size": 4}

# The networks' departures in the tuned recipe (tal_keras/recipes.py), its
# evidence MLP at a tiny width.
EVERY_DEPARTURE = {
    **{item.field: item.value for item in TUNED if item.section == "model"},
    "class_mean_evidence": 4,
}


def tiny_model(**changes):
    """The tiny `ModelConfig`, with `changes` to some of its fields."""
    return ModelConfig(**{**TINY_MODEL_FIELDS, **changes})


def tiny_dataset(folder, num_videos):
    """A `synthetic.generate` dataset in `folder`: `num_videos` videos of 3
    classes and 8-d features."""
    from tal_keras.data import synthetic

    return synthetic.generate(
        folder, num_videos=num_videos, num_classes=3, feature_dim=8, seed=2
    )


def data_config_of(dataset):
    """`DataConfig` of a `synthetic.generate` dataset."""
    return DataConfig(
        annotations=dataset.annotations_path,
        features=dataset.features_path,
        category_file=dataset.classes_path,
    )


def tiny_run_flagfile(tmp_path, name, *extra_flags):
    """Writes tmp_path/NAME.flags for a train.py run in tmp_path/NAME on a
    40-video synthetic dataset generated in tmp_path/data (N 16, scales
    4,2,2, H 8, K 3, batch 4), with `extra_flags` appended."""
    data = tmp_path / "data"
    flagfile = tmp_path / f"{name}.flags"
    lines = [
        f"--workdir={tmp_path / name}",
        f"--annotations={data / 'annotations.json'}",
        f"--features={data / 'features'}",
        f"--category_file={data / 'classes.txt'}",
        "--synthetic_videos=40",
        "--feature_dim=256",
        "--num_clips=16",
        "--scale_layers=4,2,2",
        "--hidden_size=8",
        "--kernel_size=3",
        "--batch_size=4",
        *extra_flags,
    ]
    flagfile.write_text("\n".join(lines))
    return flagfile


# mAP at tIoU 0.5 of `write_tiny_submission`'s predictions, by hand. Jump (2
# segments): a false positive on "zz" (not in the ground truth) first, then a
# hit on "a" at tIoU 0.9, then a second one on the same segment (a false
# positive): AP 0.5 * 0.5. Run (2 segments): "b" holds no Run and "a"'s
# [21, 30] has tIoU 0.45 with [20, 40]: AP 0.
TINY_SUBMISSION_MAP_AT_50 = (0.5 * 0.5 + 0.0) / 2


def write_tiny_submission(folder):
    """Writes FOLDER/gt.json (ActivityNet ground truth: validation videos a, b,
    c and a training video t) and FOLDER/pred.json (a detection submission);
    returns (ground truth path, predictions path, the submission's results)."""
    database = {
        "a": {"subset": "validation", "duration": 50.0, "annotations": [
            {"label": "Jump", "segment": [5.0, 15.0]}, {"label": "Run", "segment": [20.0, 40.0]}]},
        "b": {"subset": "validation", "duration": 30.0, "annotations": [
            {"label": "Jump", "segment": [0.0, 10.0]}]},
        "c": {"subset": "validation", "duration": 30.0, "annotations": [
            {"label": "Run", "segment": [3.0, 9.0]}]},
        "t": {"subset": "training", "duration": 30.0, "annotations": [
            {"label": "Run", "segment": [3.0, 9.0]}]},
    }  # fmt: skip
    results = {
        # Two predictions on one segment, segments out of order.
        "a": [
            {"label": "Jump", "score": 0.9, "segment": [6.0, 15.0]},
            {"label": "Jump", "score": 0.8, "segment": [5.0, 14.0]},
            {"label": "Run", "score": 0.3, "segment": [21.0, 30.0]},
        ],
        # "c" has no predictions; "zz" is not in the ground truth.
        "b": [{"label": "Run", "score": 0.7, "segment": [0.0, 10.0]}],
        "zz": [{"label": "Jump", "score": 0.95, "segment": [0.0, 10.0]}],
    }
    ground_truth = folder / "gt.json"
    ground_truth.write_text(json.dumps({"database": database}))
    predictions = folder / "pred.json"
    predictions.write_text(json.dumps({"version": "x", "results": results}))
    return ground_truth, predictions, results
