import json
import logging
import os
import time

import numpy as np
import pytest

from tal_keras.clips import HACS_TIMING, resample_to_clips
from tal_keras.data import benchmarks
from tal_keras.data.annotations import load_annotations
from tal_keras.data.features import find_usable_videos, open_feature_store

FEATURE_DIM = 16


def timing_file(path):
    """A tiny ActivityNet-style timing file: 2 classes, 6 training and 3
    validation videos, a testing video, a zero-length segment and one past
    the duration."""
    database = {}
    for index in range(9):
        label = "Class B" if index % 2 else "Class A"
        duration = 40.0 + 10 * index
        database[f"vid{index:02d}"] = {
            "subset": "training" if index < 6 else "validation",
            "duration": duration,
            "annotations": [
                {"label": label, "segment": [12.0, 22.0 + index]},
                {"label": label, "segment": [32.0, duration + 3.0]},
            ],
        }
    database["vid00"]["annotations"].append({"label": "Class A", "segment": [20, 20]})
    database["test00"] = {"subset": "testing", "duration": 30.0, "annotations": []}
    path.write_text(json.dumps({"database": database}))
    return str(path)


@pytest.fixture(scope="module")
def timing(tmp_path_factory):
    return timing_file(tmp_path_factory.mktemp("timing") / "timing.json")


def make(root, family, timing, **kwargs):
    return benchmarks.generate(
        root, family, timing_path=timing, feature_dim=FEATURE_DIM, **kwargs
    )


@pytest.mark.parametrize("family", benchmarks.FAMILIES)
@pytest.mark.parametrize("format", benchmarks.FORMATS)
def test_loads_with_the_project_loaders_without_warnings(
    tmp_path, timing, family, format, caplog
):
    parameters = make(tmp_path / "data", family, timing, noise="high", format=format)
    annotations_path, features_path, classes_path = benchmarks.dataset_paths(
        tmp_path / "data", format
    )
    with caplog.at_level(logging.INFO, logger="tal_keras"):
        annotations = load_annotations(annotations_path, category_file=classes_path)
        usable, skipped = find_usable_videos(
            annotations, open_feature_store(features_path), FEATURE_DIM
        )
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(usable) == len(annotations) == 9 and skipped == []
    assert annotations.class_names == ["Class A", "Class B"]
    assert [annotations[f"vid{i:02d}"].subset for i in range(9)] == ["training"] * 6 + [
        "validation"
    ] * 3
    # The zero-length segment is not written; the one past the end is clamped.
    assert parameters["dropped_segments"] == 1 and parameters["num_instances"] == 18
    video = annotations["vid03"]
    assert video.duration == 70.0
    np.testing.assert_allclose(video.segments, [[12.0, 25.0], [32.0, 70.0]])
    features = open_feature_store(features_path).load("vid03", FEATURE_DIM)
    assert features.dtype == np.float32
    assert features.shape == (HACS_TIMING.num_steps(70.0), FEATURE_DIM)
    assert parameters["noise_std"] == 2.0


def test_same_seed_same_bytes_other_seed_other_features(tmp_path, timing):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        make(tmp_path / name, "scene", timing, seed=seed)
    for name in ("annotations.json", "classes.txt", "benchmark.json"):
        assert (tmp_path / "a" / name).read_bytes() == (
            tmp_path / "b" / name
        ).read_bytes()
    files = sorted(os.listdir(tmp_path / "a" / "features"))
    assert files == [f"v_vid{i:02d}.npy" for i in range(9)]
    for name in files:
        first = (tmp_path / "a" / "features" / name).read_bytes()
        assert first == (tmp_path / "b" / "features" / name).read_bytes()
        assert first != (tmp_path / "c" / "features" / name).read_bytes()


def test_hdf5_is_deterministic(tmp_path, timing):
    for name in ("a", "b"):
        make(tmp_path / name, "boundary", timing, format="hdf5")
        time.sleep(1.1)  # HDF5 timestamps have whole seconds: none are kept
    assert (tmp_path / "a" / "features.h5").read_bytes() == (
        tmp_path / "b" / "features.h5"
    ).read_bytes()


def test_max_videos_samples_both_subsets(tmp_path, timing):
    parameters = make(tmp_path / "data", "boundary", timing, max_videos=6)
    assert (parameters["num_training"], parameters["num_validation"]) == (4, 2)


def noise_free(tmp_path, family, timing):
    """Noise-free features of vid08 (one instance at 12-30 s, one at 32-120 s)."""
    make(tmp_path / family, family, timing, noise=0.0)
    store = open_feature_store(str(tmp_path / family / "features"))
    features = store.load("vid08", FEATURE_DIM).astype(np.float64)
    return features, HACS_TIMING.centers(len(features))


