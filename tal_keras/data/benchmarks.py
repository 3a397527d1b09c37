"""Independent benchmark datasets: features from generators that share no
assumption with the demo's (`tal_keras.data.synthetic`), on real public
annotation timing. numpy only.

Each dataset takes its videos, durations, subsets, segments and labels from
a real ActivityNet-style annotation file (by default the trimmed
ActivityNet-1.3 timing shipped in `tal_keras/data/timing/`, see
docs/benchmarks.md for its source and licence) and makes per-video features
at the HACS SlowFast timing (15 fps, stride 8, window 32), in one of three
families in which a different cue carries the action:

- "boundary": only the action's boundaries are visible. Each instance shows
  a class-specific onset transient over its first steps and an offset
  transient over its last; its body is the background. Finding an action
  means pairing an onset with an offset.
- "lookalike": only the body carries the action. Each instance shows its
  class's body pattern from start to end, with no onset or offset; the gaps
  hold look-alike stretches of the same amplitude and length range whose
  pattern shares 60% of its direction (cosine 0.6) with the class body. The
  edges of a look-alike are as sharp as an action's, so boundaries alone do
  not separate them: the content does.
- "scene": onset, body and offset patterns (weaker than in the other
  families) on top of a strong per-video scene: a constant offset several
  times the action's amplitude, a per-video gain, a slow drift (time scale
  20 s), and scene cuts (a new offset every 40 s on average) that are
  boundaries of no action. Raw feature values say mostly which video it is.

Each family is made at two noise levels (i.i.d. Gaussian, std 1 "low" or 2
"high"; patterns have unit root mean square per channel and amplitudes 0.5
to 1.0).

On disk (DIR = --out), the real formats:

- DIR/annotations.json: ActivityNet style, the timing file's ids, subsets,
  durations, segments (clamped to the duration; segments left empty are not
  written, and counted in benchmark.json) and labels;
- DIR/classes.txt: the labels, sorted, one per line;
- DIR/features/v_ID.npy (--format npy, the ActivityNet naming) or
  DIR/features.h5 (--format hdf5, one dataset per video named ID): float32 [T, D];
- DIR/benchmark.json: the generator's parameters and counts (written last).

Deterministic: the same arguments and timing file give the same bytes.

Usage:
    python -m tal_keras.data.benchmarks generate --family boundary --noise low --out DIR
    python -m tal_keras.data.benchmarks generate --all --out data/bench   # the six datasets
    python -m tal_keras.data.benchmarks trim --source activity_net.v1-3.min.json --out T.json
"""

import argparse
import hashlib
import json
import os
import sys

import numpy as np

from tal_keras.atomic import atomic_folder
from tal_keras.clips import HACS_TIMING
from tal_keras.data.features import feature_writer, written_features_path

FAMILIES = ("boundary", "lookalike", "scene")
NOISE_LEVELS = {"low": 1.0, "high": 2.0}
FORMATS = ("npy", "hdf5")
SUBSETS = ("training", "validation")
PARAMETERS_FILE = "benchmark.json"
GENERATOR_VERSION = 1  # bump when the same arguments would give different data
DEFAULT_TIMING = os.path.join(
    os.path.dirname(os.path.abspath(__file__)),
    "timing",
    "activitynet13_20classes.json",
)

AMPLITUDE_RANGE = (0.5, 1.0)  # per-instance scale of a unit-RMS pattern
PHASE_FRACTION = 0.1  # onset / offset share of an instance ...
PHASE_SECONDS = (1.5, 4.0)  # ... clipped to this range, and to half the instance
LOOKALIKE_COSINE = 0.6  # of a look-alike pattern with its class body
LOOKALIKE_PROBABILITY = 0.7  # per gap of at least MIN_GAP_SECONDS
MIN_GAP_SECONDS = 4.0
SCENE_ACTION_SCALE = 0.6  # the scene family's actions are weaker ...
SCENE_OFFSET_STD = 2.0  # ... against a per-video offset (per channel) ...
SCENE_GAIN_RANGE = (0.5, 2.0)  # ... a per-video gain (log-uniform) ...
SCENE_DRIFT_STD = 1.0  # ... a slow drift (per channel) ...
SCENE_DRIFT_SECONDS = 20.0
SCENE_CUT_SECONDS = 40.0  # ... and scene cuts, on average one per this many seconds
SCENE_CUT_STD = 1.0  # per channel, the change of the offset at a cut


def read_timing(path):
    """{video_id: {"subset", "duration", "annotations"}} of an ActivityNet-style
    JSON file (only the training and validation videos)."""
    try:
        with open(path) as stream:
            database = json.load(stream)["database"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"{path}: not an ActivityNet-style annotation file: {error}"
        ) from None
    return {
        video_id: entry
        for video_id, entry in database.items()
        if entry.get("subset") in SUBSETS
    }


