"""Synthetic HACS-like data: annotations, class list and features on disk, in
the real formats, so that every stage can run and be tested without HACS.

What it models:

- Videos of 20 to 240 s (uniform), split about 70/20/10 into training,
  validation and testing. Testing videos have an empty annotation list, as in
  HACS.
- 1 to 5 non-overlapping action instances per video, all of the video's one
  class. Lengths run from about 1% (at least 1 s) to 100% of the video: about
  a third of the videos hold a single long instance covering 50 to 100% of
  it, as long instances are common in HACS; the others hold 1 to 5 instances
  (fewer more often) of log-uniform lengths. About a fifth of all instances
  cover more than half of their video; the median covers about 8%.
- Features with the HACS SlowFast timing (15 fps, stride 8, window 32), so
  about duration * 15 / 8 steps, the last centres slightly past the duration.
  Each step is background + action + distractor + noise:
  - background: a small per-video offset plus a slow drift (time scale about
    10 s) in a low-dimensional subspace shared by all videos;
  - action: each class has three random directions in feature space, for its
    onset, body and offset. An instance shows the onset pattern for its first
    tenth (at least 1.5 s, at most a quarter of it), then the body, then the
    offset for its last tenth, at a random per-instance amplitude;
  - distractors: body-only stretches (usually of the video's class, sometimes
    of another) in the gaps between instances, with no onset or offset, at
    most as long as the video's longest instance and weaker (amplitude 0.3 to
    0.7), so that finding boundaries needs temporal context, not only the
    body pattern;
  - noise: i.i.d. Gaussian, standard deviation 1, per step and channel.
- Signal-to-noise: per channel a pattern (amplitude 0.5 to 1.0, unit root
  mean square direction) is below the noise, but projected on its direction
  one step stands 0.5 to 1.0 times sqrt(D) standard deviations above it (8 to
  16 for D = 256), so the mean over a clip shows the class clearly.

What it does not model: real appearance and motion, shot cuts, the statistics
of real SlowFast features (non-negative, sparse, correlated channels), label
noise or ambiguous boundaries, several classes in one video, overlapping
instances, class imbalance, and missing or corrupt feature files (the tests
make those on purpose).

On disk (DIR = --out):

- DIR/annotations.json: ActivityNet style; ids have no "v_" prefix; the
  duration of every third video is written as a string, as HACS does.
- DIR/classes.txt: one label per line; the line order is the class index.
- DIR/features/ID.npy (--format npy) or DIR/features.h5 (--format hdf5, one
  dataset per video): float32 [T, D]. Every second video's file or key is
  named v_ID instead, to exercise id matching.
- DIR/synthetic.json: the generator's parameters.

Deterministic for a seed: each video draws from its own random stream, seeded
by (seed, video index). The whole folder is written to a temporary sibling and
renamed into place, so an interrupted run never leaves a folder that looks
finished.

Usage: python -m tal_keras.data.synthetic --out DIR [--num_videos 1000
--num_classes 20 --feature_dim 256 --format npy|hdf5 --seed 0 --overwrite]
"""

import argparse
import dataclasses
import json
import os
import sys

import numpy as np

from tal_keras.atomic import atomic_folder
from tal_keras.clips import HACS_TIMING
from tal_keras.data.features import feature_writer, written_features_path

FORMATS = ("npy", "hdf5")
SUBSET_FRACTIONS = (("training", 0.7), ("validation", 0.2), ("testing", 0.1))
PARAMETERS_FILE = "synthetic.json"
GENERATOR_VERSION = 3  # bump when the same seed would give different data

MIN_DURATION, MAX_DURATION = 20.0, 240.0  # seconds, uniform
INSTANCE_COUNT_WEIGHTS = (0.35, 0.25, 0.2, 0.12, 0.08)  # of 1..5 instances
LONG_VIDEO_PROBABILITY = 0.35  # one instance covering 50-100% of the video
MIN_INSTANCE_FRACTION = 0.01  # of the duration ...
MIN_INSTANCE_SECONDS = 1.0  # ... but at least this long
PHASE_FRACTION = 0.1  # onset / offset share of an instance
MIN_PHASE_SECONDS = 1.5  # a phase spans at least about three steps
AMPLITUDE_RANGE = (0.5, 1.0)  # per-instance scale of the class pattern
NOISE_STD = 1.0
BACKGROUND_RANK = 8  # dimensions of the shared background subspace
BACKGROUND_SECONDS = 10.0  # time scale of the background drift
BACKGROUND_OFFSET_STD = 0.3  # per-video constant offset, relative to the drift
DISTRACTOR_PROBABILITY = 0.5  # per gap between instances (and at the ends)
DISTRACTOR_OTHER_CLASS = 0.3  # share of distractors of another class
# A distractor is at most as long as the video's longest instance (and 40% of
# its gap) and weaker than an instance, so that it resembles part of an action
# without dwarfing a short one.
DISTRACTOR_AMPLITUDE_RANGE = (0.3, 0.7)
MIN_GAP_FOR_DISTRACTOR = 4.0  # seconds
ID_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"
ID_LENGTH = 11  # YouTube ids, as in HACS


