"""The flags of train.py and evaluate.py, defined once, the one function
that turns them into a `RunConfig`, and how both exit on a user's error.

Each config field has a flag of the same name (`config.RunConfig` and its
sections); `eval_batch_size` is `EvalConfig.batch_size`, as `batch_size` is
the training one. Defaults come from the config classes. A new setting is a
field in `tal_keras/config.py` and a `DEFINE_*` here; `run_config_from_flags`
and the test that every field has its flag need no edit.

Only the entry points import this module: the library reads configs, never
flags.
"""

import contextlib
import copy
import dataclasses
import sys

from absl import flags

from tal_keras.config import (
    CONV_IMPLEMENTATIONS,
    EPOCH_SELECTIONS,
    LR_SCHEDULES,
    MIXED_PRECISION_DTYPES,
    NETWORKS,
    PROPOSAL_FEATURES,
    SECTIONS,
    DataConfig,
    EvalConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
)
from tal_keras.errors import stop_signals_as_interrupt
from tal_keras.lattice import MAP_MODES
from tal_keras.recipes import RECIPES, recipe_values

# Run folder.
flags.DEFINE_string(
    "workdir", "runs/hacs", "Run folder: config, checkpoints, logs, results."
)
flags.DEFINE_enum(
    "recipe",
    "paper",
    sorted(RECIPES),
    "Where every setting starts: paper (the report) or tuned (its measured "
    "departures, tal_keras/recipes.py); a setting's own flag overrides it.",
)
# Data (docs/design.md section 1). Defaults: the HACS layout OpenTAD/TCANet distribute.
flags.DEFINE_string(
    "annotations", DataConfig.annotations, "ActivityNet-style annotation JSON."
)
flags.DEFINE_string(
    "features", DataConfig.features, "Folder of ID.npy feature files, or one HDF5 file."
)
flags.DEFINE_string(
    "category_file",
    DataConfig.category_file,
    "One label per line; empty: sorted label names of the annotations.",
)
flags.DEFINE_float("fps", DataConfig.fps, "Frame rate the features were extracted at.")
flags.DEFINE_integer(
    "stride", DataConfig.stride, "Frames between consecutive feature steps."
)
flags.DEFINE_integer("window", DataConfig.window, "Frames each feature step covers.")
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
    DataConfig.synthetic_videos,
    "If > 0 and the data is missing, generate a synthetic dataset of this many videos there.",
)
# Model (docs/design.md sections 2 to 5). Defaults: the report's S-2D-TAN.
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
    "map_mode",
    ModelConfig.map_mode,
    MAP_MODES,
    "Three compact sub-maps, or one N x N map.",
)
flags.DEFINE_enum(
    "proposal_features",
    ModelConfig.proposal_features,
    PROPOSAL_FEATURES,
    "Stacked max-pool or learned conv1d.",
)
flags.DEFINE_enum(
    "conv_implementation",
    ModelConfig.conv_implementation,
    CONV_IMPLEMENTATIONS,
    "Shared map convs on the valid band only, each layer by taps or, on CPUs "
    "where it multiplies at most half as much, through 2-D Fourier transforms "
    "(band); the band in one of those forms (taps, frequency); or on whole "
    "maps (the reference).",
)
flags.DEFINE_enum(
    "clip_normalization",
    ModelConfig.clip_normalization,
    ["none", "video"],
    "Standardise each feature channel over the video's clips before the clip "
    "encoder (a departure from the report; none: the report).",
)
flags.DEFINE_integer(
    "clip_context",
    ModelConfig.clip_context,
    "Odd kernel of a temporal conv added in the clip encoder before pooling "
    "(a departure from the report; 0: none, the report).",
)
flags.DEFINE_bool(
    "overlap_cell_bias",
    ModelConfig.overlap_cell_bias,
    "A learned bias per proposal on the overlap logit, started at the training "
    "videos' length prior (a departure from the report).",
)
flags.DEFINE_bool(
    "boundary_features",
    ModelConfig.boundary_features,
    "Add projections of each proposal's start and end clip to its pooled "
    "feature in the proposal network (a departure from the report).",
)
flags.DEFINE_integer(
    "class_mean_evidence",
    ModelConfig.class_mean_evidence,
    "H > 0: add each proposal's class-mean evidence (a weighted sum and an "
    "MLP of H units of its smooth best start, end and body matches with the "
    "training classes' means) to its overlap logit (a departure; 0: off).",
)
flags.DEFINE_bool(
    "class_mean_logits",
    ModelConfig.class_mean_logits,
    "Add per-class logits by the class-mean start, end and body matches to "
    "the classifier's (a departure from the report).",
)
flags.DEFINE_float(
    "class_mean_flank",
    ModelConfig.class_mean_flank,
    "f: the class-mean body match of a proposal of L clips is against ceil(f "
    "x L) clips on each side; 0: against the rest of the video.",
)
# Training.
flags.DEFINE_list("networks", list(NETWORKS), "Networks to train, in order.")
flags.DEFINE_integer("epochs", TrainConfig.epochs, "Epochs per network.")
flags.DEFINE_integer(
    "classifier_epochs",
    TrainConfig.classifier_epochs,
    "Epochs of the classifier, when not 0 (0: --epochs).",
)
flags.DEFINE_integer(
    "batch_size", TrainConfig.batch_size, "Videos per training step (report: 32)."
)
flags.DEFINE_float(
    "learning_rate", TrainConfig.learning_rate, "Adam learning rate (report: 1e-3)."
)
flags.DEFINE_enum(
    "lr_schedule",
    TrainConfig.lr_schedule,
    list(LR_SCHEDULES),
    "Learning rate per epoch: constant (the report) or cosine, "
    "learning_rate * (1 + cos(pi * epoch / epochs)) / 2 (a departure).",
)
flags.DEFINE_float(
    "overlap_t_min", TrainConfig.overlap_t_min, "IoU mapped to overlap target 0."
)
flags.DEFINE_float(
    "overlap_t_max", TrainConfig.overlap_t_max, "IoU mapped to overlap target 1."
)
flags.DEFINE_float(
    "overlap_positive_weight",
    TrainConfig.overlap_positive_weight,
    "W: each proposal's overlap loss weighted by 1 + (W - 1) * target (a "
    "departure from the report; 1: none, the report).",
)
flags.DEFINE_bool(
    "mixed_precision",
    TrainConfig.mixed_precision,
    "Train in mixed precision (float32 weights, --mixed_precision_dtype compute).",
)
flags.DEFINE_enum(
    "mixed_precision_dtype",
    TrainConfig.mixed_precision_dtype,
    list(MIXED_PRECISION_DTYPES),
    "Compute dtype of --mixed_precision: float16 (with loss scaling) or bfloat16 "
    "(GPUs from Ampere on).",
)
flags.DEFINE_integer("seed", TrainConfig.seed, "Seed of shuffling and initialisation.")
flags.DEFINE_enum(
    "select_epoch_on",
    TrainConfig.select_epoch_on,
    list(EPOCH_SELECTIONS),
    "Where each network's kept epoch is chosen: held_out, on "
    "--selection_fraction of the training videos (which then do not train), "
    "or eval_subset (then the reported numbers are selected on themselves).",
)
flags.DEFINE_float(
    "selection_fraction",
    TrainConfig.selection_fraction,
    "Share of the training videos held out to choose the kept epoch on.",
)
flags.DEFINE_enum(
    "cache_dtype",
    TrainConfig.cache_dtype,
    ["float32", "float16"],
    "Dtype of the cached clips.",
)
# Evaluation (docs/design.md sections 7 and 8).
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
flags.DEFINE_float(
    "soft_nms_sigma",
    EvalConfig.soft_nms_sigma,
    "Width of the soft-NMS penalty exp(-tIoU^2 / sigma).",
)
flags.DEFINE_float(
    "proposal_soft_nms_sigma",
    EvalConfig.proposal_soft_nms_sigma,
    "0: proposals through NMS at --nms_threshold (the report); > 0: Gaussian "
    "soft-NMS of this width instead, every overlap decayed (a departure).",
)
flags.DEFINE_integer(
    "eval_batch_size", EvalConfig.batch_size, "Videos per inference batch."
)
# Earlier names, kept so that older flagfiles still work.
flags.DEFINE_alias("map", "map_mode")
flags.DEFINE_alias("feature_stride", "stride")
flags.DEFINE_alias("feature_window", "window")

