"""tal-check on generated datasets, one per fault: the exit status, the
printed lines, the counts and the JSON report."""

import json
import sys

import numpy as np
import pytest
from python_process import run_python
from test_faults_data import write_annotations

import tal_keras
from tal_keras import check
from tal_keras.clips import FeatureTiming

WIDTH = 6
TIMING = FeatureTiming()  # 15 fps, stride 8, window 32


def features(duration, timing=TIMING, width=WIDTH, seed=0):
    steps = timing.num_steps(duration)
    return np.random.default_rng(seed).standard_normal((steps, width)).astype("f4")


def make_dataset(root, videos, arrays=None, timing=TIMING):
    """Writes root/gt.json and root/features/ID.npy.

    Args:
        videos: {id: (subset, duration, [(label, start, end)])}.
        arrays: {id: array to save, or None for no file}; the others get
            features of their duration at `timing` (the flags say TIMING).

    Returns:
        the tal-check flags of the dataset (N 16, scales 4,2,2, width 6).
    """
    arrays = arrays or {}
    annotations = write_annotations(root / "gt.json", videos)
    folder = root / "features"
    folder.mkdir()
    for seed, (video_id, (_, duration, _)) in enumerate(videos.items()):
        array = arrays.get(video_id, features(duration, timing, seed=seed))
        if array is not None and "/" not in video_id:
            np.save(folder / f"{video_id}.npy", array)
    return [
        *("--annotations", str(annotations), "--features", str(folder)),
        *("--feature_dim", str(WIDTH), "--num_clips", "16", "--scale_layers", "4,2,2"),
        *("--out", str(root / "out" / "check.json"), "--num_workers", "1"),
    ]


CLEAN = {
    "t1": ("training", 20.0, [("jump", 2.0, 8.0)]),
    "t2": ("training", 33.0, [("run", 5.0, 9.0), ("jump", 10.0, 30.0)]),
    "t3": ("training", 47.0, [("run", 1.0, 40.0)]),
    "v1": ("validation", 25.0, [("jump", 3.0, 6.0)]),
}


def run_check(argv, capsys):
    """(exit status, stdout lines, the JSON report or None)."""
    status = check.main(argv)
    lines = capsys.readouterr().out.splitlines()
    out = argv[argv.index("--out") + 1]
    try:
        with open(out) as stream:
            report = json.load(stream)
    except FileNotFoundError:
        report = None
    return status, lines, report


def test_clean_dataset(tmp_path, capsys):
    argv = make_dataset(tmp_path, CLEAN)
    status, lines, report = run_check(argv, capsys)
    assert status == 0, lines
    assert lines[1] == (
        "training: 3 videos, 3 usable, 0 skipped, 0 used with a feature length "
        "that does not fit the duration; 4 segments in the usable videos, 0 "
        "dropped as empty or reversed, 0 blocklisted videos"
    )
    assert lines[2].startswith("validation: 1 videos, 1 usable, 0 skipped")
    assert "classes: 2, every one with training instances" in lines
    assert any(
        line.startswith("feature timing fits --fps=15 --stride=8: ")
        and "4 of 4 videos fit, 0 are more than 10% off" in line
        for line in lines
    )
    assert lines[-2] == "train.py would train on this data."
    png = tmp_path / "out" / "check.png"
    assert lines[-1] == f"written: {tmp_path / 'out' / 'check.json'}, {png}"
    assert png.stat().st_size > 1000
    assert report["would_train"] and report["stops_training"] == []
    assert report["subsets"]["training"]["usable"] == 3
    assert report["subsets"]["training"]["instances_per_class"] == {
        "jump": 2,
        "run": 2,
    }
    assert report["feature_timing"]["fits"] and report["feature_timing"]["fit"] == 4
    assert [video["video_id"] for video in report["videos"]] == ["t1", "t2", "t3", "v1"]


