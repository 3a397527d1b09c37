"""Fault suite, serving and export: bad videos in a serve run (skipped and
counted, the good ones served), implausible durations, outputs that cannot
be written (refused before any work), and the file modes of outputs."""

import errno
import json
import os
import signal

import numpy as np
import pytest
from test_export import make_tiny_run

from export import onnx_export, serve
from export.detector import Detector
from tal_keras import detections
from tal_keras.atomic import check_writable, write_json_atomic
from tal_keras.data.features import open_feature_store
from tal_keras.errors import DataError, OutputError


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    return make_tiny_run(tmp_path_factory)


def bad_corpus(run_config, folder):
    """Features of three good validation videos plus one bad video of each
    kind; returns (features dir, durations CSV, good ids, {bad id: reason})."""
    store = open_feature_store(run_config.data.features)
    videos = serve.read_annotation_videos(run_config.data.annotations, "validation")
    good = videos[:3]
    directory = folder / "features"
    directory.mkdir()
    for video in good:
        np.save(directory / f"{video.video_id}.npy", store.load(video.video_id))
    steps = 38  # about 20 s of features at 15 fps, stride 8
    huge = np.ones((steps, 8), np.float32)
    huge[3, 1] = 3e38
    np.save(directory / "huge.npy", huge)
    header = {"descr": "<f4", "fortran_order": False, "shape": (10**9, 8)}
    with open(directory / "lying.npy", "wb") as stream:
        np.lib.format.write_array_header_1_0(stream, header)
        stream.write(b"\0" * 64)
    np.save(directory / "one_step.npy", np.ones((1, 8), np.float32))
    np.save(directory / "endless.npy", np.ones((steps, 8), np.float32))
    np.save(directory / "longish.npy", np.ones((steps, 8), np.float32))
    rows = [f"{video.video_id},{video.duration}" for video in good]
    rows += ["huge,20", "lying,20", "one_step,90", "endless,1e9", "longish,13"]
    durations = folder / "durations.csv"
    durations.write_text("\n".join(["video_id,duration", *rows]) + "\n")
    reasons = {
        "huge": "expected feature values within +-1e+06",
        "lying": "header claims shape (1000000000, 8)",
        "one_step": "more than 2 times apart",
        "endless": "more than 2 times apart",
    }
    return directory, durations, [video.video_id for video in good], reasons


def test_serve_skips_and_counts_bad_videos_and_serves_the_rest(
    tiny_run, tmp_path, capsys
):
    _, run_config, path, _ = tiny_run
    directory, durations, good, reasons = bad_corpus(run_config, tmp_path)
    out = tmp_path / "detections.json"
    status = serve.main(
        [
            *("--model", path, "--features", str(directory)),
            *("--durations", str(durations), "--out", str(out), "--no_progress"),
        ]
    )
    captured = capsys.readouterr()
    assert status == 0, captured.err
    results = json.loads(out.read_text())["results"]
    assert sorted(results) == sorted([*good, "longish"])
    for video_id, words in reasons.items():
        lines = [
            line
            for line in captured.err.splitlines()
            if f"skipping video {video_id}:" in line
        ]
        assert len(lines) == 1, (video_id, captured.err)
        assert f"{video_id}.npy: video {video_id}" in lines[0] and words in lines[0]
    warned = [line for line in captured.err.splitlines() if "longish.npy" in line]
    assert len(warned) == 1 and "more than 10% apart, used anyway" in warned[0]
    assert (
        "served 4 of 8 videos, 4 skipped (first: huge: " in captured.out  # CSV order
    )
    assert "1 with a feature length that does not fit the duration" in captured.out


