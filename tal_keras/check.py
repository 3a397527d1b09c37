"""tal-check: what train.py would do with a dataset, found without training.
numpy only, so it runs where only the serving extra is installed.

    tal-check --annotations GT.json --features DIR_OR_H5 [--category_file C.txt] \\
        [--fps 15 --stride 8 --window 32 --feature_dim 2304] \\
        [--num_clips 256 --scale_layers 64,32,32] \\
        [--train_subset training --eval_subset validation] [--blocklist a,b] \\
        [--out data_check.json]
    python -m tal_keras.check --flagfile=hacs.flags    # a train.py flagfile

The flags have train.py's names and defaults (tal_keras/flags.py); of a
flagfile only these are read, the networks' and training's are ignored, and
flags on the command line override it. The annotations and the features of
every video of the training and evaluation subsets are read once, through the
readers train.py uses (`run.open_annotations`, `FeatureStore.check` with the
duration, `check_feature_length`, the official ground truth), and the report
gives:

- per subset: the videos train.py would skip and why (the line it prints),
  those it would use although their feature length does not fit their
  duration, the segments kept and dropped, and the readers' warnings;
- the classes with no training instance (the classifier never learns them,
  and those in the evaluation subset still count in its mAP);
- the feature timing: steps x stride / fps against each video's duration,
  and when that does not fit, the stride and the fps that would;
- the lattice: the share of ground-truth segments whose best lattice proposal
  reaches tIoU 0.5, 0.7 and 0.9 at --num_clips and --scale_layers.

It prints a summary, writes the whole report as JSON (--out) and four
histograms as a PNG beside it (the PNG needs matplotlib, which the training
install has; without it the JSON is written and the summary says so). Exit
status: 0 when train.py would train on the data, 1 when it would stop (the
reasons are printed), 2 on a usage error. Not checked: the clips'
representability in float16, which train.py's --cache_dtype=float16 needs
(features beyond +-65504, rare, are skipped there).
"""

import argparse
import concurrent.futures
import contextlib
import dataclasses
import logging
import os
import sys

import numpy as np

from tal_keras import run
from tal_keras.config import DataConfig, ModelConfig, RunConfig
from tal_keras.data.features import (
    LENGTH_WARN_FRACTION,
    check_feature_length,
    open_feature_store,
)
from tal_keras.errors import DataError
from tal_keras.lattice import Lattice
from tal_keras.targets import segment_iou

logger = logging.getLogger("tal_keras")

IOU_THRESHOLDS = (0.5, 0.7, 0.9)
# Skipped videos and length warnings printed per subset; the JSON has all.
PRINTED_PER_SUBSET = 5
PRINTED_CLASSES = 10
# From this share of segments shorter than a clip on, the summary says so.
SHORT_SEGMENTS_HINT = 0.1
# Segments whose tIoU with every proposal is computed at once (memory).
SEGMENTS_PER_BLOCK = 256
# Earlier names of the timing flags that flagfiles may still use (flags.py).
FLAG_ALIASES = {"feature_stride": "stride", "feature_window": "window"}


@dataclasses.dataclass
class VideoCheck:
    """What train.py does with one video's features.

    Attributes:
        video_id, subset, duration: as annotated (seconds).
        steps, width: T and D of its feature array, None when its shape
            cannot be read.
        reason: the line train.py would skip it with, or None if it is used.
        length_warning: the line train.py would warn with when it uses the
            video although T does not fit the duration, or None.
    """

    video_id: str
    subset: str
    duration: float
    steps: int = None
    width: int = None
    reason: str = None
    length_warning: str = None


def check_video(store, video, feature_dim, timing, check_values=True):
    """`VideoCheck` of `video` (a `VideoAnnotation`): the checks of train.py's
    cache build (`FeatureStore.check` with the duration, then
    `FeatureStore.length_warning`), after reading the array's shape alone."""
    result = VideoCheck(video.video_id, video.subset, video.duration)
    try:
        result.steps, result.width = store.check(video.video_id, check_values=False)
        store.check(video.video_id, feature_dim, check_values, video.duration, timing)
    except DataError as error:
        result.reason = str(error)
        return result
    result.length_warning = store.length_warning(
        video.video_id, result.steps, video.duration, timing
    )
    return result