# What one invocation does (no config field).
flags.DEFINE_bool(
    "resume",
    False,
    "train.py: continue from the last checkpoint, optimizer state included.",
)
flags.DEFINE_bool(
    "evaluate_at_end",
    True,
    "train.py: evaluate the best epochs on --eval_subset when training ends.",
)
flags.DEFINE_string(
    "video_labels",
    "",
    "evaluate.py: optional external video-level classifier JSON {video_id: [[label, score], ...]} fused into detections.",
)
flags.DEFINE_string(
    "show",
    "",
    "evaluate.py: also draw this video's ground truth, detections and P_over map to WORKDIR/show_<id>.png.",
)
# evaluate.py's scoring mode.
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

# Flags whose name is not their field's: two sections have a batch_size.
_FLAG_NAMES = {("eval", "batch_size"): "eval_batch_size"}


@contextlib.contextmanager
def exit_on_user_error(interrupted):
    """The entry points' exits: one line `error: ...` (status 1) for what a
    user can cause (bad data, flags, paths, a full disk, a run folder in use:
    ValueError or OSError); on Ctrl-C or SIGTERM, `interrupted: INTERRUPTED`
    (status 130)."""
    try:
        with stop_signals_as_interrupt():
            yield
    except (ValueError, OSError) as error:
        raise SystemExit(f"error: {error}") from None
    except KeyboardInterrupt:
        print(f"interrupted: {interrupted}", file=sys.stderr)
        raise SystemExit(130) from None