def test_detector_refuses_an_implausible_duration(tiny_run):
    path = tiny_run[2]
    detector = Detector(path)
    features = np.ones((38, 8), np.float32)
    with pytest.raises(DataError, match="video clip: 38 feature steps cover 20.3 s"):
        detector.clip_features(features, 1e12, "clip")
    with pytest.raises(DataError, match="more than 2 times apart"):
        detector(features, 1e12)
    with pytest.raises(DataError, match="feature values within"):
        detector(np.full((38, 8), 1e20, np.float32), 20.0)
    warnings = []
    detector.clip_features(features, 14.0, "clip", length_warnings=warnings)
    assert [video for video, _ in warnings] == ["clip"]


@pytest.fixture
def under_a_file(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    return blocker / "out" / "result.json"


def test_serve_refuses_an_unwritable_output_before_any_work(
    tiny_run, tmp_path, under_a_file, capsys, monkeypatch
):
    _, run_config, path, _ = tiny_run

    def no_work(*args, **kwargs):
        raise AssertionError("served although the output cannot be written")

    monkeypatch.setattr(serve, "serve", no_work)
    for outputs in (
        ["--out", str(under_a_file)],
        ["--out", str(tmp_path / "ok.json"), "--proposals_out", str(tmp_path)],
    ):
        status = serve.main(
            [
                *("--model", path, "--features", run_config.data.features),
                *("--annotations", run_config.data.annotations, *outputs),
            ]
        )
        assert status == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"error: {under_a_file}: cannot write the detections in")
    assert (
        err[1] == f"error: {tmp_path}: cannot write the proposals: it is a directory."
    )
    assert not (tmp_path / "ok.json").exists()


def test_export_refuses_an_unwritable_output_before_any_work(
    tiny_run, under_a_file, capsys, monkeypatch
):
    workdir = tiny_run[0]

    def no_work(*args, **kwargs):
        raise AssertionError("exported although the output cannot be written")

    monkeypatch.setattr(onnx_export, "load_run", no_work)
    status = onnx_export.main(["--workdir", workdir, "--out", str(under_a_file)])
    assert status == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {under_a_file}: cannot write the ONNX file in")
    assert "\n" not in err


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_outputs_follow_the_umask(tmp_path, mask, mode):
    previous = os.umask(mask)
    try:
        write_json_atomic(tmp_path / "out.json", {"a": 1})
    finally:
        os.umask(previous)
    assert (tmp_path / "out.json").stat().st_mode & 0o777 == mode


def test_check_writable_names_the_path_and_the_reason(tmp_path, under_a_file):
    check_writable(tmp_path / "new" / "file.json")
    assert (tmp_path / "new").is_dir() and os.listdir(tmp_path / "new") == []
    with pytest.raises(OutputError) as error:
        check_writable(under_a_file)
    blocker = under_a_file.parents[1]
    assert str(error.value).endswith(f": {blocker} is a file, not a folder.")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.access(locked, os.W_OK):
        pytest.skip("running as root: permissions are not enforced")
    with pytest.raises(OutputError, match="locked/x.json: cannot write the output in"):
        check_writable(locked / "x.json")


class FullDisk:
    """A text file on a full disk: every write fails as write(2) does."""

    def write(self, text):
        raise OSError(errno.ENOSPC, "No space left on device")


def serve_argv(run_config, path, out, *extra):
    return [
        *("--model", path, "--features", run_config.data.features),
        *("--annotations", run_config.data.annotations, "--no_progress"),
        *("--out", str(out), *extra),
    ]


def test_serve_writes_its_outputs_all_or_none(tiny_run, tmp_path, capsys, monkeypatch):
    _, run_config, path, _ = tiny_run
    out, proposals_out = tmp_path / "detections.json", tmp_path / "proposals.json"
    out.write_text("old detections")
    real_add = serve.SubmissionStream.add

    def full_after_one_video(stream, video_id, entries):
        if stream.path == str(proposals_out) and stream.num_videos == 1:
            stream.stream = FullDisk()
        return real_add(stream, video_id, entries)

    monkeypatch.setattr(serve.SubmissionStream, "add", full_after_one_video)
    argv = serve_argv(run_config, path, out, "--proposals_out", str(proposals_out))
    assert serve.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (
        f"error: {proposals_out}: cannot write it: No space left on device; "
        "nothing written."
    )
    assert out.read_text() == "old detections" and not proposals_out.exists()
    assert sorted(os.listdir(tmp_path)) == ["detections.json"]

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(serve, "serve", interrupted)
    assert serve.main(argv) == 130
    assert capsys.readouterr().err.strip().endswith("interrupted: nothing written.")


