import json
import logging
import os
import pathlib
import re

import numpy as np
import pytest

from tal_keras.clips import FeatureTiming, resample_to_clips
from tal_keras.data import synthetic
from tal_keras.data.annotations import load_annotations
from tal_keras.data.features import (
    find_usable_videos,
    open_feature_store,
)

SMALL = {"num_videos": 20, "num_classes": 4, "feature_dim": 32, "seed": 3}


@pytest.fixture(scope="module", params=["npy", "hdf5"])
def dataset(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"synthetic_{request.param}") / "data"
    return synthetic.generate(root, format=request.param, **SMALL)


def load_back(dataset):
    annotations = load_annotations(
        dataset.annotations_path, category_file=dataset.classes_path
    )
    store = open_feature_store(dataset.features_path)
    return annotations, store


def test_loads_back_every_video_without_warnings(dataset, caplog):
    with caplog.at_level(logging.INFO, logger="tal_keras"):
        annotations, store = load_back(dataset)
        usable, skipped = find_usable_videos(annotations, store, SMALL["feature_dim"])
    assert len(annotations) == 20 and len(usable) == 20 and skipped == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert annotations.class_names == synthetic.class_names(4)
    assert annotations.dropped_segments == 0


def test_on_disk_layout(dataset):
    root = pathlib.Path(dataset.root)
    assert sorted(os.listdir(root)) == sorted(
        [
            "annotations.json",
            "classes.txt",
            "synthetic.json",
            os.path.basename(dataset.features_path),
        ]
    )
    database = json.loads((root / "annotations.json").read_text())["database"]
    assert not any(video_id.startswith("v_") for video_id in database)
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{11}", video_id) for video_id in database)
    # HACS style: some durations are strings.
    assert {type(entry["duration"]) for entry in database.values()} == {str, float}
    if dataset.parameters["format"] == "npy":
        names = os.listdir(dataset.features_path)
    else:
        import h5py

        with h5py.File(dataset.features_path, "r") as handle:
            names = list(handle)
    prefixed = [name for name in names if name.startswith("v_")]
    assert 0 < len(prefixed) < len(names) == 20


def test_subsets_segments_and_feature_lengths(dataset):
    annotations, store = load_back(dataset)
    subsets = [video.subset for video in annotations]
    assert (
        subsets.count("training"),
        subsets.count("validation"),
        subsets.count("testing"),
    ) == (14, 4, 2)
    timing = FeatureTiming()
    for video in annotations:
        assert 20.0 <= video.duration <= 240.0
        segments = video.segments
        if video.subset == "testing":
            assert segments.shape == (0, 2)
        else:
            assert 1 <= len(segments) <= 5
            assert np.all(segments[:, 0] < segments[:, 1])
            assert segments.min() >= 0 and segments.max() <= video.duration
            assert np.all(segments[1:, 0] >= segments[:-1, 1])  # sorted, no overlap
            assert len(set(video.labels.tolist())) == 1  # one class per video
        features = store.load(video.video_id, SMALL["feature_dim"])
        assert features.shape[0] == timing.num_steps(video.duration)


def test_deterministic_for_a_seed(tmp_path, dataset):
    fmt = dataset.parameters["format"]
    again = synthetic.generate(tmp_path / "again", format=fmt, **SMALL)
    other = synthetic.generate(tmp_path / "other", format=fmt, **{**SMALL, "seed": 4})
    first_json = pathlib.Path(dataset.annotations_path).read_text()
    assert pathlib.Path(again.annotations_path).read_text() == first_json
    assert pathlib.Path(other.annotations_path).read_text() != first_json
    annotations, store = load_back(dataset)
    _, store_again = load_back(again)
    for video_id in annotations.video_ids:
        np.testing.assert_array_equal(store.load(video_id), store_again.load(video_id))


def test_npy_and_hdf5_hold_the_same_data(tmp_path):
    npy = synthetic.generate(tmp_path / "npy", format="npy", **SMALL)
    hdf5 = synthetic.generate(tmp_path / "hdf5", format="hdf5", **SMALL)
    annotations, npy_store = load_back(npy)
    _, hdf5_store = load_back(hdf5)
    for video_id in annotations.video_ids[:5]:
        np.testing.assert_array_equal(
            npy_store.load(video_id), hdf5_store.load(video_id)
        )


