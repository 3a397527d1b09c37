"""Evaluates a trained run, or scores any ActivityNet-format file.

Run mode (after train.py):
    python evaluate.py --flagfile=demo.flags
writes WORKDIR/proposals.json, detections.json, metrics.json, ar_an.png, and
prints the metrics next to a content-blind baseline's.

Scoring mode:
    python evaluate.py --ground_truth GT.json --predictions PRED.json \
        --subset validation --task detection|proposals --metrics_out M.json

The flags shared with train.py are defined here, and only in the entry points.
"""

import json
import os
import sys

from absl import app, flags

import tal_keras
from tal_keras.config import (
    DataConfig,
    EvalConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
)

# Data (DESIGN.md section 1). Defaults: the HACS layout OpenTAD/TCANet distribute.
flags.DEFINE_string(
    "workdir", "runs/hacs", "Run folder: config, checkpoints, logs, results."
)
flags.DEFINE_string(
    "annotations", DataConfig.annotations, "ActivityNet-style annotation JSON."
)
flags.DEFINE_string(
    "features", DataConfig.features, "Folder of ID.npy feature files, or one HDF5 file."
)
flags.DEFINE_string(
    "category_file",
    "",
    "One label per line; empty: sorted label names of the annotations.",
)
flags.DEFINE_float("fps", DataConfig.fps, "Frame rate the features were extracted at.")
flags.DEFINE_integer(
    "feature_stride", DataConfig.stride, "Frames between consecutive feature steps."
)
flags.DEFINE_integer(
    "feature_window", DataConfig.window, "Frames each feature step covers."
)
flags.DEFINE_string(
    "train_subset", DataConfig.train_subset, "Subset the networks train on."
)
flags.DEFINE_string(
    "eval_subset",
    DataConfig.eval_subset,
    "Subset evaluated (best epoch and evaluate.py).",
)
flags.DEFINE_list("blocklist", [], "Video ids left out everywhere (comma separated).")
flags.DEFINE_integer(
    "synthetic_videos",
    0,
    "If > 0 and the data is missing, generate a synthetic dataset of this many videos there.",
)
# Model (DESIGN.md sections 2 to 5). Defaults: the report's S-2D-TAN.
flags.DEFINE_integer("num_clips", ModelConfig.num_clips, "N, clips per video.")
flags.DEFINE_list(
    "scale_layers",
    [str(n) for n in ModelConfig.scale_layers],
    "Pooling layers per scale; N alone is dense 2D-TAN.",
)
flags.DEFINE_integer(
    "feature_dim", ModelConfig.feature_dim, "D, width of the input features."
)
flags.DEFINE_integer(
    "hidden_size", ModelConfig.hidden_size, "H, channels of both networks."
)
flags.DEFINE_integer(
    "kernel_size", ModelConfig.kernel_size, "K of the shared map convs (odd)."
)
flags.DEFINE_integer(
    "num_conv_layers", ModelConfig.num_conv_layers, "L, shared map conv layers."
)
flags.DEFINE_integer(
    "num_classes", 0, "C, action classes; 0: as many as the annotations' labels."
)
flags.DEFINE_enum(
    "map",
    ModelConfig.map_mode,
    ["s2dtan", "2dtan"],
    "Three compact sub-maps, or one N x N map.",
)
flags.DEFINE_enum(
    "proposal_features",
    ModelConfig.proposal_features,
    ["pool", "conv"],
    "Stacked max-pool or learned conv1d.",
)
flags.DEFINE_enum(
    "conv_implementation",
    ModelConfig.conv_implementation,
    ["band", "whole"],
    "Shared map convs on the valid band only, or on whole maps (reference).",
)
# Evaluation (DESIGN.md sections 7 and 8).
flags.DEFINE_float(
    "nms_threshold",
    EvalConfig.nms_threshold,
    "tIoU of NMS (proposals and per-class detections).",
)
flags.DEFINE_integer(
    "proposals_per_video", EvalConfig.proposals_per_video, "Proposals kept per video."
)
flags.DEFINE_integer(
    "detections_per_video",
    EvalConfig.detections_per_video,
    "Detections kept per video.",
)
flags.DEFINE_integer(
    "top_pairs",
    EvalConfig.top_pairs,
    "Best (proposal, class) pairs kept before per-class NMS.",
)
flags.DEFINE_bool(
    "soft_nms", EvalConfig.soft_nms, "Gaussian soft-NMS instead of NMS for detections."
)
flags.DEFINE_integer(
    "eval_batch_size", EvalConfig.batch_size, "Videos per inference batch."
)
flags.DEFINE_string(
    "video_labels",
    "",
    "Optional external video-level classifier JSON {video_id: [[label, score], ...]} fused into detections.",
)
flags.DEFINE_string(
    "show",
    "",
    "Also draw this video's ground truth, detections and P_over map to WORKDIR/show_<id>.png.",
)
# Training (read by train.py; defined here too so that one flagfile serves both).
flags.DEFINE_list(
    "networks", ["proposal", "classifier"], "Networks to train, in order."
)
flags.DEFINE_integer("epochs", TrainConfig.epochs, "Epochs per network.")
flags.DEFINE_integer(
    "batch_size", TrainConfig.batch_size, "Videos per training step (report: 32)."
)
flags.DEFINE_float(
    "learning_rate", TrainConfig.learning_rate, "Adam learning rate (report: 1e-3)."
)
flags.DEFINE_float(
    "overlap_t_min", TrainConfig.overlap_t_min, "IoU mapped to overlap target 0."
)
flags.DEFINE_float(
    "overlap_t_max", TrainConfig.overlap_t_max, "IoU mapped to overlap target 1."
)
flags.DEFINE_bool(
    "mixed_precision", TrainConfig.mixed_precision, "Train in mixed_float16."
)
flags.DEFINE_integer("seed", TrainConfig.seed, "Seed of shuffling and initialisation.")
flags.DEFINE_enum(
    "cache_dtype",
    TrainConfig.cache_dtype,
    ["float32", "float16"],
    "Dtype of the cached clips.",
)
flags.DEFINE_bool(
    "resume", False, "Continue from the last checkpoint, optimizer state included."
)
flags.DEFINE_bool(
    "evaluate_at_end",
    True,
    "Evaluate the best epochs on --eval_subset when training ends.",
)
# Scoring mode.
flags.DEFINE_string(
    "ground_truth", "", "Scoring mode: ActivityNet-format ground truth JSON."
)
flags.DEFINE_string(
    "predictions", "", "Scoring mode: ActivityNet submission JSON to score."
)
flags.DEFINE_string(
    "subset", "validation", "Scoring mode: subset of the ground truth to score on."
)
flags.DEFINE_enum(
    "task",
    "detection",
    ["detection", "proposals"],
    "Scoring mode: what the predictions are.",
)
flags.DEFINE_string("metrics_out", "", "Scoring mode: where to write the metrics JSON.")