def test_every_video_fault_is_skipped_or_warned_as_train_py_would(tmp_path, capsys):
    good = [("jump", 2.0, 8.0)]
    videos = {
        "good1": ("training", 20.0, good),
        "good2": ("training", 20.0, [("run", 2.0, 8.0)]),
        "missing": ("training", 20.0, good),
        "corrupt": ("training", 20.0, good),
        "nan": ("training", 20.0, good),
        "wide": ("training", 20.0, good),
        "far": ("training", 20.0, good),
        "off": ("training", 20.0, good),
        "segs": ("training", 20.0, [*good, ("run", 5.0, 5.0), ("run", 9.0, 3.0)]),
        "../escape": ("training", 20.0, good),
        "v1": ("validation", 20.0, [("only_val", 1.0, 4.0), ("jump", 5.0, 9.0)]),
    }
    nan = features(20.0)
    nan[3, 2] = np.nan
    arrays = {
        "missing": None,
        "nan": nan,
        "wide": features(20.0, width=WIDTH + 1),
        "far": np.ones((2000, WIDTH), np.float32),
        "off": np.ones((int(TIMING.num_steps(20.0) * 1.5), WIDTH), np.float32),
    }
    argv = make_dataset(tmp_path, videos, arrays)
    (tmp_path / "features" / "corrupt.npy").write_bytes(b"not an array at all")
    np.save(tmp_path / "escape.npy", features(20.0))  # where "../escape" points
    status, lines, report = run_check(argv, capsys)
    assert status == 0, lines  # train.py would train on the usable videos
    assert lines[1] == (
        "training: 10 videos, 4 usable, 6 skipped, 1 used with a feature length "
        "that does not fit the duration; 4 segments in the usable videos, 2 "
        "dropped as empty or reversed, 0 blocklisted videos"
    )
    training = report["subsets"]["training"]
    reasons = {item["video_id"]: item["reason"] for item in training["skipped"]}
    features_dir = tmp_path / "features"
    expected = {
        "missing": "no features found (looked for missing or v_missing)",
        "corrupt": "cannot read the feature file",
        "nan": "expected finite features, found 1 NaN/inf values",
        "wide": "expected feature width 6, found 7",
        "far": "more than 2 times apart",
        "../escape": "refused: the id holds '..'",
    }
    assert sorted(reasons) == sorted(expected)
    for video_id, words in expected.items():
        assert words in reasons[video_id], (video_id, reasons[video_id])
    assert reasons["wide"].startswith(f"{features_dir / 'wide.npy'}: video wide: ")
    # The first five skips are printed, one line each, and the count of the rest.
    skip_lines = [line for line in lines if line.startswith("  skip ")]
    assert len(skip_lines) == 5
    assert "  ... and 1 more (all in the JSON)" in lines
    assert [item["video_id"] for item in training["length_warnings"]] == ["off"]
    assert any(
        line.startswith(f"  warn {features_dir / 'off.npy'}: video off: 57 feature")
        and line.endswith("more than 10% apart, used anyway.")
        for line in lines
    )
    assert training["dropped_segments"] == 2 and training["segments"] == 4
    assert any(
        line.startswith(f"reader: {tmp_path / 'gt.json'}: 10 videos (training)")
        and "dropped 2 empty or inverted segments" in line
        for line in lines
    )
    assert report["classes"]["without_training_instance"] == [
        {"class": "only_val", "instances": {"training": 0, "validation": 1}}
    ]
    assert (
        "classes: 3, 1 without a training instance: only_val (0 in training, 1 "
        "in validation); the classifier never learns them, and the 1 of them in "
        "validation still count in its mAP"
    ) in lines
    timing = report["feature_timing"]
    # Shapes read: all but missing, corrupt and the refused id.
    assert timing["videos"] == 8 and timing["widths"] == {"6": 7, "7": 1}
    assert (timing["fit"], timing["off"], timing["far"]) == (6, 1, 1)
    assert timing["fits"] and "suggestion" not in timing
    assert lines[-2] == "train.py would train on this data, but read the lines above."
    # Shapes only: the NaN is not seen, everything else is.
    status, lines, report = run_check([*argv, "--shapes_only"], capsys)
    skipped = [item["video_id"] for item in report["subsets"]["training"]["skipped"]]
    assert status == 0 and sorted(skipped) == sorted(set(expected) - {"nan"})


