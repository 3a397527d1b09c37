"""Fault suite, data level: bad feature files, bad annotations and the cache
build, generated in tmp folders. Each case asserts what happens to the bad
video (skipped, counted, one line naming the file and the video) and that
the good ones go on. numpy only, fast."""

import fcntl
import json
import logging
import os

import numpy as np
import pytest

from tal_keras.clips import resample_to_clips
from tal_keras.data.annotations import load_annotations
from tal_keras.data.cache import build_or_open_cache, remove_abandoned_builds
from tal_keras.data.features import FeatureTiming, NpyFeatureStore
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