def choose_classes(database, num_classes):
    """`num_classes` labels spread over the sorted label list (every k-th)."""
    labels = sorted(
        {
            annotation["label"]
            for entry in database.values()
            for annotation in entry.get("annotations", [])
        }
    )
    if num_classes > len(labels):
        raise ValueError(f"asked for {num_classes} classes, the file has {len(labels)}")
    step = len(labels) // num_classes
    return labels[::step][:num_classes]


def trim(source, out, num_classes=20):
    """Writes the timing (subset, duration, segments, labels) of the training
    and validation videos of `num_classes` classes of `source` to `out`;
    segments rounded to 0.01 s. Returns the number of videos written."""
    database = read_timing(source)
    classes = set(choose_classes(database, num_classes))
    kept = {}
    for video_id, entry in sorted(database.items()):
        annotations = entry.get("annotations") or []
        if not annotations or any(a["label"] not in classes for a in annotations):
            continue
        kept[video_id.removeprefix("v_")] = {
            "subset": entry["subset"],
            "duration": round(float(entry["duration"]), 3),
            "annotations": [
                {
                    "label": a["label"],
                    "segment": [round(float(value), 2) for value in a["segment"]],
                }
                for a in annotations
            ],
        }
    payload = {
        "version": f"timing of {len(kept)} videos of {num_classes} classes of "
        f"{os.path.basename(source)}",
        "database": kept,
    }
    with open(out, "w") as stream:
        json.dump(payload, stream, separators=(",", ":"))
    return len(kept)