def test_class_pattern_is_visible_in_clip_means(tmp_path):
    params = {"num_videos": 30, "num_classes": 5, "feature_dim": 64, "seed": 1}
    data = synthetic.generate(tmp_path / "signal", **params)
    annotations, store = load_back(data)
    patterns = synthetic.class_patterns(5, 64, seed=1)  # [C, 3, D]
    num_clips, hits, total, onset_gain = 64, 0, 0, []
    for video in annotations:
        if not len(video.segments):
            continue
        clips = resample_to_clips(store.load(video.video_id), video.duration, num_clips)
        edges = np.arange(num_clips + 1) * video.duration / num_clips
        for start, end in video.segments:
            phase = min(max(0.1 * (end - start), 1.5), (end - start) / 4)
            # Clips wholly inside the body phase: nearest body pattern = the label.
            body = (edges[:-1] >= start + phase) & (edges[1:] <= end - phase)
            scores = clips[body] @ patterns[:, 1].T
            hits += np.count_nonzero(scores.argmax(axis=1) == video.labels[0])
            total += np.count_nonzero(body)
            onset = (edges[:-1] >= start) & (edges[1:] <= start + phase)
            if onset.any() and body.any():
                onset_pattern = patterns[video.labels[0], 0]
                onset_gain.append(
                    (clips[onset] @ onset_pattern).mean()
                    - (clips[body] @ onset_pattern).mean()
                )
    assert total > 200 and hits / total > 0.9
    # The onset pattern marks the start: far stronger there than in the body.
    assert len(onset_gain) > 5 and np.mean(onset_gain) > 0.3 * 64


def test_ensure_synthetic_generates_once(tmp_path, monkeypatch):
    root = tmp_path / "cached"
    first = synthetic.ensure_synthetic(root, **SMALL)
    stamp = os.stat(first.annotations_path).st_mtime_ns
    calls = []
    monkeypatch.setattr(synthetic, "_write", lambda *args: calls.append(args))
    second = synthetic.ensure_synthetic(root, **SMALL)
    assert calls == [] and second == first
    assert os.stat(first.annotations_path).st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match="other parameters"):
        synthetic.ensure_synthetic(root, **{**SMALL, "seed": 9})


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    def interrupted(root, parameters):
        pathlib.Path(root, "annotations.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "_write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        synthetic.ensure_synthetic(tmp_path / "partial", **SMALL)
    assert os.listdir(tmp_path) == []  # neither the folder nor its temporary


def test_generate_refuses_or_replaces_an_existing_folder(tmp_path):
    root = tmp_path / "taken"
    root.mkdir()
    (root / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="not empty"):
        synthetic.generate(root, **SMALL)
    with pytest.raises(FileExistsError, match="other files"):
        synthetic.ensure_synthetic(root, **SMALL)
    assert (root / "mine.txt").read_text() == "keep"
    synthetic.generate(root, overwrite=True, **SMALL)
    assert not (root / "mine.txt").exists() and (root / "annotations.json").exists()
    assert sorted(os.listdir(tmp_path)) == ["taken"]


def test_command_line(tmp_path, capsys):
    argv = [
        "--out",
        str(tmp_path / "cli"),
        "--num_videos",
        "6",
        "--num_classes",
        "2",
        "--feature_dim",
        "8",
        "--format",
        "hdf5",
        "--seed",
        "5",
    ]
    assert synthetic.main(argv) == 0
    assert (tmp_path / "cli" / "features.h5").is_file()
    assert synthetic.main(argv) == 0  # already there: kept
    assert synthetic.main(argv[:-1] + ["6"]) == 2
    assert "other parameters" in capsys.readouterr().err
    assert synthetic.main(argv[:-1] + ["6", "--overwrite"]) == 0
    parameters = json.loads((tmp_path / "cli" / "synthetic.json").read_text())
    assert parameters["seed"] == 6 and parameters["format"] == "hdf5"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"format": "zarr"}, "format must be"),
        ({"num_videos": 0}, "num_videos"),
        ({"seed": -1}, "seed"),
    ],
)
def test_invalid_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        synthetic.generate(tmp_path / "x", **{**SMALL, **kwargs})


def test_docs_repeat_the_module_docstring():
    docs = pathlib.Path(__file__).resolve().parents[1] / "docs" / "synthetic.md"
    text = " ".join(docs.read_text().split())
    paragraphs = synthetic.__doc__.strip().split("\n\n")
    for paragraph in paragraphs[:-1]:  # the usage line is formatted as code there
        assert " ".join(paragraph.split()) in text