def flag_name(section, field):
    """The flag that sets `field` of config section `section` ("data", ...)."""
    return _FLAG_NAMES.get((section, field), field)


def run_config_from_flags(flag_values=FLAGS):
    """(RunConfig, classes_from_data) of the parsed flags: each field the
    value of its flag where the flag is given, else its --recipe's value,
    else the flag's default.

    classes_from_data is True when --num_classes=0 asks for the number of
    classes of the annotations (model.num_classes is 1 until
    `run.prepare_run` resolves it).

    Raises:
        ValueError: a flag value the configs reject, naming it.
    """
    recipe = flag_values["recipe"].value
    starts = recipe_values(recipe)
    sections = {}
    for section, config_class in SECTIONS.items():
        values = {}
        for field in dataclasses.fields(config_class):
            flag = flag_values[flag_name(section, field.name)]
            values[field.name] = (
                flag.value
                if flag.present or (section, field.name) not in starts
                else starts[section, field.name]
            )
        if section == "model":
            values["scale_layers"] = _int_list(values["scale_layers"], "scale_layers")
            if values["num_classes"] < 0:
                raise ValueError(
                    f"--num_classes must be >= 0, got {values['num_classes']}."
                )
            values["num_classes"] = max(values["num_classes"], 1)
        sections[section] = config_class(**values)
    classes_from_data = flag_values["num_classes"].value == 0
    return RunConfig(
        workdir=flag_values["workdir"].value, recipe=recipe, **sections
    ), classes_from_data


def flagfile_run_config(path, *arguments):
    """(RunConfig, classes_from_data) that `train.py --flagfile=PATH
    ARGUMENTS` runs with (`run_config_from_flags`), parsed on a copy of the
    flags, so the caller's own flags are untouched (the bench scripts read
    demo.flags this way).

    Raises:
        ValueError: a flag the flagfile sets that the configs reject.
        absl.flags.Error: an unknown flag or an unreadable file.
    """
    flag_values = copy.deepcopy(FLAGS)
    flag_values.unparse_flags()
    flag_values(["train.py", f"--flagfile={path}", *arguments])
    return run_config_from_flags(flag_values)


def _int_list(values, name):
    try:
        return tuple(int(value) for value in values)
    except ValueError:
        raise ValueError(
            f"--{name} must be a comma-separated list of integers, got {values}."
        ) from None