@contextlib.contextmanager
def collected_warnings():
    """Yields a list that collects the "tal_keras" logger's warnings (the
    readers' lines) while they are not printed."""
    lines = []

    class Collect(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    saved = (list(logger.handlers), logger.propagate, logger.level)
    logger.handlers[:] = [Collect(logging.WARNING)]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        logger.handlers[:], logger.propagate, logger.level = saved


def check_dataset(data, lattice, feature_dim, check_values=True, num_workers=4):
    """The report of the dataset `data` (a `DataConfig`) for a run with
    `lattice` and features of width `feature_dim`.

    Args:
        check_values: also read every value (NaN/inf, magnitude), as train.py
            does; False reads only the shapes (fast).
        num_workers: threads reading features.

    Returns:
        a JSON-ready dict (module docstring); "stops_training" lists why
        train.py would stop, first the reason it would print.
    """
    report = {
        "annotations": data.annotations,
        "features": data.features,
        "category_file": data.category_file,
        "timing": {"fps": data.fps, "stride": data.stride, "window": data.window},
        "feature_dim": feature_dim,
        "lattice": lattice.get_config() | {"num_proposals": lattice.num_proposals},
        "train_subset": data.train_subset,
        "eval_subset": data.eval_subset,
        "blocklist": list(data.blocklist),
        "values_checked": check_values,
        "subsets": {},
        "stops_training": [],
    }
    with collected_warnings() as warnings:
        try:
            checks, annotations = _check_subsets(
                report, data, feature_dim, check_values, num_workers
            )
        except (ValueError, OSError) as error:
            report["stops_training"].insert(0, str(error))
            checks, annotations = [], {}
    report["warnings"] = list(dict.fromkeys(warnings))
    if annotations:
        report["classes"] = _class_report(report, annotations, checks)
    report["feature_timing"] = _timing_report(checks, run.feature_timing(data))
    report["videos"] = [dataclasses.asdict(check) for check in checks]
    for name, subset_annotations in annotations.items():
        usable = [c.video_id for c in checks if c.subset == name and not c.reason]
        report["subsets"][name]["lattice_fit"] = _lattice_report(
            lattice, [subset_annotations[video_id] for video_id in usable]
        )
    report["would_train"] = not report["stops_training"]
    return report


def _check_subsets(report, data, feature_dim, check_values, num_workers):
    """Reads what train.py reads, in its order, filling report["subsets"];
    returns ([VideoCheck] of both subsets, {subset: Annotations}). Raises
    what stops train.py before any video is read."""
    from tqdm import tqdm

    from tal_keras.evaluation import ground_truth_of

    run_config = RunConfig(workdir="", data=data)
    class_names = run.class_names_of(data)
    report["class_names"] = list(class_names)
    store = open_feature_store(data.features)
    timing = run.feature_timing(data)
    checks, opened = [], {}
    for subset in dict.fromkeys((data.train_subset, data.eval_subset)):
        try:
            annotations = run.open_annotations(run_config, subset)
        except DataError as error:
            report["stops_training"].append(str(error))
            continue
        opened[subset] = annotations
        videos = list(annotations)
        with concurrent.futures.ThreadPoolExecutor(num_workers) as pool:
            subset_checks = list(
                tqdm(
                    pool.map(
                        lambda video: check_video(
                            store, video, feature_dim, timing, check_values
                        ),
                        videos,
                    ),
                    total=len(videos),
                    desc=subset,
                    unit="video",
                    disable=None,  # a bar on a terminal only
                )
            )
        checks += subset_checks
        skipped = [check for check in subset_checks if check.reason]
        usable = {check.video_id for check in subset_checks if not check.reason}
        report["subsets"][subset] = {
            "videos": len(videos),
            "usable": len(usable),
            "skipped": [
                {"video_id": check.video_id, "reason": check.reason}
                for check in skipped
            ],
            "length_warnings": [
                {"video_id": check.video_id, "message": check.length_warning}
                for check in subset_checks
                if check.length_warning
            ],
            "segments": sum(annotations[video_id].num_segments for video_id in usable),
            "segments_in_file": annotations.num_segments,
            "dropped_segments": annotations.dropped_segments,
            "blocked_videos": annotations.blocked_videos,
        }
        if not usable:
            first = skipped[0].reason if skipped else "no videos in the subset"
            report["stops_training"].append(
                f"{store.description}: every one of the {len(videos)} videos of "
                f"subset {subset!r} would be skipped; first reason: {first}"
            )
        if subset == data.train_subset and annotations.num_segments == 0:
            report["stops_training"].append(
                f"{data.annotations}: subset {subset!r} has {len(videos)} videos "
                "but no segment: nothing to train on."
            )
        if subset == data.eval_subset:
            try:
                ground_truth_of(annotations, data.blocklist)
            except DataError as error:
                report["stops_training"].append(str(error))
    return checks, opened


def _class_report(report, annotations, checks):
    """Instances per class in the usable videos of each subset, and the
    classes without a training instance."""
    class_names = report["class_names"]
    usable = {(check.subset, check.video_id) for check in checks if not check.reason}
    counts = {}
    for subset, subset_annotations in annotations.items():
        labels = [
            video.labels
            for video in subset_annotations
            if (subset, video.video_id) in usable
        ]
        per_class = np.bincount(
            np.concatenate([np.zeros(0, np.int64), *labels]),
            minlength=len(class_names),
        )
        counts[subset] = per_class
        report["subsets"][subset]["instances_per_class"] = dict(
            zip(class_names, per_class.tolist())
        )
    training = counts.get(report["train_subset"])
    without = []
    if training is not None:
        without = [
            {
                "class": name,
                "instances": {
                    subset: int(per_class[index])
                    for subset, per_class in counts.items()
                },
            }
            for index, name in enumerate(class_names)
            if training[index] == 0
        ]
    return {"count": len(class_names), "without_training_instance": without}


def _timing_report(checks, timing):
    """How steps x stride / fps compares with the durations, and the stride
    and fps that would fit best when the given ones do not."""
    timed = [check for check in checks if check.steps]
    widths = {}
    for check in timed:
        widths[str(check.width)] = widths.get(str(check.width), 0) + 1
    report = {"videos": len(timed), "widths": widths}
    if not timed:
        return report
    steps = np.array([check.steps for check in timed], np.float64)
    durations = np.array([check.duration for check in timed], np.float64)
    covered = steps * timing.step_seconds / durations
    frames_per_step = durations * timing.fps / steps
    median_ratio = float(np.median(covered))
    report |= {
        "covered_over_duration": {
            "median": median_ratio,
            "p10": float(np.percentile(covered, 10)),
            "p90": float(np.percentile(covered, 90)),
        },
        "median_frames_between_steps": float(np.median(frames_per_step)),
        "median_seconds_between_steps": float(np.median(durations / steps)),
        **_fit_counts(timed, timing),
    }
    report["fits"] = abs(median_ratio - 1) <= LENGTH_WARN_FRACTION
    if not report["fits"]:
        # Frames between steps over all videos: each video's step count is
        # rounded, and the totals average that out better than a median.
        frames = float(durations.sum() * timing.fps / steps.sum())
        fits = {
            stride: _fit_counts(timed, dataclasses.replace(timing, stride=stride))[
                "fit"
            ]
            for stride in {max(1, int(np.floor(frames))), max(1, int(np.ceil(frames)))}
        }
        stride = max(fits, key=lambda stride: (fits[stride], -abs(stride - frames)))
        fps = float(f"{steps.sum() * timing.stride / durations.sum():.3g}")
        report["suggestion"] = {
            "frames_between_steps": frames,
            "stride": stride,
            "stride_fits": fits[stride],
            "fps": fps,
            "fps_fits": _fit_counts(timed, dataclasses.replace(timing, fps=fps))["fit"],
        }
    return report


def _fit_counts(timed, timing):
    """{"fit", "off", "far"}: videos whose length fits their duration, is off
    but used with a warning, or is skipped (`check_feature_length`)."""
    counts = {"fit": 0, "off": 0, "far": 0}
    for check in timed:
        try:
            warning = check_feature_length("", check.steps, check.duration, timing)
        except DataError:
            counts["far"] += 1
            continue
        counts["off" if warning else "fit"] += 1
    return counts


def _lattice_report(lattice, videos):
    """The best lattice tIoU of each ground-truth segment of `videos`
    (`VideoAnnotation`s) and its length in clips."""
    # tIoU does not change when both segments are scaled: measured in clips,
    # one table of proposals serves every video.
    proposals = lattice.seconds(lattice.num_clips)
    lengths_of = [
        video.segments * (lattice.num_clips / video.duration) for video in videos
    ]
    segments = np.concatenate([np.zeros((0, 2)), *lengths_of])
    best = np.concatenate(
        [np.zeros(0)]
        + [
            segment_iou(proposals, segments[begin : begin + SEGMENTS_PER_BLOCK]).max(
                axis=0
            )
            for begin in range(0, len(segments), SEGMENTS_PER_BLOCK)
        ]
    )
    lengths = segments[:, 1] - segments[:, 0]
    report = {"segments": int(best.size)}
    if best.size:
        report |= {
            "reaching": {
                f"{threshold:g}": float(np.mean(best >= threshold))
                for threshold in IOU_THRESHOLDS
            },
            "shorter_than_a_clip": float(np.mean(lengths < 1)),
            "median_length_clips": float(np.median(lengths)),
        }
    report["best_tiou"] = np.round(best, 4).tolist()
    report["length_clips"] = np.round(lengths, 3).tolist()
    return report


def summary_lines(report):
    """The printed summary of a `check_dataset` report."""
    timing, lattice = report["timing"], report["lattice"]
    scales = ",".join(str(n) for n in lattice["scale_layers"])
    header = (
        f"tal-check: {report['annotations']}, features {report['features']} "
        f"({timing['fps']:g} fps, stride {timing['stride']}, window "
        f"{timing['window']}, width {report['feature_dim']}; N "
        f"{lattice['num_clips']}, scales {scales})"
    )
    lines = [header]
    for subset, counts in report["subsets"].items():
        lines.append(
            f"{subset}: {counts['videos']} videos, {counts['usable']} usable, "
            f"{len(counts['skipped'])} skipped, {len(counts['length_warnings'])} "
            "used with a feature length that does not fit the duration; "
            f"{counts['segments']} segments in the usable videos, "
            f"{counts['dropped_segments']} dropped as empty or reversed, "
            f"{counts['blocked_videos']} blocklisted videos"
        )
        lines += _first(
            [f"skip {item['video_id']}: {item['reason']}" for item in counts["skipped"]]
        )
        lines += _first(
            [f"warn {item['message']}" for item in counts["length_warnings"]]
        )
    lines += _class_lines(report)
    lines += _timing_lines(report["feature_timing"], timing, report["feature_dim"])
    for subset, counts in report["subsets"].items():
        fit = counts.get("lattice_fit")
        if fit and fit["segments"]:
            reaching = ", ".join(
                f"{threshold} for {share:.1%}"
                for threshold, share in fit["reaching"].items()
            )
            line = (
                f"lattice (N {lattice['num_clips']}, scales {scales}, "
                f"{lattice['num_proposals']} proposals): the best proposal of the "
                f"{fit['segments']} {subset} segments reaches tIoU {reaching}; "
                f"median length {fit['median_length_clips']:.1f} clips, "
                f"{fit['shorter_than_a_clip']:.1%} shorter than one clip"
            )
            if fit["shorter_than_a_clip"] >= SHORT_SEGMENTS_HINT:
                line += " (more --num_clips would resolve them)"
            lines.append(line)
    lines += [f"reader: {line}" for line in report["warnings"]]
    if report["would_train"]:
        lines.append(
            "train.py would train on this data"
            + (", but read the lines above." if _has_warnings(report) else ".")
        )
    else:
        lines += [f"train.py would stop: {line}" for line in report["stops_training"]]
    return lines


def _has_warnings(report):
    """Whether train.py would skip or warn about anything, or the timing
    does not fit."""
    return bool(
        report["warnings"]
        or report.get("classes", {}).get("without_training_instance")
        or not report["feature_timing"].get("fits", True)
        or any(
            counts["skipped"] or counts["length_warnings"]
            for counts in report["subsets"].values()
        )
    )


def _class_lines(report):
    classes = report.get("classes")
    if not classes:
        return []
    training = report["subsets"].get(report["train_subset"])
    line = f"classes: {classes['count']}"
    without = classes["without_training_instance"]
    if not training or not training["usable"]:
        return [f"{line}; no usable training video, so no training instance"]
    if not without:
        return [f"{line}, every one with training instances"]
    listed = "; ".join(
        f"{item['class']} ("
        + ", ".join(f"{n} in {subset}" for subset, n in item["instances"].items())
        + ")"
        for item in without[:PRINTED_CLASSES]
    )
    if len(without) > PRINTED_CLASSES:
        listed += f"; ... and {len(without) - PRINTED_CLASSES} more (all in the JSON)"
    evaluated = sum(
        1 for item in without if item["instances"].get(report["eval_subset"], 0)
    )
    line += (
        f", {len(without)} without a training instance: {listed}; the "
        f"classifier never learns them, and the {evaluated} of them in "
        f"{report['eval_subset']} still count in its mAP"
    )
    return [line]


def _first(lines):
    if len(lines) <= PRINTED_PER_SUBSET:
        return [f"  {line}" for line in lines]
    hidden = len(lines) - PRINTED_PER_SUBSET
    return [f"  {line}" for line in lines[:PRINTED_PER_SUBSET]] + [
        f"  ... and {hidden} more (all in the JSON)"
    ]


def _timing_lines(feature_timing, timing, feature_dim):
    lines = []
    widths = feature_timing["widths"]
    if widths and str(feature_dim) not in widths:
        found = ", ".join(f"{width} ({n} videos)" for width, n in widths.items())
        lines.append(
            f"feature width: --feature_dim={feature_dim} but the arrays are "
            f"{found} wide; pass --feature_dim={max(widths, key=widths.get)}"
        )
    if "covered_over_duration" not in feature_timing:
        return lines
    flags = f"--fps={timing['fps']:g} --stride={timing['stride']}"
    ratio = feature_timing["covered_over_duration"]
    counts = (
        f"{feature_timing['fit']} of {feature_timing['videos']} videos fit, "
        f"{feature_timing['off']} are more than {LENGTH_WARN_FRACTION:.0%} off "
        f"(used with a warning), {feature_timing['far']} more than 2 times off "
        "(skipped)"
    )
    if feature_timing["fits"]:
        lines.append(
            f"feature timing fits {flags}: steps x stride / fps cover "
            f"{ratio['median']:.2f} of the duration (median; 10% of videos below "
            f"{ratio['p10']:.2f}, 10% above {ratio['p90']:.2f}); {counts}"
        )
        return lines
    suggestion = feature_timing["suggestion"]
    videos = feature_timing["videos"]
    lines.append(
        f"feature timing does not fit {flags}: steps x stride / fps cover "
        f"{ratio['median']:.2f} of the duration (median); {counts}. At "
        f"{timing['fps']:g} fps the steps are "
        f"{suggestion['frames_between_steps']:.1f} frames apart (total duration x "
        f"fps / total steps; median per video "
        f"{feature_timing['median_frames_between_steps']:.1f}): pass "
        f"--stride={suggestion['stride']} "
        f"({suggestion['stride_fits']} of {videos} videos fit), or with stride "
        f"{timing['stride']} --fps={suggestion['fps']:g} ({suggestion['fps_fits']} "
        f"of {videos} fit)"
    )
    return lines


def write_report(report, path):
    """Writes the report as JSON at `path` and its histograms as a PNG beside
    it; returns the PNG's path, or None when matplotlib is missing."""
    from tal_keras.atomic import write_json_atomic

    write_json_atomic(path, report, indent=1)
    try:
        from tal_keras import plots
    except ImportError:
        return None
    videos = [video for video in report["videos"] if video["steps"]]
    step_seconds = report["timing"]["stride"] / report["timing"]["fps"]
    fit = report["subsets"].get(report["train_subset"], {}).get("lattice_fit", {})
    panels = [
        (
            "steps x stride / fps over the duration",
            [v["steps"] * step_seconds / v["duration"] for v in videos],
            "ratio per video",
            [1 - LENGTH_WARN_FRACTION, 1, 1 + LENGTH_WARN_FRACTION],
        ),
        (
            "frames between feature steps",
            [v["duration"] * report["timing"]["fps"] / v["steps"] for v in videos],
            "duration x fps / steps per video",
            [report["timing"]["stride"]],
        ),
        (
            f"{report['train_subset']} segment lengths",
            fit.get("length_clips", []),
            f"clips (N = {report['lattice']['num_clips']})",
            [1],
        ),
        (
            "best lattice proposal per segment",
            fit.get("best_tiou", []),
            "tIoU",
            list(IOU_THRESHOLDS),
        ),
    ]
    png = os.path.splitext(path)[0] + ".png"
    plots.histograms(panels, png, title=f"tal-check: {report['annotations']}")
    return png


def _number_list(number):
    def parse(text):
        try:
            return tuple(number(item) for item in text.split(",") if item.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list, got {text!r}"
            ) from None

    return parse


# (flag, type, help) of the DataConfig and ModelConfig fields tal-check reads;
# names, defaults and meanings as train.py's (tal_keras/flags.py).
DATA_FLAGS = (
    ("annotations", str, "ActivityNet-style annotation JSON."),
    ("features", str, "Folder of ID.npy feature files, or one HDF5 file."),
    (
        "category_file",
        str,
        "One label per line; empty: sorted label names of the annotations.",
    ),
    ("fps", float, "Frame rate the features were extracted at."),
    ("stride", int, "Frames between consecutive feature steps."),
    ("window", int, "Frames each feature step covers."),
    ("train_subset", str, "Subset the networks train on."),
    ("eval_subset", str, "Subset evaluated."),
    (
        "blocklist",
        _number_list(str),
        "Video ids left out everywhere (comma separated).",
    ),
    (
        "synthetic_videos",
        int,
        "If > 0 and the data is missing, first generate the synthetic dataset.",
    ),
)
MODEL_FLAGS = (
    ("feature_dim", int, "D, width of the input features."),
    ("num_clips", int, "N, clips per video."),
    (
        "scale_layers",
        _number_list(int),
        "Pooling layers per scale; N alone is dense 2D-TAN.",
    ),
)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="tal-check",
        description="What train.py would skip, warn about or stop on in a "
        "dataset, the feature timing and lattice that fit it; without training.",
    )
    parser.add_argument(
        "--flagfile",
        help="A train.py flagfile: its data and lattice flags are read, others "
        "ignored; flags given here override it.",
    )
    for config, rows in ((DataConfig, DATA_FLAGS), (ModelConfig, MODEL_FLAGS)):
        for name, kind, text in rows:
            parser.add_argument(
                f"--{name}", type=kind, default=getattr(config, name), help=text
            )
    parser.add_argument(
        "--out",
        default="data_check.json",
        help="The report's JSON; its histograms go to the same name with .png.",
    )
    parser.add_argument(
        "--shapes_only",
        action="store_true",
        help="Read only the arrays' shapes, not their values (fast; NaN/inf "
        "and huge values are then not found).",
    )
    parser.add_argument(
        "--num_workers", type=int, default=4, help="Threads reading features."
    )
    return parser


