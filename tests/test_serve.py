"""export.detector and export.serve: the same detections as the Keras path,
serving with TensorFlow blocked, bad videos skipped with their reasons,
durations, fusion, providers and metadata."""

import json
import os

import numpy as np
import pytest
from python_process import run_python
from test_export import make_tiny_run

from export import compare, metadata, serve
from export.detector import Detector, session_options
from tal_keras import evaluation, inference, run
from tal_keras.data.features import open_feature_store

# Runs `python -m export.serve ARGS` with every import of TensorFlow, Keras,
# tf2onnx or JAX failing, and reports each attempt on stderr.
BLOCKED_SERVE = """
import importlib.abc, runpy, sys
BLOCKED = ("tensorflow", "keras", "tf2onnx", "jax", "jaxlib")
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            print(f"BLOCKED IMPORT {name}", file=sys.stderr)
            raise ImportError(f"{name} is blocked: serving must not need it")
sys.meta_path.insert(0, Block())
sys.argv = ["export.serve", *sys.argv[1:]]
runpy.run_module("export.serve", run_name="__main__", alter_sys=True)
"""


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    return make_tiny_run(tmp_path_factory)


@pytest.fixture(scope="session")
def keras_path(tiny_run):
    """evaluate.py's results on the tiny run's validation subset: (proposals,
    detections, ground truth)."""
    import keras

    _, run_config, _, _ = tiny_run
    annotations, cache = run.open_subset(run_config, "validation")
    networks = [
        keras.saving.load_model(
            os.path.join(run_config.workdir, name, "best.keras"), compile=False
        )
        for name in ("proposal", "classifier")
    ]
    lattice = run_config.model.lattice
    overlap = inference.predict_scores(networks[0], cache, 4)
    classes = inference.predict_scores(networks[1], cache, 4)
    class_names = run.class_names_of(run_config.data)
    return (
        inference.proposal_results(run_config, lattice, cache, overlap),
        inference.detection_results(
            run_config, lattice, cache, overlap, classes, class_names
        ),
        evaluation.ground_truth_of(annotations),
    )


def served(tiny_run, **kwargs):
    _, run_config, path, _ = tiny_run
    videos = serve.videos_to_serve(run_config.data.annotations, "validation")
    store = open_feature_store(run_config.data.features)
    return serve.serve(Detector(path), store, videos, progress=False, **kwargs)


def test_detections_and_metrics_equal_the_keras_path(tiny_run, keras_path):
    proposals, detections, ground_truth = keras_path
    result = served(tiny_run, batch_size=3)
    assert not result.skipped and result.num_served == len(detections) > 0
    for expected, found in (
        (detections, result.detections),
        (proposals, result.proposals),
    ):
        report = compare.compare_results(expected, found, score_tolerance=1e-5)
        assert report["problems"] == []
        assert report["entries"] == sum(len(entries) for entries in expected.values())
    assert evaluation.score_detections(
        ground_truth, result.detections
    ) == evaluation.score_detections(ground_truth, detections)
    assert evaluation.score_proposals(
        ground_truth, result.proposals
    ) == evaluation.score_proposals(ground_truth, proposals)


def test_compare_sees_a_changed_label_segment_or_score(keras_path):
    _, detections, _ = keras_path
    video_id = min(detections)
    for change in (
        {"label": "Action 999"},
        {"segment": [0.0, 1.0]},
        {"score": detections[video_id][0]["score"] + 1e-4},
    ):
        changed = {**detections, video_id: [{**detections[video_id][0], **change}]}
        changed[video_id] += detections[video_id][1:]
        assert compare.compare_results(detections, changed)["problems"]


def write_bad_inputs(run_config, folder):
    """A copy of the validation features and annotations plus one video per
    way of being unservable. Returns (annotations path, features dir,
    {bad video id: words its reason must contain})."""
    with open(run_config.data.annotations) as stream:
        database = {
            video_id: entry
            for video_id, entry in json.load(stream)["database"].items()
            if entry["subset"] == "validation"
        }
    store = open_feature_store(run_config.data.features)
    features_dir = folder / "features"
    features_dir.mkdir()
    for video_id in database:
        np.save(features_dir / f"{video_id}.npy", store.load(video_id))
    good = np.ones((40, 8), np.float32)
    bad = {
        "bad_width": ("feature width 8", np.ones((40, 5), np.float32)),
        "bad_nan": ("NaN", np.where(np.arange(8) == 3, np.nan, good)),
        "bad_empty": ("at least one step", np.ones((0, 8), np.float32)),
        "bad_unreadable": ("cannot read", None),
        "bad_missing": ("no features found", False),
        "bad_duration": ("no duration", good),
    }
    for video_id, (_, features) in bad.items():
        path = features_dir / f"{video_id}.npy"
        if features is None:
            path.write_bytes(b"not a numpy file")
        elif features is not False:
            np.save(path, features)
        database[video_id] = {
            "subset": "validation",
            "duration": 30.0,
            "annotations": [],
        }
    database["bad_duration"]["duration"] = "unknown"
    annotations = folder / "annotations.json"
    annotations.write_text(json.dumps({"database": database}))
    return str(annotations), str(features_dir), {k: v[0] for k, v in bad.items()}