def generate(
    out_dir,
    family,
    noise="low",
    timing_path=DEFAULT_TIMING,
    max_videos=0,
    feature_dim=64,
    format="npy",
    seed=0,
    overwrite=False,
):
    """Writes one benchmark dataset to `out_dir` (see the module docstring).

    Args:
        out_dir: the folder to create.
        family: one of FAMILIES.
        noise: "low", "high" (NOISE_LEVELS) or a noise std (a number).
        timing_path: ActivityNet-style JSON giving the videos' timing.
        max_videos: if > 0, a seeded sample of this many videos, training and
            validation in the file's proportion.
        feature_dim: D.
        format: "npy" or "hdf5".
        seed: random seed.
        overwrite: replace an existing, non-empty `out_dir`.

    Returns:
        the parameters written to benchmark.json.
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    noise_std = float(NOISE_LEVELS.get(noise, noise))
    if not noise_std >= 0:
        raise ValueError(f"noise must be >= 0, got {noise!r}")
    if feature_dim < 2:
        raise ValueError(f"feature_dim must be >= 2, got {feature_dim}")
    out_dir = os.path.abspath(os.fspath(out_dir))
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not overwrite:
        raise FileExistsError(f"{out_dir} exists and is not empty (--overwrite)")
    database = read_timing(timing_path)
    videos = _select_videos(database, max_videos, seed)
    with open(timing_path, "rb") as stream:
        timing_sha = hashlib.sha256(stream.read()).hexdigest()
    parameters = {
        "generator_version": GENERATOR_VERSION,
        "family": family,
        "noise": noise if isinstance(noise, str) else noise_std,
        "noise_std": noise_std,
        "timing_file": os.path.basename(timing_path),
        "timing_sha256": timing_sha,
        "max_videos": int(max_videos),
        "feature_dim": int(feature_dim),
        "format": format,
        "seed": int(seed),
        "fps": HACS_TIMING.fps,
        "feature_stride": HACS_TIMING.stride,
        "feature_window": HACS_TIMING.window,
    }
    with atomic_folder(out_dir, overwrite) as building:
        counts = _write(building, parameters, database, videos)
        parameters.update(counts)
        with open(os.path.join(building, PARAMETERS_FILE), "w") as stream:
            json.dump(parameters, stream, indent=1)
    return parameters


def _select_videos(database, max_videos, seed):
    """Sorted ids of the videos to make: all, or a seeded stratified sample."""
    ids = sorted(
        video_id
        for video_id, entry in database.items()
        if entry.get("annotations") and float(entry["duration"]) > 0
    )
    if not max_videos or max_videos >= len(ids):
        return ids
    rng = np.random.default_rng([seed, 100])
    chosen = []
    for subset in SUBSETS:
        members = [v for v in ids if database[v]["subset"] == subset]
        count = round(max_videos * len(members) / len(ids))
        chosen += list(
            rng.choice(members, size=min(count, len(members)), replace=False)
        )
    return sorted(chosen)


def _patterns(rng, count, feature_dim):
    """float64 [count, D] random directions of root mean square 1 per channel."""
    patterns = rng.standard_normal((count, feature_dim))
    return (
        patterns
        * np.sqrt(feature_dim)
        / np.linalg.norm(patterns, axis=1, keepdims=True)
    )


def class_patterns(seed, num_classes, feature_dim):
    """The generator's patterns: {"onset", "body", "offset", "lookalike"}:
    float64 [num_classes, feature_dim] each, class k's in row k (classes in
    sorted label order), as a dataset of this seed draws them."""
    pattern_rng = np.random.default_rng([seed, 0])
    onsets, bodies, offsets, others = (
        _patterns(pattern_rng, num_classes, feature_dim) for _ in range(4)
    )
    # A look-alike shares LOOKALIKE_COSINE of its direction with the class body.
    others -= np.sum(others * bodies, axis=1, keepdims=True) / feature_dim * bodies
    others *= np.sqrt(feature_dim) / np.linalg.norm(others, axis=1, keepdims=True)
    lookalikes = LOOKALIKE_COSINE * bodies + np.sqrt(1 - LOOKALIKE_COSINE**2) * others
    return {
        "onset": onsets,
        "body": bodies,
        "offset": offsets,
        "lookalike": lookalikes,
    }


def _write(root, parameters, database, videos):
    family, seed = parameters["family"], parameters["seed"]
    feature_dim = parameters["feature_dim"]
    names = sorted(
        {a["label"] for video_id in videos for a in database[video_id]["annotations"]}
    )
    class_index = {name: index for index, name in enumerate(names)}
    patterns = class_patterns(seed, len(names), feature_dim)

    database_out, dropped, instances = {}, 0, 0
    with feature_writer(root, parameters["format"]) as write_features:
        for index, video_id in enumerate(videos):
            entry = database[video_id]
            duration = float(entry["duration"])
            segments, labels = [], []
            for annotation in entry["annotations"]:
                start, end = (
                    min(max(float(v), 0.0), duration) for v in annotation["segment"]
                )
                if end > start:
                    segments.append([start, end])
                    labels.append(annotation["label"])
                else:
                    dropped += 1
            instances += len(segments)
            rng = np.random.default_rng([seed, 1, index])
            features = _video_features(
                rng,
                family,
                duration,
                segments,
                [class_index[label] for label in labels],
                patterns,
                parameters["noise_std"],
            )
            # The module docstring's names: v_ID.npy, or dataset ID in HDF5.
            npy = parameters["format"] == "npy"
            write_features(f"v_{video_id}" if npy else video_id, features)
            database_out[video_id] = {
                "subset": entry["subset"],
                "duration": duration,
                "annotations": [
                    {"label": label, "segment": segment}
                    for label, segment in zip(labels, segments)
                ],
            }
    with open(os.path.join(root, "annotations.json"), "w") as stream:
        json.dump(
            {"version": f"tal_keras benchmark {family}", "database": database_out},
            stream,
        )
    with open(os.path.join(root, "classes.txt"), "w") as stream:
        stream.write("".join(name + "\n" for name in names))
    subsets = [database[v]["subset"] for v in videos]
    return {
        "num_videos": len(videos),
        "num_training": subsets.count("training"),
        "num_validation": subsets.count("validation"),
        "num_classes": len(names),
        "num_instances": instances,
        "dropped_segments": dropped,
    }


def _video_features(rng, family, duration, segments, labels, patterns, noise_std):
    """float32 [T, D] features of one video at the HACS timing."""
    feature_dim = patterns["body"].shape[1]
    num_steps = HACS_TIMING.num_steps(duration)
    centers = HACS_TIMING.centers(num_steps)
    signal = np.zeros((num_steps, feature_dim))
    scale = SCENE_ACTION_SCALE if family == "scene" else 1.0
    for (start, end), label in zip(segments, labels):
        amplitude = scale * rng.uniform(*AMPLITUDE_RANGE)
        inside = (centers >= start) & (centers < end)
        if family == "lookalike":
            signal[inside] += amplitude * patterns["body"][label]
            continue
        phase = min(
            max(PHASE_FRACTION * (end - start), PHASE_SECONDS[0]),
            PHASE_SECONDS[1],
            (end - start) / 2,
        )
        # At least one step each, so that short instances keep both boundaries.
        onset = inside & (centers < start + max(phase, HACS_TIMING.step_seconds))
        offset = (
            inside & (centers >= end - max(phase, HACS_TIMING.step_seconds)) & ~onset
        )
        signal[onset] += amplitude * patterns["onset"][label]
        signal[offset] += amplitude * patterns["offset"][label]
        if family == "scene":
            signal[inside & ~onset & ~offset] += amplitude * patterns["body"][label]
    if family == "lookalike":
        _add_lookalikes(rng, signal, centers, duration, segments, labels, patterns)
    if family == "scene":
        signal = _scene_gain(rng) * (
            signal + _scene(rng, centers, duration, feature_dim)
        )
    else:
        signal += 0.3 * rng.standard_normal(feature_dim)  # a small per-video offset
    noise = noise_std * rng.standard_normal(signal.shape)
    return (signal + noise).astype(np.float32)


def _add_lookalikes(rng, signal, centers, duration, segments, labels, patterns):
    order = np.argsort([start for start, _ in segments])
    edges = [0.0]
    for index in order:
        edges += list(segments[index])
    edges.append(duration)
    longest = max((end - start for start, end in segments), default=0.0)
    for gap_start, gap_end in zip(edges[0::2], edges[1::2]):
        gap = gap_end - gap_start
        if gap < MIN_GAP_SECONDS or rng.random() >= LOOKALIKE_PROBABILITY:
            continue
        length = min(rng.uniform(0.5, 1.0) * (longest or gap), 0.7 * gap)
        start = gap_start + rng.uniform(0.1 * gap, 0.9 * gap - length)
        if not labels:
            return
        label = labels[int(rng.integers(len(labels)))]
        inside = (centers >= start) & (centers < start + length)
        signal[inside] += rng.uniform(*AMPLITUDE_RANGE) * patterns["lookalike"][label]


def _scene_gain(rng):
    low, high = np.log(SCENE_GAIN_RANGE[0]), np.log(SCENE_GAIN_RANGE[1])
    return float(np.exp(rng.uniform(low, high)))


def _scene(rng, centers, duration, feature_dim):
    """[T, D]: per-video offset, scene cuts and a slow drift."""
    offset = SCENE_OFFSET_STD * rng.standard_normal(feature_dim)
    scene = np.broadcast_to(offset, (centers.size, feature_dim)).copy()
    num_cuts = int(rng.poisson(duration / SCENE_CUT_SECONDS))
    for cut in np.sort(rng.uniform(0.0, duration, size=num_cuts)):
        scene[centers >= cut] += SCENE_CUT_STD * rng.standard_normal(feature_dim)
    sigma = SCENE_DRIFT_SECONDS / HACS_TIMING.step_seconds
    half = int(np.ceil(3 * sigma))
    kernel = np.exp(-0.5 * (np.arange(-half, half + 1) / sigma) ** 2)
    kernel /= np.sqrt(np.sum(kernel**2))
    white = rng.standard_normal((centers.size + 2 * half, feature_dim))
    drift = np.stack(
        [np.convolve(white[:, k], kernel, mode="valid") for k in range(feature_dim)],
        axis=1,
    )
    return scene + SCENE_DRIFT_STD * drift


def dataset_paths(root, format="npy"):
    """(annotations, features, classes) paths of a generated dataset."""
    return (
        os.path.join(root, "annotations.json"),
        written_features_path(root, format),
        os.path.join(root, "classes.txt"),
    )


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m tal_keras.data.benchmarks",
        description="Independent benchmark datasets on real annotation timing "
        "(docs/benchmarks.md).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("generate", help="write one dataset, or all six")
    make.add_argument(
        "--out", required=True, help="folder to create (with --all: parent)"
    )
    make.add_argument("--family", choices=FAMILIES)
    make.add_argument("--noise", default="low", help="low, high or a std")
    make.add_argument(
        "--all", action="store_true", help="every family at both noise levels"
    )
    make.add_argument("--timing", default=DEFAULT_TIMING, help="ActivityNet-style JSON")
    make.add_argument("--max_videos", type=int, default=0)
    make.add_argument("--feature_dim", type=int, default=64)
    make.add_argument("--format", choices=FORMATS, default="npy")
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("--overwrite", action="store_true")
    cut = commands.add_parser("trim", help="write a trimmed timing file")
    cut.add_argument("--source", required=True, help="ActivityNet-style JSON")
    cut.add_argument("--out", required=True)
    cut.add_argument("--num_classes", type=int, default=20)
    args = parser.parse_args(argv)
    try:
        if args.command == "trim":
            count = trim(args.source, args.out, args.num_classes)
            print(f"{args.out}: timing of {count} videos")
            return 0
        if args.all:
            jobs = [
                (family, noise, os.path.join(args.out, f"{family}-{noise}"))
                for family in FAMILIES
                for noise in NOISE_LEVELS
            ]
        elif args.family:
            jobs = [(args.family, args.noise, args.out)]
        else:
            parser.error("generate needs --family or --all")
        for family, noise, out in jobs:
            parameters = generate(
                out,
                family,
                noise=noise,
                timing_path=args.timing,
                max_videos=args.max_videos,
                feature_dim=args.feature_dim,
                format=args.format,
                seed=args.seed,
                overwrite=args.overwrite,
            )
            print(
                f"{out}: {family}, noise {parameters['noise_std']}, "
                f"{parameters['num_training']} training / {parameters['num_validation']} "
                f"validation videos, {parameters['num_instances']} instances, "
                f"{parameters['num_classes']} classes"
            )
    except (FileExistsError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
