"""Video ids are names, never paths: an id with a path separator, "..", a NUL
or an absolute form is refused by the feature stores with one line naming it
and counted as an unusable video, in the cache build that train.py and
evaluate.py use and in serving; a valid array at the place the id points to
is never read."""

import json
import logging
import os

import h5py
import numpy as np
import pytest
from test_export import make_tiny_run
from test_faults_data import write_annotations

from export import serve
from tal_keras import run
from tal_keras.clips import FeatureTiming
from tal_keras.config import DataConfig, ModelConfig, RunConfig
from tal_keras.data.features import (
    Hdf5FeatureStore,
    NpyFeatureStore,
    find_usable_videos,
    open_feature_store,
    video_id_problem,
)
from tal_keras.errors import DataError

WIDTH = 6
TIMING = FeatureTiming()
STEPS = TIMING.num_steps(20.0)


def features(num_steps=STEPS, width=WIDTH, value=0.0):
    rng = np.random.default_rng(0)
    return (rng.standard_normal((num_steps, width)) + value).astype(np.float32)


@pytest.fixture
def escaping(tmp_path):
    """A feature folder holding "good", and a valid array at every place
    an escaping id points to; returns (folder, {id: the file it points to})."""
    folder = tmp_path / "data" / "features"
    (folder / "a").mkdir(parents=True)
    np.save(folder / "good.npy", features())
    targets = {
        "../../secret/zz": tmp_path / "secret" / "zz.npy",
        str(tmp_path / "outside" / "abs"): tmp_path / "outside" / "abs.npy",
        "a/b": folder / "a" / "b.npy",
        "..": tmp_path / "data" / "features" / "...npy",
    }
    for target in targets.values():
        target.parent.mkdir(parents=True, exist_ok=True)
        np.save(target, features(value=100.0))
    targets["a\x00b"] = None
    targets["a\\b"] = None
    return folder, targets


@pytest.mark.parametrize(
    "video_id, problem",
    [
        ("../../secret/zz", "holds '..'"),
        ("/abs/path", "is an absolute path"),
        ("a/b", "holds the path separator '/'"),
        ("a\\b", "holds the path separator '\\\\'"),
        ("a\x00b", "holds the control character '\\x00'"),
        ("a\nb", "holds the control character '\\n'"),
        ("C:x", "starts with the drive 'C:'"),
        ("..", "holds '..'"),
        (".", "is '.'"),
        ("", "is empty"),
        ("v_abc", None),
        ("Zumba-03", None),
        ("a.b", None),
    ],
)
def test_video_id_problem(video_id, problem):
    assert video_id_problem(video_id) == problem


def spy_on_reads(monkeypatch):
    """Records every path np.load opens."""
    opened = []
    real_load = np.load

    def load(path, *args, **kwargs):
        opened.append(os.path.abspath(path))
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(np, "load", load)
    return opened


def test_npy_store_refuses_escaping_ids_and_reads_nothing(escaping, monkeypatch):
    folder, targets = escaping
    store = NpyFeatureStore(folder)
    opened = spy_on_reads(monkeypatch)
    for video_id in targets:
        assert store.path_of(video_id) is None and not store.has(video_id)
        for read, arguments in (
            (store.load, (video_id, WIDTH)),
            (store.check, (video_id, WIDTH, False)),
        ):
            with pytest.raises(DataError) as error:
                read(*arguments)
            message = str(error.value)
            assert message.startswith(f"{folder}: video {video_id!r}: refused: the id")
            assert message.endswith("never a path.") and "\n" not in message
    assert opened == []
    assert store.load("good", WIDTH).shape == (STEPS, WIDTH)
    assert set(opened) == {str(folder / "good.npy")}


def test_hdf5_store_refuses_the_same_ids(tmp_path):
    path = tmp_path / "features.h5"
    with h5py.File(path, "w") as handle:
        handle["good"] = features()
        handle["a/b"] = features(value=100.0)  # dataset b in group a
        handle["v_x/y"] = features(value=100.0)
    store = Hdf5FeatureStore(path)
    for video_id in ("a/b", "x/y", "../good", "/good", "a\x00b", "a\\b"):
        assert store.path_of(video_id) is None
        with pytest.raises(DataError, match="refused: the id"):
            store.load(video_id, WIDTH)
    # The group "a" holds one dataset: the plain id still reads it.
    np.testing.assert_array_equal(store.load("a", WIDTH), features(value=100.0))