def test_serve_streams_each_video_to_its_files(tiny_run, tmp_path, monkeypatch):
    # Results are written as each batch is done (nothing kept for the end),
    # and the files are the text write_submission gives the same results.
    _, run_config, path, _ = tiny_run
    out, proposals_out = tmp_path / "detections.json", tmp_path / "proposals.json"
    real_add = serve.SubmissionStream.add
    written_before = []

    def recording_add(stream, video_id, entries):
        stream.stream.flush()
        written_before.append((stream.path, os.path.getsize(stream.stream.name)))
        return real_add(stream, video_id, entries)

    monkeypatch.setattr(serve.SubmissionStream, "add", recording_add)
    argv = serve_argv(
        run_config, path, out, "--proposals_out", str(proposals_out), "--batch_size=2"
    )
    assert serve.main(argv) == 0
    detections_sizes = [size for name, size in written_before if name == str(out)]
    assert len(detections_sizes) == 6  # one call per video, 3 batches
    assert detections_sizes == sorted(set(detections_sizes))  # grows per video
    result = serve.serve(
        Detector(path),
        open_feature_store(run_config.data.features),
        serve.videos_to_serve(run_config.data.annotations, "validation"),
        progress=False,
    )
    for target, results in (
        (out, result.detections),
        (proposals_out, result.proposals),
    ):
        expected = tmp_path / "expected.json"
        detections.write_submission(expected, results)
        assert target.read_text() == expected.read_text()


def test_serve_ends_on_sigterm_as_on_ctrl_c(tiny_run, tmp_path, capsys, monkeypatch):
    _, run_config, path, _ = tiny_run
    out = tmp_path / "detections.json"
    real_add = serve.SubmissionStream.add

    def terminated_after_one_video(stream, video_id, entries):
        if stream.num_videos == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_add(stream, video_id, entries)

    monkeypatch.setattr(serve.SubmissionStream, "add", terminated_after_one_video)
    previous = signal.getsignal(signal.SIGTERM)
    assert serve.main(serve_argv(run_config, path, out)) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "interrupted: nothing written."
    )
    assert os.listdir(tmp_path) == []
    assert signal.getsignal(signal.SIGTERM) == previous


@pytest.mark.parametrize("first_row", ["ID,abc", "ID,nan", "ID,-3"])
def test_durations_csv_first_row_is_a_video_unless_it_is_the_header(
    tiny_run, tmp_path, capsys, first_row
):
    _, run_config, path, _ = tiny_run
    video = serve.read_annotation_videos(run_config.data.annotations, "training")[0]
    durations = tmp_path / "durations.csv"
    durations.write_text(f"{first_row}\n{video.video_id},{video.duration}\n")
    out = tmp_path / "detections.json"
    argv = [
        *("--model", path, "--features", run_config.data.features),
        *("--durations", str(durations), "--out", str(out), "--no_progress"),
    ]
    assert serve.main(argv) == 0
    captured = capsys.readouterr()
    assert "served 1 of 2 videos, 1 skipped (first: ID: no duration: " in captured.out
    value = first_row.split(",")[1]
    lines = [line for line in captured.err.splitlines() if "skipping video ID" in line]
    expected = (
        f"W skipping video ID: no duration: {durations}: line 1: duration "
        f"{value!r} is not a positive number of seconds"
    )
    assert lines == [expected]
    assert list(json.loads(out.read_text())["results"]) == [video.video_id]