def test_missing_feature_folder_stops_training(tmp_path, capsys):
    argv = make_dataset(tmp_path, CLEAN)
    missing = tmp_path / "elsewhere"
    argv[argv.index("--features") + 1] = str(missing)
    status, lines, report = run_check(argv, capsys)
    assert status == 1
    assert lines[-2].startswith(f"train.py would stop: {missing}: features not found")
    assert report["stops_training"] == [lines[-2].removeprefix("train.py would stop: ")]


def test_malformed_annotations_stop_training(tmp_path, capsys):
    argv = make_dataset(tmp_path, CLEAN)
    (tmp_path / "gt.json").write_text('{"database": {"t1": ')
    status, lines, report = run_check(argv, capsys)
    assert status == 1
    stops = [line for line in lines if line.startswith("train.py would stop: ")]
    assert len(stops) == 1
    assert stops[0].startswith(
        f"train.py would stop: {tmp_path / 'gt.json'}: not valid JSON"
    )
    assert report["stops_training"][0] == stops[0].removeprefix("train.py would stop: ")
    assert not report["would_train"] and report["subsets"] == {}


def test_wrong_stride_is_found_and_the_right_one_suggested(tmp_path, capsys):
    argv = make_dataset(tmp_path, CLEAN, timing=FeatureTiming(stride=32))
    status, lines, report = run_check(argv, capsys)
    assert status == 1  # every video 4 times too short: all skipped
    suggestion = report["feature_timing"]["suggestion"]
    assert suggestion["stride"] == 32 and suggestion["stride_fits"] == 4
    assert suggestion["fps"] == pytest.approx(3.75, rel=0.05)
    timing_line = next(line for line in lines if line.startswith("feature timing"))
    assert timing_line.startswith("feature timing does not fit --fps=15 --stride=8: ")
    assert (
        "0 of 4 videos fit" in timing_line and "4 more than 2 times off" in timing_line
    )
    assert "pass --stride=32 (4 of 4 videos fit)" in timing_line
    assert "classes: 2; no usable training video, so no training instance" in lines
    assert any(
        line.startswith(f"train.py would stop: {tmp_path / 'features'}: every one")
        and "of subset 'training' would be skipped" in line
        for line in lines
    )
    # With the suggested stride the same data passes.
    status, lines, report = run_check([*argv, "--stride", "32"], capsys)
    assert status == 0 and report["feature_timing"]["fits"]


def test_no_segment_in_training_stops_training(tmp_path, capsys):
    videos = {
        "t1": ("training", 20.0, []),
        "v1": ("validation", 20.0, [("jump", 1.0, 4.0)]),
    }
    status, lines, report = run_check(make_dataset(tmp_path, videos), capsys)
    assert status == 1
    expected = (
        f"{tmp_path / 'gt.json'}: subset 'training' has 1 videos but no segment: "
        "nothing to train on."
    )
    assert report["stops_training"] == [expected]
    assert lines[-2] == f"train.py would stop: {expected}"