@dataclasses.dataclass(frozen=True)
class SyntheticDataset:
    """Paths of a generated dataset.

    Attributes:
        root: the folder.
        annotations_path: ActivityNet-style JSON.
        classes_path: one label per line.
        features_path: the feature folder (npy) or HDF5 file.
        parameters: the generator's arguments, as written in synthetic.json.
    """

    root: str
    annotations_path: str
    classes_path: str
    features_path: str
    parameters: dict


def class_names(num_classes):
    """Labels of the synthetic classes; sorted order is index order."""
    width = max(3, len(str(num_classes - 1)))
    return [f"Action {index:0{width}d}" for index in range(num_classes)]


def class_patterns(num_classes, feature_dim, seed=0):
    """float32 [C, 3, D]: onset, body and offset direction of each class,
    each of root mean square 1 per channel."""
    rng = np.random.default_rng([seed, 0])
    patterns = rng.standard_normal((num_classes, 3, feature_dim))
    patterns *= np.sqrt(feature_dim) / np.linalg.norm(patterns, axis=-1, keepdims=True)
    return patterns.astype(np.float32)


def generate(
    out_dir,
    num_videos=1000,
    num_classes=20,
    feature_dim=256,
    format="npy",
    seed=0,
    overwrite=False,
):
    """Writes a synthetic dataset to `out_dir` (see the module docstring).

    Args:
        out_dir: the folder to create.
        num_videos: videos in all subsets together.
        num_classes: C.
        feature_dim: D.
        format: "npy" (DIR/features/*.npy) or "hdf5" (DIR/features.h5).
        seed: random seed; the same arguments give the same files.
        overwrite: replace an existing `out_dir`; without it an existing,
            non-empty folder raises FileExistsError.

    Returns:
        `SyntheticDataset`.
    """
    parameters = _parameters(num_videos, num_classes, feature_dim, format, seed)
    out_dir = os.path.abspath(os.fspath(out_dir))
    if _is_nonempty_dir(out_dir) and not overwrite:
        raise FileExistsError(
            f"{out_dir} exists and is not empty; pass overwrite=True (--overwrite) "
            "to replace it."
        )
    with atomic_folder(out_dir, overwrite) as building:
        _write(building, parameters)
    return _dataset(out_dir, parameters)


def ensure_synthetic(out_dir, **kwargs):
    """Generates the dataset unless `out_dir` already holds it, finished and
    with the same arguments. Returns `SyntheticDataset`.

    Raises:
        FileExistsError: `out_dir` holds something else (other arguments or
            not a synthetic dataset); it is never overwritten here.
    """
    parameters = _parameters(**{**_defaults(), **kwargs})
    out_dir = os.path.abspath(os.fspath(out_dir))
    existing = _read_parameters(out_dir)
    if existing == parameters:
        return _dataset(out_dir, parameters)
    if _is_nonempty_dir(out_dir):
        found = (
            "other parameters " + json.dumps(existing) if existing else "other files"
        )
        raise FileExistsError(
            f"{out_dir} holds {found}, not the synthetic dataset "
            f"{json.dumps(parameters)}; remove it or choose another folder (the command line's --overwrite replaces it)."
        )
    try:
        return generate(out_dir, **kwargs)
    except FileExistsError:
        # Another process finished the same dataset first.
        if _read_parameters(out_dir) == parameters:
            return _dataset(out_dir, parameters)
        raise


def _defaults():
    return {
        "num_videos": 1000,
        "num_classes": 20,
        "feature_dim": 256,
        "format": "npy",
        "seed": 0,
    }