FLAGS = flags.FLAGS


def run_config_from_flags(train_config=None):
    """The frozen, validated config of this run; raises ValueError on a bad flag."""
    scale_layers = tuple(_int_list(FLAGS.scale_layers, "scale_layers"))
    data = DataConfig(
        annotations=FLAGS.annotations,
        features=FLAGS.features,
        category_file=FLAGS.category_file,
        fps=FLAGS.fps,
        stride=FLAGS.feature_stride,
        window=FLAGS.feature_window,
        train_subset=FLAGS.train_subset,
        eval_subset=FLAGS.eval_subset,
        blocklist=tuple(FLAGS.blocklist),
        synthetic_videos=FLAGS.synthetic_videos,
    )
    num_classes = FLAGS.num_classes
    if num_classes < 0:
        raise ValueError(f"--num_classes must be >= 0, got {num_classes}.")
    model = ModelConfig(
        num_clips=FLAGS.num_clips,
        scale_layers=scale_layers,
        feature_dim=FLAGS.feature_dim,
        hidden_size=FLAGS.hidden_size,
        kernel_size=FLAGS.kernel_size,
        num_conv_layers=FLAGS.num_conv_layers,
        num_classes=max(num_classes, 1),  # resolved from the annotations when 0
        map_mode=FLAGS.map,
        proposal_features=FLAGS.proposal_features,
        conv_implementation=FLAGS.conv_implementation,
    )
    evaluation = EvalConfig(
        nms_threshold=FLAGS.nms_threshold,
        proposals_per_video=FLAGS.proposals_per_video,
        detections_per_video=FLAGS.detections_per_video,
        top_pairs=FLAGS.top_pairs,
        soft_nms=FLAGS.soft_nms,
        batch_size=FLAGS.eval_batch_size,
    )
    return RunConfig(
        workdir=FLAGS.workdir,
        data=data,
        model=model,
        train=train_config or TrainConfig(),
        eval=evaluation,
    ), num_classes == 0


def _int_list(values, name):
    try:
        return [int(value) for value in values]
    except ValueError:
        raise ValueError(
            f"--{name} must be a comma-separated list of integers, got {values}."
        ) from None


def score_file_mode():
    from tal_keras import evaluation

    metrics = evaluation.score_file(
        FLAGS.ground_truth, FLAGS.predictions, subset=FLAGS.subset, task=FLAGS.task
    )
    print(evaluation.format_metrics_table({"predictions": metrics}))
    if FLAGS.metrics_out:
        from tal_keras.atomic import write_json_atomic

        write_json_atomic(FLAGS.metrics_out, metrics, indent=2)
        print(f"metrics written to {FLAGS.metrics_out}")


def main(argv):
    del argv
    tal_keras.configure_logging()
    if FLAGS.predictions or FLAGS.ground_truth:
        if not (FLAGS.predictions and FLAGS.ground_truth):
            raise SystemExit(
                "error: scoring mode needs both --ground_truth and --predictions."
            )
        try:
            score_file_mode()
        except (ValueError, OSError) as error:
            raise SystemExit(f"error: {error}") from None
        return
    try:
        run_config, _ = run_config_from_flags()
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    from tal_keras import evaluation

    saved = os.path.join(run_config.workdir, "config.json")
    if not os.path.exists(saved):
        raise SystemExit(
            f"error: {saved} does not exist: train first (python train.py --flagfile=...)."
        )
    with open(saved) as stream:
        trained = RunConfig.from_dict(json.load(stream))
    # The networks' shapes are the trained ones; evaluation settings come from the flags.
    run_config = RunConfig(
        workdir=run_config.workdir,
        data=run_config.data,
        model=trained.model,
        train=trained.train,
        eval=run_config.eval,
    )
    try:
        evaluation.evaluate_run(
            run_config, video_labels=FLAGS.video_labels, show=FLAGS.show
        )
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    sys.exit(app.run(main))