def window_mean(features, centers, start, end):
    return features[(centers >= start) & (centers < end)].mean(axis=0)


def test_the_families_differ_in_the_cue_that_carries_the_action(tmp_path, timing):
    # vid08: instances at [12, 30) and [32, 120); the first's onset lies in
    # [12, 13.8), its body in [13.8, 28.2), its offset in [28.2, 30); the
    # first step (centre 1.07 s) is background (a look-alike in the 12 s gap
    # before the first instance starts after 1.2 s).
    def contrast(features, centers, window):
        background = features[centers < 1.1].mean(axis=0)
        return np.linalg.norm(window_mean(features, centers, *window) - background)

    onset, body, offset = (12.0, 13.7), (15.0, 27.0), (28.3, 30.0)
    boundary, centers = noise_free(tmp_path, "boundary", timing)
    assert contrast(boundary, centers, onset) > 1.5
    assert contrast(boundary, centers, offset) > 1.5
    assert contrast(boundary, centers, body) < 1e-6  # bodies are background

    lookalike, centers = noise_free(tmp_path, "lookalike", timing)
    body_mean = window_mean(lookalike, centers, *body)
    # The body is visible and uniform: onset and offset look like the body.
    assert contrast(lookalike, centers, body) > 1.5
    np.testing.assert_allclose(window_mean(lookalike, centers, *onset), body_mean)
    np.testing.assert_allclose(window_mean(lookalike, centers, *offset), body_mean)

    # Scene: the per-video offset dwarfs the action; two videos differ most
    # in their offsets, while the boundary family's videos share a background.
    scene, centers = noise_free(tmp_path, "scene", timing)
    other = open_feature_store(str(tmp_path / "scene" / "features")).load("vid07")
    action = np.linalg.norm(
        window_mean(scene, centers, *onset) - window_mean(scene, centers, 0, 12)
    )
    offset_gap = np.linalg.norm(scene[:10].mean(0) - other[:10].mean(0))
    assert offset_gap > 2 * action
    boundary_other = open_feature_store(str(tmp_path / "boundary" / "features")).load(
        "vid07"
    )
    assert np.linalg.norm(boundary[:5].mean(0) - boundary_other[:5].mean(0)) < 5


def test_lookalikes_share_the_body_direction_at_cosine_0_6(tmp_path, timing):
    features, centers = noise_free(tmp_path, "lookalike", timing)
    # vid08: a gap of 12 s before the first instance, where a look-alike
    # lies with probability 0.7; compare its steps with the body.
    body = window_mean(features, centers, 15.0, 27.0)
    background = features[centers < 1.1].mean(axis=0)
    differences = features[centers < 12.0] - background
    strong = differences[np.linalg.norm(differences, axis=1) > 1.0]
    assert len(strong) > 0
    for step in strong:
        cosine = step @ (body - background)
        cosine /= np.linalg.norm(step) * np.linalg.norm(body - background)
        assert cosine == pytest.approx(benchmarks.LOOKALIKE_COSINE, abs=1e-6)


def test_clips_of_a_benchmark_video_resample(tmp_path, timing):
    make(tmp_path / "data", "lookalike", timing)
    features = open_feature_store(str(tmp_path / "data" / "features")).load("vid01")
    clips = resample_to_clips(features, 50.0, 8, HACS_TIMING)
    assert clips.shape == (8, FEATURE_DIM) and np.isfinite(clips).all()


def test_trim_keeps_whole_videos_of_the_chosen_classes(tmp_path, timing):
    out = tmp_path / "trimmed.json"
    assert benchmarks.trim(timing, out, num_classes=1) == 5
    database = json.loads(out.read_text())["database"]
    assert {a["label"] for v in database.values() for a in v["annotations"]} == {
        "Class A"
    }
    assert "test00" not in database


def test_shipped_timing_file():
    database = benchmarks.read_timing(benchmarks.DEFAULT_TIMING)
    subsets = [entry["subset"] for entry in database.values()]
    assert (subsets.count("training"), subsets.count("validation")) == (969, 481)
    assert len(benchmarks.choose_classes(database, 20)) == 20


def test_cli_refuses_an_existing_folder(tmp_path, timing, capsys):
    args = ["generate", "--family", "boundary", "--out", str(tmp_path / "d")]
    args += ["--timing", timing, "--feature_dim", "8"]
    assert benchmarks.main(args) == 0
    assert benchmarks.main(args) == 2
    assert "exists" in capsys.readouterr().err
    assert benchmarks.main(args + ["--overwrite"]) == 0