def _parameters(num_videos, num_classes, feature_dim, format, seed):
    for name, value, minimum in (
        ("num_videos", num_videos, 1),
        ("num_classes", num_classes, 1),
        ("feature_dim", feature_dim, 1),
        ("seed", seed, 0),
    ):
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, np.integer))
            or value < minimum
        ):
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}.")
    return {
        "generator_version": GENERATOR_VERSION,
        "num_videos": int(num_videos),
        "num_classes": int(num_classes),
        "feature_dim": int(feature_dim),
        "format": format,
        "seed": int(seed),
    }


def _dataset(root, parameters):
    return SyntheticDataset(
        root=root,
        annotations_path=os.path.join(root, "annotations.json"),
        classes_path=os.path.join(root, "classes.txt"),
        features_path=written_features_path(root, parameters["format"]),
        parameters=parameters,
    )


def _read_parameters(root):
    try:
        with open(os.path.join(root, PARAMETERS_FILE)) as stream:
            return json.load(stream)
    except (OSError, ValueError):
        return None


def _is_nonempty_dir(path):
    return os.path.isdir(path) and bool(os.listdir(path))


def _write(root, parameters):
    num_videos = parameters["num_videos"]
    num_classes = parameters["num_classes"]
    feature_dim = parameters["feature_dim"]
    seed = parameters["seed"]
    timing = HACS_TIMING
    names = class_names(num_classes)
    patterns = class_patterns(num_classes, feature_dim, seed)
    background_basis = np.random.default_rng([seed, 1]).standard_normal(
        (BACKGROUND_RANK, feature_dim)
    ) / np.sqrt(BACKGROUND_RANK)
    video_ids = _video_ids(num_videos, np.random.default_rng([seed, 2]))
    subsets = _subsets(num_videos, np.random.default_rng([seed, 3]))

    database = {}
    with feature_writer(root, parameters["format"]) as write_features:
        for index, video_id in enumerate(video_ids):
            rng = np.random.default_rng([seed, 4, index])
            video = _video(rng, num_classes, timing, patterns, background_basis)
            # Every second video is stored under the ActivityNet-style name.
            write_features(("v_" if index % 2 else "") + video_id, video["features"])
            annotations = [
                {"label": names[video["label"]], "segment": list(segment)}
                for segment in video["segments"]
            ]
            duration = video["duration"]
            database[video_id] = {
                "subset": subsets[index],
                # HACS writes some durations as strings.
                "duration": f"{duration:.2f}" if index % 3 == 0 else duration,
                "annotations": annotations if subsets[index] != "testing" else [],
            }
    database = dict(sorted(database.items()))
    with open(os.path.join(root, "annotations.json"), "w") as stream:
        json.dump({"version": "synthetic", "database": database}, stream)
    with open(os.path.join(root, "classes.txt"), "w") as stream:
        stream.write("".join(name + "\n" for name in names))
    # Written last: its presence marks a finished dataset.
    with open(os.path.join(root, PARAMETERS_FILE), "w") as stream:
        json.dump(parameters, stream, indent=1)


def _video_ids(num_videos, rng):
    alphabet = np.array(list(ID_ALPHABET))
    ids, seen = [], set()
    while len(ids) < num_videos:
        video_id = "".join(rng.choice(alphabet, ID_LENGTH))
        # A "v_" start would make the id ambiguous with a prefixed one.
        if video_id not in seen and not video_id.startswith("v_"):
            seen.add(video_id)
            ids.append(video_id)
    return ids


def _subsets(num_videos, rng):
    counts, assigned = [], 0
    for _, fraction in SUBSET_FRACTIONS[:-1]:
        count = round(fraction * num_videos)
        counts.append(min(count, num_videos - assigned))
        assigned += counts[-1]
    counts.append(num_videos - assigned)
    names = np.repeat([name for name, _ in SUBSET_FRACTIONS], counts)
    return list(names[rng.permutation(num_videos)])


def _instance_bounds(rng, duration):
    """Sorted, non-overlapping (start, end) seconds of the video's instances."""
    if rng.random() < LONG_VIDEO_PROBABILITY:
        lengths = np.array([rng.uniform(0.5, 1.0) * duration])
    else:
        count = 1 + int(
            rng.choice(len(INSTANCE_COUNT_WEIGHTS), p=INSTANCE_COUNT_WEIGHTS)
        )
        largest = 0.9 / count
        fractions = np.exp(
            rng.uniform(np.log(MIN_INSTANCE_FRACTION), np.log(largest), size=count)
        )
        lengths = np.maximum(fractions * duration, MIN_INSTANCE_SECONDS)
    gaps = rng.dirichlet(np.ones(lengths.size + 1)) * (duration - lengths.sum())
    starts = np.cumsum(gaps[:-1]) + np.concatenate([[0.0], np.cumsum(lengths)[:-1]])
    return np.stack([starts, starts + lengths], axis=1)