@pytest.mark.parametrize("header", ["video_id,duration", "Video_ID, Duration"])
def test_durations_csv_header_is_only_video_id_duration(tmp_path, header):
    durations = tmp_path / "durations.csv"
    durations.write_text(f"{header}\na,12.5\nb,x\n")
    videos = serve.read_durations_csv(durations)
    assert list(videos) == ["a", "b"]
    assert videos["a"].duration == 12.5 and videos["b"].problem.endswith(
        f"{durations}: line 3: duration 'x' is not a positive number of seconds"
    )


def test_detector_refuses_features_it_cannot_score(tiny_run):
    detector = Detector(tiny_run[2])
    words = np.full((38, 8), "x")
    with pytest.raises(
        DataError, match=r"video clip: expected numeric features, found dtype <U1"
    ):
        detector.clip_features(words, 20.0, "clip")
    with pytest.raises(
        DataError, match="expected numeric features, found dtype object"
    ):
        detector(np.array([[1.0, "a"]] * 38, dtype=object), 20.0)
    clips = np.ones((3, 16, 8), np.float32)
    clips[1, 4, 2] = np.nan
    with pytest.raises(DataError, match=r"rows \[1\] of 3 hold NaN or inf"):
        detector.predict(clips)
    scores = detector.predict(clips[[0, 2]])
    assert all(np.isfinite(value).all() for value in scores.values())
    overlap, classes = scores["overlap_scores"][0], scores["class_scores"][0]
    label = detector.class_names[0]
    for labels, words in (
        ([(label, "x")], f"video v1: video label {label!r} has score 'x'"),
        ({label: float("nan")}, "has score nan; expected a finite number"),
        ([(label, True)], "has score True"),
        (["Archery"], "expected video labels [(label, score), ...]"),
        ([("nothing", 0.5)], "video v1: video label 'nothing' is not one of the 4"),
    ):
        with pytest.raises(DataError) as error:
            detector.detections(overlap, classes, 20.0, labels, video_id="v1")
        assert words in str(error.value)
    fused = detector.detections(overlap, classes, 20.0, [(label, np.float32(0.5))])
    assert {entry["label"] for entry in fused} == {label}


def test_detector_refuses_a_graph_whose_input_is_not_its_metadata(tiny_run, tmp_path):
    import onnx

    model = onnx.load(tiny_run[2])
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 5
    changed = tmp_path / "changed.onnx"
    onnx.save(model, changed)
    with pytest.raises(ValueError) as error:
        Detector(changed)
    message = str(error.value)
    assert message.startswith(f"{changed}: the graph's input 'clip_features' has")
    assert "['batch', 16, 5], its metadata says ['batch', 16, 8]" in message


def test_export_ctrl_c_and_sigterm_are_one_line(
    tiny_run, tmp_path, capsys, monkeypatch
):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)

    out = tmp_path / "model.onnx"
    for stop in (interrupted, terminated):
        monkeypatch.setattr(onnx_export, "load_run", stop)
        assert onnx_export.main(["--workdir", tiny_run[0], "--out", str(out)]) == 130
        assert capsys.readouterr().err.strip() == "interrupted: nothing written."
        assert not out.exists()


def test_serve_into_a_run_folder_in_use_is_refused(tiny_run, tmp_path, capsys):
    import fcntl

    _, run_config, path, _ = tiny_run
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text("{}")
    out = workdir / "served" / "detections.json"
    with open(workdir / ".lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as train.py holds it
        held.write("pid 4242 on host since then\n")
        held.flush()
        assert serve.main(serve_argv(run_config, path, out)) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: {workdir} is in use by pid 4242 on host")
    assert err.endswith("; nothing written.")
    assert sorted(os.listdir(workdir)) == [".lock", "config.json", "served"]
    assert os.listdir(workdir / "served") == []
    # Free again: served, the lock taken shared and released.
    assert serve.main(serve_argv(run_config, path, out)) == 0
    assert json.loads(out.read_text())["results"]