def test_find_usable_videos_counts_refused_ids(escaping, caplog):
    folder, targets = escaping
    with caplog.at_level(logging.WARNING, logger="tal_keras"):
        usable, skipped = find_usable_videos(
            ["good", *targets], open_feature_store(folder), WIDTH
        )
    assert usable == ["good"]
    assert [video_id for video_id, _ in skipped] == list(targets)
    assert all("refused: the id" in reason for _, reason in skipped)
    assert "6 skipped" in caplog.records[-1].getMessage()


def one_segment_each(videos):
    """{id: (subset, duration)} -> `write_annotations`' {id: (subset,
    duration, [one segment])}."""
    return {
        video_id: (subset, duration, [("jump", 2.0, 8.0)])
        for video_id, (subset, duration) in videos.items()
    }


def test_training_data_skips_and_counts_escaping_ids(escaping, tmp_path, caplog):
    # run.open_subset: how train.py and evaluate.py open a subset.
    folder, targets = escaping
    videos = {"good": ("training", 20.0)}
    videos.update({video_id: ("training", 20.0) for video_id in targets})
    annotations = write_annotations(tmp_path / "gt.json", one_segment_each(videos))
    run_config = RunConfig(
        workdir=str(tmp_path / "run"),
        data=DataConfig(annotations=str(annotations), features=str(folder)),
        model=ModelConfig(
            num_clips=16, scale_layers=(4, 2, 2), feature_dim=WIDTH, num_classes=1
        ),
    )
    with caplog.at_level(logging.INFO, logger="tal_keras"):
        _, cache = run.open_subset(run_config, "training")
    assert cache.video_ids == ["good"]
    assert sorted(video_id for video_id, _ in cache.skipped) == sorted(targets)
    lines = [record.getMessage() for record in caplog.records]
    for video_id in targets:
        refused = [
            line
            for line in lines
            if line.startswith(f"skipping video {video_id}:") and "refused" in line
        ]
        assert len(refused) == 1, (video_id, lines)
        assert f"video {video_id!r}: refused: the id" in refused[0]
    assert "training: 1 videos usable, 6 skipped" in lines
    # The good video's clips are its own, not the escaped arrays' (mean 100).
    assert abs(float(np.mean(cache.clips[0]))) < 5


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return make_tiny_run(tmp_path_factory)


def test_serve_skips_counts_and_never_writes_escaping_ids(tiny_run, tmp_path, capsys):
    _, run_config, path, _ = tiny_run
    store = open_feature_store(run_config.data.features)
    good = serve.read_annotation_videos(run_config.data.annotations, "validation")[:2]
    folder = tmp_path / "data" / "features"
    (folder / "a").mkdir(parents=True)
    for video in good:
        np.save(folder / f"{video.video_id}.npy", store.load(video.video_id))
    steps = 38  # about 20 s at 15 fps, stride 8: valid for a 20 s video
    escaped = {
        "../../secret/zz": tmp_path / "secret" / "zz.npy",
        str(tmp_path / "outside" / "abs"): tmp_path / "outside" / "abs.npy",
        "a/b": folder / "a" / "b.npy",
    }
    for target in escaped.values():
        target.parent.mkdir(parents=True, exist_ok=True)
        np.save(target, np.ones((steps, 8), np.float32))
    bad_ids = [*escaped, "a\x00b"]
    videos = {video.video_id: ("validation", video.duration) for video in good}
    videos.update({video_id: ("validation", 20.0) for video_id in bad_ids})
    annotations = write_annotations(tmp_path / "gt.json", one_segment_each(videos))
    out = tmp_path / "out" / "detections.json"
    proposals_out = tmp_path / "out" / "proposals.json"
    status = serve.main(
        [
            *("--model", path, "--features", str(folder)),
            *("--annotations", str(annotations), "--out", str(out)),
            *("--proposals_out", str(proposals_out), "--no_progress"),
        ]
    )
    captured = capsys.readouterr()
    assert status == 0, captured.err
    good_ids = sorted(video.video_id for video in good)
    for written in (out, proposals_out):
        assert sorted(json.loads(written.read_text())["results"]) == good_ids
    assert sorted(os.listdir(tmp_path / "out")) == ["detections.json", "proposals.json"]
    for video_id in bad_ids:
        lines = [
            line
            for line in captured.err.splitlines()
            if f"video {video_id!r}: refused: the id" in line
        ]
        assert len(lines) == 1, (video_id, captured.err)
        assert lines[0].startswith(f"W skipping video {video_id}:")
    assert "served 2 of 6 videos, 4 skipped" in captured.out