def parse_args(argv):
    """The flags of `argv`, those of its --flagfile first."""
    parser = build_parser()
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--flagfile")
    flagfile, rest = first.parse_known_args(argv)
    if flagfile.flagfile:
        known = set(vars(parser.parse_args([]))) - {"flagfile"}
        try:
            with open(flagfile.flagfile, encoding="utf-8") as stream:
                lines = [line.strip() for line in stream]
        except (OSError, UnicodeDecodeError) as error:
            parser.error(f"{flagfile.flagfile}: cannot read the flagfile: {error}")
        tokens = []
        for line in lines:
            name, equals, value = line.removeprefix("--").partition("=")
            name = FLAG_ALIASES.get(name, name)
            if line.startswith("--") and name in known:
                tokens.append(f"--{name}={value}" if equals else f"--{name}")
        rest = tokens + rest
    args = parser.parse_args(rest)
    if args.num_workers < 1:
        parser.error("--num_workers must be >= 1.")
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    import tal_keras
    from tal_keras.atomic import check_writable

    tal_keras.configure_logging()
    try:
        data = DataConfig(**{name: getattr(args, name) for name, _, _ in DATA_FLAGS})
        lattice = Lattice(args.num_clips, args.scale_layers)
        if args.feature_dim < 1:
            raise ValueError(f"--feature_dim must be >= 1, got {args.feature_dim}.")
        check_writable(args.out, "check report")
        run.ensure_data(data)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        report = check_dataset(
            data,
            lattice,
            args.feature_dim,
            check_values=not args.shapes_only,
            num_workers=args.num_workers,
        )
    except KeyboardInterrupt:
        print("interrupted: nothing written.", file=sys.stderr)
        return 130
    for line in summary_lines(report):
        print(line)
    try:
        png = write_report(report, args.out)
    except OSError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if png is None:
        print(f"written: {args.out} (the PNG of histograms needs matplotlib)")
    else:
        print(f"written: {args.out}, {png}")
    return 0 if report["would_train"] else 1


if __name__ == "__main__":
    sys.exit(main())
