"""Fault suite, data level: bad feature files, bad annotations and the cache
build, generated in tmp folders. Each case asserts what happens to the bad
video (skipped, counted, one line naming the file and the video) and that
the good ones go on. numpy only, fast."""

import fcntl
import json
import logging
import os

import h5py
import numpy as np
import pytest

from tal_keras.clips import FeatureTiming, resample_to_clips
from tal_keras.data.annotations import load_annotations
from tal_keras.data.cache import build_or_open_cache, remove_abandoned_builds
from tal_keras.data.features import (
    Hdf5FeatureStore,
    NpyFeatureStore,
    check_feature_length,
)
from tal_keras.errors import DataError
from tal_keras.lattice import Lattice

WIDTH = 6
TIMING = FeatureTiming()
LATTICE = Lattice(16, (4, 2, 2))


def features(num_steps, width=WIDTH, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((num_steps, width)).astype(np.float32)


def write_annotations(path, videos):
    """videos: {id: (subset, duration, [(label, start, end)])}."""
    database = {
        video_id: {
            "subset": subset,
            "duration": duration,
            "annotations": [
                {"label": label, "segment": [start, end]}
                for label, start, end in segments
            ],
        }
        for video_id, (subset, duration, segments) in videos.items()
    }
    path.write_text(json.dumps({"database": database}))
    return path


@pytest.fixture
def corpus(tmp_path):
    """Three training videos of 20 s; features of `c` are missing."""
    videos = {
        name: ("training", 20.0, [("jump", 2.0, 8.0)]) for name in ("a", "b", "c")
    }
    annotations = write_annotations(tmp_path / "gt.json", videos)
    directory = tmp_path / "features"
    directory.mkdir()
    for seed, name in enumerate(("a", "b")):
        np.save(directory / f"{name}.npy", features(TIMING.num_steps(20.0), seed=seed))
    return annotations, directory


def build(root, annotations_path, directory, **kwargs):
    annotations = load_annotations(annotations_path, subset="training")
    return build_or_open_cache(
        root,
        "training",
        annotations,
        NpyFeatureStore(directory),
        LATTICE,
        TIMING,
        WIDTH,
        num_workers=1,
        **kwargs,
    )


def test_cache_build_with_a_skipped_video(corpus, tmp_path, caplog):
    # 2 usable of 3: the usable count is not a multiple of the copy chunk (256).
    annotations, directory = corpus
    with caplog.at_level(logging.WARNING, logger="tal_keras"):
        cache = build(tmp_path / "cache", annotations, directory)
    assert cache.video_ids == ["a", "b"]
    assert [video for video, _ in cache.skipped] == ["c"]
    assert cache.clips.shape == (2, 16, WIDTH)
    for row, name in enumerate(("a", "b")):
        expected = resample_to_clips(np.load(directory / f"{name}.npy"), 20.0, 16)
        np.testing.assert_array_equal(cache.clips[row], expected)
    assert any("skipping video c" in record.message for record in caplog.records)
    assert any("skipped 1 of 3 videos" in record.message for record in caplog.records)
    # Reopened from disk, not rebuilt: same rows.
    again = build(tmp_path / "cache", annotations, directory)
    np.testing.assert_array_equal(again.clips, cache.clips)


def test_cache_build_with_many_videos_and_skips(tmp_path):
    # 300 videos, every seventh missing: 257 usable, two copy chunks.
    videos = {f"v{index:03d}": ("training", 4.0, []) for index in range(300)}
    annotations = write_annotations(tmp_path / "gt.json", videos)
    directory = tmp_path / "features"
    directory.mkdir()
    for index in range(300):
        if index % 7:
            np.save(directory / f"v{index:03d}.npy", np.full((8, 2), index, np.float32))
    cache = build_or_open_cache(
        tmp_path / "cache",
        "training",
        load_annotations(annotations, subset="training"),
        NpyFeatureStore(directory),
        LATTICE,
        TIMING,
        2,
        num_workers=2,
    )
    assert len(cache) == 257 and len(cache.skipped) == 43
    # Each row holds its own video's constant features.
    kept = [int(video_id[1:]) for video_id in cache.video_ids]
    np.testing.assert_array_equal(cache.clips[:, 0, 0], kept)


def test_abandoned_cache_builds_are_removed_live_ones_kept(corpus, tmp_path):
    annotations, directory = corpus
    root = tmp_path / "cache"
    abandoned = root / ".training-0123.abcd"
    abandoned.mkdir(parents=True)
    (abandoned / ".building").write_text("")
    (abandoned / "clips.partial.npy").write_bytes(b"\0" * 100)
    live = root / ".training-0123.efgh"
    live.mkdir()
    with open(live / ".building", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        build(root, annotations, directory)
        assert not abandoned.exists()
        assert live.exists()
    assert remove_abandoned_builds(root) == [str(live)]
    assert [entry for entry in os.listdir(root) if entry.startswith(".")] == []


def write_npy_with_header(path, shape, payload_bytes):
    """A .npy file whose header claims `shape` (float32) followed by
    `payload_bytes` bytes of data: a lying header when they disagree."""
    header = {"descr": "<f4", "fortran_order": False, "shape": tuple(shape)}
    with open(path, "wb") as stream:
        np.lib.format.write_array_header_1_0(stream, header)
        stream.write(b"\0" * payload_bytes)


@pytest.fixture
def bad_features(tmp_path):
    """A store with one good video and each bad kind of docs/faults.md."""
    directory = tmp_path / "features"
    directory.mkdir()
    steps = TIMING.num_steps(20.0)
    np.save(directory / "good.npy", features(steps))
    huge = features(steps)
    huge[5, 2] = 3e38  # finite in float32, overflows any sum
    np.save(directory / "huge.npy", huge)
    write_npy_with_header(directory / "lying.npy", (10**9, WIDTH), 4 * WIDTH * 3)
    np.save(directory / "one_step.npy", features(1))
    np.save(directory / "too_long.npy", features(20000))
    np.save(directory / "bit_long.npy", features(int(steps * 1.5)))
    return NpyFeatureStore(directory)


def test_huge_finite_values_are_rejected_naming_file_and_video(bad_features):
    with pytest.raises(DataError) as error:
        bad_features.load("huge", WIDTH)
    message = str(error.value)
    assert "huge.npy: video huge: expected feature values within +-1e+06" in message
    assert "largest 3e+38" in message and "first at step 5" in message


def test_lying_npy_header_is_rejected_without_allocating(bad_features):
    # The header claims 10**9 x 6 float32 (24 GB); reading it must not try.
    for check in (
        lambda: bad_features.load("lying", WIDTH),
        lambda: bad_features.check("lying", WIDTH, check_values=False),
    ):
        with pytest.raises(DataError) as error:
            check()
        message = str(error.value)
        assert "lying.npy: video lying: cannot read the feature file" in message
        assert "header claims shape (1000000000, 6)" in message
        assert "the file holds 72 bytes" in message


@pytest.mark.parametrize(
    "video_id, duration",
    [("one_step", 20.0), ("too_long", 20.0), ("good", 1e9), ("good", 0.1)],
)
def test_feature_length_far_from_duration_is_rejected(bad_features, video_id, duration):
    with pytest.raises(DataError, match="more than 2 times apart") as error:
        bad_features.load(video_id, WIDTH, duration=duration, timing=TIMING)
    assert f"{video_id}.npy: video {video_id}: " in str(error.value)


def test_feature_length_a_little_off_is_used_with_a_warning():
    where = "f.npy: video x"
    steps = TIMING.num_steps(90.0)  # 169 steps, 90.13 s
    assert check_feature_length(where, steps, 90.0, TIMING) is None
    assert check_feature_length(where, steps + 5, 90.0, TIMING) is None  # rounding
    message = check_feature_length(where, int(steps * 1.5), 90.0, TIMING)
    assert message.startswith("f.npy: video x: 253 feature steps cover 134.9 s")
    assert "duration is 90 s (about 169 steps)" in message
    assert message.endswith("more than 10% apart, used anyway.")
    assert check_feature_length(where, int(steps * 0.6), 90.0, TIMING) is not None
    with pytest.raises(DataError):
        check_feature_length(where, 1, 90.0, TIMING)
    with pytest.raises(DataError):
        check_feature_length(where, 20000, 90.0, TIMING)
    # Very short videos: one step always fits within the two steps' slack.
    assert check_feature_length(where, 1, 0.3, TIMING) is None


def test_hdf5_huge_values_and_implausible_length(tmp_path):
    path = tmp_path / "features.h5"
    with h5py.File(path, "w") as handle:
        handle["good"] = features(TIMING.num_steps(20.0))
        handle["huge"] = np.full((10, WIDTH), 1e30, np.float64)
        # A chunked dataset claiming 10**9 steps holds almost nothing on disk.
        handle.create_dataset("sparse", shape=(10**9, WIDTH), dtype="f4", chunks=True)
    store = Hdf5FeatureStore(path)
    assert store.load("good", WIDTH, duration=20.0, timing=TIMING).shape[0] == 38
    with pytest.raises(DataError, match="video huge: expected feature values"):
        store.load("huge", WIDTH)
    with pytest.raises(DataError, match="sparse: video sparse: 1000000000 feature"):
        store.load("sparse", WIDTH, duration=20.0, timing=TIMING)


def test_cache_build_skips_and_counts_every_bad_kind(bad_features, tmp_path, caplog):
    names = ["good", "huge", "lying", "one_step", "too_long", "bit_long", "gone"]
    videos = {name: ("training", 20.0, [("jump", 2.0, 8.0)]) for name in names}
    annotations = write_annotations(tmp_path / "gt.json", videos)
    with caplog.at_level(logging.WARNING, logger="tal_keras"):
        cache = build(tmp_path / "cache", annotations, bad_features.directory)
    assert cache.video_ids == ["bit_long", "good"]
    reasons = dict(cache.skipped)
    assert sorted(reasons) == ["gone", "huge", "lying", "one_step", "too_long"]
    assert "beyond" in reasons["huge"] and "header claims" in reasons["lying"]
    assert "2 times apart" in reasons["one_step"] + reasons["too_long"]
    assert [video for video, _ in cache.length_warnings] == ["bit_long"]
    messages = [record.getMessage() for record in caplog.records]
    assert sum("skipping video" in line for line in messages) == 5
    assert "skipped 5 of 7 videos (reasons above)" in messages
    assert any(line.startswith("1 of 7 videos have features") for line in messages)


def test_float16_cache_skips_values_it_cannot_hold(tmp_path):
    videos = {name: ("training", 4.0, []) for name in ("small", "large")}
    annotations = write_annotations(tmp_path / "gt.json", videos)
    directory = tmp_path / "features"
    directory.mkdir()
    np.save(directory / "small.npy", np.ones((8, WIDTH), np.float32))
    np.save(directory / "large.npy", np.full((8, WIDTH), 1e5, np.float32))
    cache = build(tmp_path / "cache", annotations, directory, dtype="float16")
    assert cache.video_ids == ["small"]
    assert "beyond float16's +-65504" in dict(cache.skipped)["large"]


def test_videos_of_unknown_subsets_are_counted_in_one_warning(tmp_path, caplog):
    videos = {
        "a": ("training", 10.0, [("jump", 1.0, 2.0)]),
        "b": ("train", 10.0, [("jump", 1.0, 2.0)]),
        "c": ("train", 10.0, []),
        "d": ("Validation", 10.0, []),
        "e": ("validation", 10.0, []),
    }
    path = write_annotations(tmp_path / "gt.json", videos)
    with caplog.at_level(logging.WARNING, logger="tal_keras"):
        annotations = load_annotations(path, subset="training")
    assert annotations.video_ids == ["a"]
    lines = [r.getMessage() for r in caplog.records if "other than" in r.message]
    expected = (
        f"{path}: 3 videos are in subsets other than training/validation/testing "
        "and are left out ('Validation': 1, 'train': 2); rename the subsets or "
        "ask for them by name"
    )
    assert lines == [expected]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tal_keras"):
        assert load_annotations(path, subset=("train",)).video_ids == ["b", "c"]
    assert sum("other than" in r.message for r in caplog.records) == 1  # Validation


def test_duplicate_video_ids_are_counted_in_one_warning(tmp_path, caplog):
    pairs = [("a", 10), ("b", 11), ("a", 12), ("c", 13), ("c", 14)]
    entries = ", ".join(
        f'"{video}": {{"subset": "training", "duration": {seconds}}}'
        for video, seconds in pairs
    )
    text = f'{{"database": {{{entries}}}}}'
    path = tmp_path / "gt.json"
    path.write_text(text)
    with caplog.at_level(logging.WARNING, logger="tal_keras"):
        annotations = load_annotations(path)
    assert annotations["a"].duration == 12.0 and annotations["c"].duration == 14.0
    lines = [r.getMessage() for r in caplog.records if "more than once" in r.message]
    expected = (
        f"{path}: 2 video ids appear more than once in the database (a, c); the "
        "last entry of each is used"
    )
    assert lines == [expected]


def test_scoring_warns_where_the_official_code_is_silent(tmp_path, caplog, monkeypatch):
    from tal_keras import metrics

    ground_truth = write_annotations(
        tmp_path / "gt.json",
        {
            "a": ("validation", 50.0, [("jump", 5.0, 15.0)]),
            "b": ("validation", 40.0, [("jump", 10.0, 20.0), ("run", 1.0, 3.0)]),
            "e": ("validation", 30.0, []),
        },
    )
    results = {
        "a": [
            {"label": "jump", "score": float("inf"), "segment": [5.0, 15.0]},
            {"label": "jump", "score": 0.5, "segment": [14.0, 4.0]},  # reversed
            {"label": "run", "score": 0.4, "segment": [-2.0, 10.0]},  # before 0
        ],
        "b": [
            {"label": "jump", "score": 0.9, "segment": [10.0, 41.0]},  # past 40 s
            {"label": "run", "score": float("-inf"), "segment": [1.0, 3.0]},
        ],
        "e": [{"label": "run", "score": 0.3, "segment": [1.0, 2.0]}],  # no segment
        "ghost": [{"label": "jump", "score": 0.8, "segment": [1.0, 9.0]}],
        "ghost2": [],
    }
    predictions = tmp_path / "predictions.json"
    predictions.write_text(json.dumps({"results": results}))

    def score():
        detection = metrics.evaluate_detection(ground_truth, predictions)
        proposals = metrics.evaluate_proposals(ground_truth, predictions)
        return detection, proposals

    with caplog.at_level(logging.WARNING, logger="tal_keras"):
        scored = score()
    lines = [r.getMessage() for r in caplog.records]
    # Detection and proposals each say it once.
    assert len(lines) == 8 and lines[:4] == lines[4:]
    assert lines[0] == (
        f"{predictions}: 1 predictions for 2 videos that are not in subset "
        "'validation' of the ground truth (e.g. 'ghost'); scored as the official "
        "code does (false positives; counted in the proposal total)"
    )
    assert lines[1].startswith(f"{predictions}: 2 predictions have an infinite score")
    assert lines[2].startswith(f"{predictions}: 1 predicted segments end before")
    assert lines[3].startswith(
        f"{predictions}: 2 predicted segments lie partly outside [0, duration]"
    )
    # Read-only: the numbers are those computed without the warnings.
    monkeypatch.setattr(metrics, "warn_about_silent_cases", lambda *args: {})
    assert score() == scored


def test_tal_score_prints_warning_lines_and_checks_its_output_first(
    tmp_path, capsys, restore_logging
):
    from tal_keras import scoring

    ground_truth = write_annotations(
        tmp_path / "gt.json", {"a": ("validation", 50.0, [("jump", 5.0, 15.0)])}
    )
    predictions = tmp_path / "predictions.json"
    entries = [{"label": "jump", "score": 0.5, "segment": [16.0, 4.0]}]
    predictions.write_text(json.dumps({"results": {"a": entries}}))
    argv = ["--ground_truth", str(ground_truth), "--predictions", str(predictions)]
    assert scoring.main(argv) == 0
    err = capsys.readouterr().err.splitlines()
    expected = (
        f"W {predictions}: 1 predicted segments end before they start; "
        "scored as given (their tIoU is 0 or less)"
    )
    assert err == [expected]
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert scoring.main([*argv, "--metrics_out", str(blocker / "m.json")]) == 2
    err = capsys.readouterr().err.splitlines()
    expected = (
        f"error: {blocker / 'm.json'}: cannot write the metrics in {blocker}: "
        f"{blocker} is a file, not a folder."
    )
    assert err == [expected]
    assert not (tmp_path / "m.json").exists()


def test_cache_folder_follows_the_umask(corpus, tmp_path):
    annotations, directory = corpus
    previous = os.umask(0o022)
    try:
        cache = build(tmp_path / "cache", annotations, directory)
    finally:
        os.umask(previous)
    assert os.stat(cache.folder).st_mode & 0o777 == 0o755
    assert os.stat(os.path.join(cache.folder, "index.json")).st_mode & 0o777 == 0o644


def test_loaded_features_are_in_memory_not_a_map_of_the_file(bad_features):
    features = bad_features.load("good", WIDTH)
    assert type(features) is np.ndarray
    assert features.flags.owndata and features.flags.writeable


def test_reversed_ground_truth_segments_are_counted_and_scored_officially(
    tmp_path, caplog
):
    from tal_keras import evaluation, metrics

    videos = {
        "a": ("validation", 50.0, [("jump", 5.0, 15.0), ("jump", 30.0, 20.0)]),
        "b": ("validation", 40.0, [("jump", 12.0, 2.0)]),
        "c": ("training", 40.0, [("jump", 12.0, 2.0)]),  # another subset
    }
    ground_truth = write_annotations(tmp_path / "gt.json", videos)
    predictions = {
        "results": {
            "a": [
                {"label": "jump", "score": 0.9, "segment": [5.0, 15.0]},
                {"label": "jump", "score": 0.8, "segment": [20.0, 30.0]},
            ],
            "b": [{"label": "jump", "score": 0.7, "segment": [2.0, 12.0]}],
        }
    }
    with caplog.at_level(logging.WARNING, logger="tal_keras"):
        detection = metrics.evaluate_detection(ground_truth, predictions)
    lines = [r.getMessage() for r in caplog.records if "ground-truth" in r.message]
    expected = (
        f"{ground_truth}: 2 ground-truth segments of subset 'validation' end "
        "before they start (first: video 'a', [30.0, 20.0]); scored as given, as "
        "the official code does: missed, unless a prediction of the same length "
        "matches them (0/0 tIoU)"
    )
    assert lines == [expected]
    # The official matching: a 10 s prediction has a NaN tIoU with a reversed
    # 10 s segment, tried first and taken. In video a the 0.9 prediction takes
    # [30, 20] and the 0.8 one finds nothing left (false positive); in video b
    # the 0.7 one takes [12, 2]: hit, false positive, hit of 3 segments at every
    # threshold, AP = 1/3 * 1 + 1/3 * 2/3.
    assert detection["average_mAP"] == pytest.approx(5 / 9)
    # evaluate.py reads the ground truth once per run: one line.
    caplog.clear()
    annotations = load_annotations(ground_truth, subset="validation")
    with caplog.at_level(logging.WARNING, logger="tal_keras"):
        first = evaluation.ground_truth_of(annotations)
        assert evaluation.ground_truth_of(annotations) is first
    assert sum("ground-truth segments" in r.message for r in caplog.records) == 1


def test_a_file_that_is_not_npy_is_named_as_such(tmp_path):
    directory = tmp_path / "features"
    directory.mkdir()
    (directory / "text.npy").write_bytes(b"not a numpy file at all")
    (directory / "empty.npy").write_bytes(b"")
    store = NpyFeatureStore(directory)
    for video_id, start in (("text", b"not a "), ("empty", b"")):
        with pytest.raises(DataError) as error:
            store.load(video_id, WIDTH)
        message = str(error.value)
        assert message.startswith(
            f"{directory / video_id}.npy: video {video_id}: cannot read the feature "
            f"file (not a .npy file: it starts with {start!r}, a .npy file with "
            "b'\\x93NUMPY'; corrupt or of another format)"
        )
        assert "pickle" not in message