def test_lattice_fit_of_segments(tmp_path, capsys):
    # N 16 on a 16 s video: one clip is 1 s.
    videos = {
        "t1": ("training", 16.0, [("a", 2.0, 6.0), ("a", 3.0, 3.5), ("a", 1.0, 6.0)]),
        "v1": ("validation", 16.0, [("a", 2.0, 6.0)]),
    }
    argv = make_dataset(tmp_path, videos)
    status, lines, report = run_check(argv, capsys)
    assert status == 0
    fit = report["subsets"]["training"]["lattice_fit"]
    # [2, 6] is a proposal; [3, 3.5] is half of clip 3; the best for [1, 6]
    # (5 clips: no such length at scales 4,2,2) is [0, 6), tIoU 5/6.
    assert fit["best_tiou"] == pytest.approx([1.0, 0.5, 0.8333], abs=1e-4)
    assert fit["reaching"] == pytest.approx({"0.5": 1.0, "0.7": 2 / 3, "0.9": 1 / 3})
    assert fit["shorter_than_a_clip"] == pytest.approx(1 / 3)
    assert fit["length_clips"] == pytest.approx([4.0, 0.5, 5.0])
    assert (
        "lattice (N 16, scales 4,2,2, 72 proposals): the best proposal of the 3 "
        "training segments reaches tIoU 0.5 for 100.0%, 0.7 for 66.7%, 0.9 for "
        "33.3%; median length 4.0 clips, 33.3% shorter than one clip (more "
        "--num_clips would resolve them)"
    ) in lines
    # The dense lattice holds every length.
    status, lines, report = run_check([*argv, "--scale_layers", "16"], capsys)
    dense = report["subsets"]["training"]["lattice_fit"]
    assert dense["reaching"]["0.9"] == pytest.approx(2 / 3)


def test_without_matplotlib_the_json_is_written(tmp_path, capsys, monkeypatch):
    argv = make_dataset(tmp_path, CLEAN)
    monkeypatch.setitem(sys.modules, "tal_keras.plots", None)  # import fails
    monkeypatch.delattr(tal_keras, "plots", raising=False)
    status, lines, report = run_check(argv, capsys)
    assert status == 0 and report["would_train"]
    assert lines[-1] == (
        f"written: {tmp_path / 'out' / 'check.json'} (the PNG of histograms "
        "needs matplotlib)"
    )
    assert not (tmp_path / "out" / "check.png").exists()


def test_flagfile_gives_the_data_flags_and_the_command_line_overrides(tmp_path, capsys):
    argv = make_dataset(tmp_path, CLEAN, timing=FeatureTiming(stride=16))
    flagfile = tmp_path / "run.flags"
    flagfile.write_text(
        "# a train.py flagfile\n--workdir=runs/x\n--feature_stride=16\n"
        "--num_clips=64\n--hidden_size=8\n--boundary_features\n--feature_dim=9\n"
    )
    status, lines, report = run_check([f"--flagfile={flagfile}", *argv], capsys)
    assert status == 0, lines
    assert report["timing"]["stride"] == 16  # the flagfile's, by its old name
    assert report["lattice"]["num_clips"] == 16  # the command line's
    assert report["feature_dim"] == WIDTH
    # Without it, stride 8: each video half as long as its duration, used
    # with a warning; train.py would train, on misplaced features.
    status, lines, report = run_check(argv, capsys)
    assert status == 0
    assert lines[-2] == "train.py would train on this data, but read the lines above."
    assert report["feature_timing"]["off"] == 4
    assert report["feature_timing"]["suggestion"]["stride"] == 16


def test_unwritable_out_is_a_usage_error_before_any_work(tmp_path, capsys):
    argv = make_dataset(tmp_path, CLEAN)
    blocker = tmp_path / "file"
    blocker.write_text("")
    argv[argv.index("--out") + 1] = str(blocker / "check.json")
    assert check.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"error: {blocker / 'check.json'}: cannot write")


def test_runs_where_only_the_serving_install_is(tmp_path):
    # What the serving extra lacks cannot be imported in this process.
    argv = make_dataset(tmp_path, CLEAN)
    code = (
        "import sys\n"
        "for name in ('tensorflow', 'keras', 'jax', 'matplotlib', 'absl'):\n"
        "    sys.modules[name] = None\n"
        "from tal_keras import check\n"
        f"sys.exit(check.main({argv!r}))\n"
    )
    result = run_python(["-c", code])
    written = f"written: {tmp_path / 'out' / 'check.json'} (the PNG of histograms"
    assert result.stdout.splitlines()[-2:] == [
        "train.py would train on this data.",
        f"{written} needs matplotlib)",
    ]
    result = run_python(["-m", "tal_keras.check", "--help"])
    assert "--scale_layers" in result.stdout and "--flagfile" in result.stdout