def test_serve_without_tensorflow_skips_bad_videos(tiny_run, keras_path, tmp_path):
    _, run_config, path, _ = tiny_run
    annotations, features, reasons = write_bad_inputs(run_config, tmp_path)
    out, proposals_out = tmp_path / "detections.json", tmp_path / "proposals.json"
    command = [
        *("-c", BLOCKED_SERVE),
        *("--model", path, "--features", features, "--annotations", annotations),
        *("--subset", "validation", "--batch_size", "4", "--out", out),
        *("--proposals_out", proposals_out),
    ]
    process = run_python(command, timeout=120)
    assert "BLOCKED IMPORT" not in process.stderr
    _, detections, _ = keras_path
    total = len(detections) + len(reasons)
    assert (
        f"served {len(detections)} of {total} videos, {len(reasons)} skipped"
        in process.stdout
    )
    for video_id, words in reasons.items():
        lines = [
            line
            for line in process.stderr.splitlines()
            if f"skipping video {video_id}:" in line
        ]
        assert len(lines) == 1 and words in lines[0], (video_id, process.stderr)
    for path, expected in ((out, detections), (proposals_out, keras_path[0])):
        with open(path) as stream:
            results = json.load(stream)["results"]
        assert compare.compare_results(expected, results)["problems"] == []


def test_serve_from_a_durations_csv(tiny_run, tmp_path, capsys):
    _, run_config, path, _ = tiny_run
    videos = serve.read_annotation_videos(run_config.data.annotations, "training")
    rows = ["video_id,duration"]
    rows += [f"{video.video_id},{video.duration}" for video in videos[:2]]
    rows.append(f"{videos[2].video_id},-1")
    csv_path = tmp_path / "durations.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    out = tmp_path / "detections.json"
    status = serve.main(
        [
            *("--model", path, "--features", run_config.data.features),
            *("--durations", str(csv_path), "--out", str(out), "--no_progress"),
        ]
    )
    assert status == 0
    with open(out) as stream:
        results = json.load(stream)["results"]
    assert sorted(results) == sorted(video.video_id for video in videos[:2])
    assert "served 2 of 3 videos, 1 skipped" in capsys.readouterr().out


def test_nothing_is_written_when_no_video_can_be_served(tiny_run, tmp_path):
    _, run_config, path, _ = tiny_run
    annotations = tmp_path / "annotations.json"
    annotations.write_text(
        json.dumps({"database": {"ghost": {"subset": "validation", "duration": 9}}})
    )
    out = tmp_path / "detections.json"
    status = serve.main(
        [
            *("--model", path, "--features", run_config.data.features),
            *("--annotations", str(annotations), "--out", str(out), "--no_progress"),
        ]
    )
    assert status == 1 and not out.exists()
    assert (
        serve.main(
            [
                *("--model", str(annotations), "--features", run_config.data.features),
                *("--annotations", str(annotations), "--out", str(out)),
            ]
        )
        == 2
    )


def test_video_labels_fusion_and_overrides(tiny_run):
    _, run_config, path, _ = tiny_run
    detector = Detector(path, postprocessing={"detections_per_video": 3})
    store = open_feature_store(run_config.data.features)
    video = serve.read_annotation_videos(run_config.data.annotations, "validation")[0]
    clips = detector.clip_features(store.load(video.video_id), video.duration)
    scores = detector.predict(clips[None])
    overlap, classes = scores["overlap_scores"][0], scores["class_scores"][0]
    plain = detector.detections(overlap, classes, video.duration)
    assert len(plain) == 3
    label = detector.class_names[1]
    fused = detector.detections(overlap, classes, video.duration, [(label, 0.5)])
    assert {entry["label"] for entry in fused} == {label}
    best = (overlap * classes[:, 1]).max() * 0.5
    assert fused[0]["score"] == pytest.approx(best, rel=1e-6)
    assert detector(store.load(video.video_id), video.duration) == plain


def test_provider_probe_is_quiet_and_falls_back_to_cpu(tiny_run, monkeypatch, capfd):
    import onnxruntime as ort

    _, _, path, _ = tiny_run
    assert Detector(path, providers=["CPUExecutionProvider"]).provider == (
        "CPUExecutionProvider"
    )
    capfd.readouterr()
    # As onnxruntime-gpu does where CUDA is missing: listed, but it cannot load.
    available = ort.get_available_providers()
    monkeypatch.setattr(
        ort, "get_available_providers", lambda: ["CUDAExecutionProvider", *available]
    )
    detector = Detector(path)
    assert detector.provider == "CPUExecutionProvider"
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""


def test_metadata_round_trip_and_foreign_files(tiny_run):
    _, run_config, path, _ = tiny_run
    properties = Detector(path).session.get_modelmeta().custom_metadata_map
    spec = metadata.parse_metadata(properties, path)
    assert spec.num_clips == 16 and spec.scale_layers == (4, 2, 2)
    assert spec.postprocessing == metadata.Postprocessing.from_eval_config(
        run_config.eval
    )
    assert spec.timing.step_seconds == pytest.approx(8 / 15)
    with pytest.raises(ValueError, match="not exported by export.onnx_export"):
        metadata.parse_metadata({}, "other.onnx")
    broken = {**properties, "scale_layers": "[17]"}
    with pytest.raises(ValueError, match="malformed metadata"):
        metadata.parse_metadata(broken, "broken.onnx")
    with pytest.raises(ValueError, match="missing"):
        metadata.parse_metadata(
            {key: value for key, value in properties.items() if key != "class_names"},
            "partial.onnx",
        )


def test_serving_sessions_neither_spin_nor_plan_buffer_reuse():
    options = session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert not options.enable_mem_reuse