def _video(rng, num_classes, timing, patterns, background_basis):
    duration = round(float(rng.uniform(MIN_DURATION, MAX_DURATION)), 2)
    label = int(rng.integers(num_classes))
    num_steps = timing.num_steps(duration)
    centers = timing.centers(num_steps)
    feature_dim = patterns.shape[-1]

    bounds = _instance_bounds(rng, duration)
    segments = []
    for start, end in bounds:
        start, end = round(float(start), 2), min(round(float(end), 2), duration)
        if end > start:
            segments.append((start, end))

    signal = np.zeros((num_steps, feature_dim), np.float64)
    for start, end in segments:
        amplitude = rng.uniform(*AMPLITUDE_RANGE)
        phase = min(
            max(PHASE_FRACTION * (end - start), MIN_PHASE_SECONDS), (end - start) / 4
        )
        inside = (centers >= start) & (centers < end)
        onset = inside & (centers < start + phase)
        offset = inside & (centers >= end - phase) & ~onset
        body = inside & ~onset & ~offset
        for mask, pattern in ((onset, 0), (body, 1), (offset, 2)):
            signal[mask] += amplitude * patterns[label, pattern]

    # Distractors: body-only stretches in the gaps (before, between, after).
    edges = [0.0] + [bound for segment in segments for bound in segment] + [duration]
    for gap_start, gap_end in zip(edges[0::2], edges[1::2]):
        gap = gap_end - gap_start
        if gap < MIN_GAP_FOR_DISTRACTOR or rng.random() >= DISTRACTOR_PROBABILITY:
            continue
        longest = max(end - start for start, end in segments) if segments else gap
        length = rng.uniform(0.3, 1.0) * min(0.4 * gap, longest)
        start = gap_start + rng.uniform(0.2 * gap, 0.8 * gap - length)
        distractor_class = label
        if num_classes > 1 and rng.random() < DISTRACTOR_OTHER_CLASS:
            distractor_class = (label + int(rng.integers(1, num_classes))) % num_classes
        mask = (centers >= start) & (centers < start + length)
        amplitude = rng.uniform(*DISTRACTOR_AMPLITUDE_RANGE)
        signal[mask] += amplitude * patterns[distractor_class, 1]

    background = _background(rng, num_steps, timing) @ background_basis
    noise = rng.standard_normal((num_steps, feature_dim)) * NOISE_STD
    features = (signal + background + noise).astype(np.float32)
    return {
        "duration": duration,
        "label": label,
        "segments": segments,
        "features": features,
    }


def _background(rng, num_steps, timing):
    """[T, BACKGROUND_RANK]: a constant offset plus a smooth unit-variance drift."""
    sigma = BACKGROUND_SECONDS / timing.step_seconds
    half = int(np.ceil(3 * sigma))
    kernel = np.exp(-0.5 * (np.arange(-half, half + 1) / sigma) ** 2)
    kernel /= np.sqrt(np.sum(kernel**2))
    white = rng.standard_normal((num_steps + 2 * half, BACKGROUND_RANK))
    drift = np.stack(
        [
            np.convolve(white[:, k], kernel, mode="valid")
            for k in range(BACKGROUND_RANK)
        ],
        axis=1,
    )
    return BACKGROUND_OFFSET_STD * rng.standard_normal(BACKGROUND_RANK) + drift


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m tal_keras.data.synthetic",
        description="Writes a synthetic HACS-like dataset (see docs/synthetic.md).",
    )
    parser.add_argument("--out", required=True, help="folder to create")
    parser.add_argument("--num_videos", type=int, default=1000)
    parser.add_argument("--num_classes", type=int, default=20)
    parser.add_argument("--feature_dim", type=int, default=256)
    parser.add_argument("--format", choices=FORMATS, default="npy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing --out folder"
    )
    args = parser.parse_args(argv)
    kwargs = {
        "num_videos": args.num_videos,
        "num_classes": args.num_classes,
        "feature_dim": args.feature_dim,
        "format": args.format,
        "seed": args.seed,
    }
    try:
        if args.overwrite:
            dataset = generate(args.out, overwrite=True, **kwargs)
        else:
            dataset = ensure_synthetic(args.out, **kwargs)
    except (FileExistsError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"Synthetic dataset in {dataset.root}: {dataset.annotations_path}, "
        f"{dataset.classes_path}, {dataset.features_path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
