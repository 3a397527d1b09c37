"""Fault suite, run level: train.py and evaluate.py run in-process (as
`main` with parsed flags) on a tiny synthetic dataset. Each case asserts the
exit (a one-line `error: ...` naming the file or folder, or 130 on Ctrl-C)
and what is left in the run folder."""

import dataclasses
import errno
import fcntl
import json
import logging
import os
import pathlib
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from tiny_configs import tiny_dataset

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import evaluate  # the entry points, run in-process
import train
from tal_keras.flags import FLAGS

TINY = [
    "--num_clips=16",
    "--scale_layers=4,2,2",
    "--feature_dim=8",
    "--hidden_size=16",
    "--kernel_size=3",
    "--num_conv_layers=1",
    "--batch_size=8",
    "--epochs=1",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_dataset(tmp_path_factory.mktemp("faults") / "data", num_videos=20)


def data_flags(data, **overrides):
    values = {
        "annotations": data.annotations_path,
        "features": data.features_path,
        "category_file": data.classes_path,
        **overrides,
    }
    return [f"--{name}={value}" for name, value in values.items()]


def main(module, args):
    """Runs `module.main` with `args` parsed as flags; returns its exit code
    (0, an int, or the `error: ...` text SystemExit carries)."""
    logger = logging.getLogger("tal_keras")
    saved = (list(logger.handlers), logger.propagate, logger.level)
    FLAGS.unparse_flags()
    FLAGS([f"{module.__name__}.py", *args])
    try:
        module.main([])
    except SystemExit as exit:
        return exit.code
    finally:
        FLAGS.unparse_flags()
        # `main` configures the "tal_keras" logger; module fixtures call it too.
        logger.handlers[:], logger.propagate, logger.level = saved
    return 0


def train_run(data, workdir, *extra, **overrides):
    return main(
        train, [f"--workdir={workdir}", *TINY, *data_flags(data, **overrides), *extra]
    )


def assert_one_line_error(code, *words):
    assert isinstance(code, str), code
    assert code.startswith("error: ") and "\n" not in code, code
    for word in words:
        assert str(word) in code, (word, code)


def listing(folder):
    return sorted(
        str(path.relative_to(folder)) for path in pathlib.Path(folder).rglob("*")
    )


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """A finished 1-epoch run of both networks, with its results."""
    workdir = tmp_path_factory.mktemp("trained") / "run"
    assert train_run(data, workdir) == 0
    return workdir


# --- ordinary user errors: one line, before any training -------------------


def garbage_features(tmp_path, kind):
    if kind == "missing path":
        return tmp_path / "nowhere"
    if kind == "garbage hdf5":
        path = tmp_path / "features.h5"
        path.write_bytes(b"this is not HDF5" * 100)
        return path
    if kind == "truncated hdf5":
        import h5py

        path = tmp_path / "features.h5"
        with h5py.File(path, "w") as handle:
            handle["x"] = np.ones((100, 8), np.float32)
        path.write_bytes(path.read_bytes()[:1000])
        return path
    directory = tmp_path / "garbage"  # every video unusable
    directory.mkdir()
    return directory


@pytest.mark.parametrize(
    "kind, words",
    [
        ("missing path", ["nowhere: features not found"]),
        ("garbage hdf5", ["features.h5: cannot open the HDF5 feature file"]),
        ("truncated hdf5", ["features.h5: cannot open the HDF5 feature file"]),
        (
            "every video unusable",
            ["garbage: every one of the 14 videos was skipped", "no features found"],
        ),
    ],
)
def test_unusable_features_are_one_line(data, tmp_path, kind, words):
    features = garbage_features(tmp_path, kind)
    code = train_run(data, tmp_path / "run", features=features)
    assert_one_line_error(code, *words)
    assert not (tmp_path / "run" / "config.json").exists()


def test_unknown_train_subset_is_one_line(data, tmp_path):
    code = train_run(data, tmp_path / "run", train_subset="train")
    assert_one_line_error(code, "no video of subset ['train']", "'training'")


def test_eval_subset_without_ground_truth_is_one_line(data, tmp_path):
    code = train_run(data, tmp_path / "run", eval_subset="testing")
    assert_one_line_error(code, "no ground-truth segment in subset 'testing'")
    assert not (tmp_path / "run" / "config.json").exists()


def test_training_subset_without_segments_is_one_line(data, tmp_path):
    with open(data.annotations_path) as stream:
        content = json.load(stream)
    for entry in content["database"].values():
        if entry["subset"] == "training":
            entry["annotations"] = []
    annotations = tmp_path / "empty.json"
    annotations.write_text(json.dumps(content))
    code = train_run(data, tmp_path / "run", annotations=annotations)
    assert_one_line_error(code, "subset 'training' has", "but no segment")


def test_workdir_that_cannot_be_written_is_one_line(data, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    code = train_run(data, blocker / "run")
    assert_one_line_error(code, f"{blocker / 'run'}: cannot use it as the run folder")
    read_only = tmp_path / "read_only"
    read_only.mkdir(mode=0o500)
    if os.access(read_only, os.W_OK):
        return  # root: permissions are not enforced
    assert_one_line_error(train_run(data, read_only), "cannot use it as the run folder")


def test_disk_full_while_saving_is_one_line_and_leaves_nothing_half_written(
    data, tmp_path, monkeypatch
):
    import keras

    def full(self, path, *args, **kwargs):
        with open(path, "wb") as stream:
            stream.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(keras.Model, "save", full)
    workdir = tmp_path / "run"
    code = train_run(data, workdir, "--networks=proposal")
    assert_one_line_error(code, "No space left on device")
    left = listing(workdir / "proposal")
    assert not [name for name in left if ".saving-" in name], left
    assert not (workdir / "proposal" / "state.json").exists()


# --- one run per folder ----------------------------------------------------


def test_a_second_run_in_a_used_folder_is_refused(data, tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    with open(workdir / ".lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("pid 4242 on host since then\n")
        held.flush()
        for module, extra in ((train, []), (train, ["--resume"])):
            code = main(module, [f"--workdir={workdir}", *TINY, *data_flags(data)])
            assert_one_line_error(code, f"{workdir} is in use by pid 4242")
        assert listing(workdir) == [".lock"]


@pytest.mark.slow
def test_a_killed_holder_does_not_leave_the_folder_stuck(data, tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import fcntl, sys, time\n"
                f"lock = open({str(workdir / '.lock')!r}, 'a+')\n"
                "fcntl.flock(lock, fcntl.LOCK_EX)\n"
                "print('held', flush=True)\n"
                "time.sleep(120)\n"
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        code = train_run(data, workdir, "--networks=proposal", "--noevaluate_at_end")
        assert_one_line_error(code, "is in use by")
    finally:
        holder.kill()  # kill -9: no cleanup runs in the holder
        holder.wait()
    assert train_run(data, workdir, "--networks=proposal", "--noevaluate_at_end") == 0
    state = json.loads((workdir / "proposal" / "state.json").read_text())
    assert state["finished"] and state["epochs_done"] == 1


# --- resume ----------------------------------------------------------------


@pytest.mark.slow
def test_classifier_epochs_train_the_classifier_longer_and_resume_by_them(
    data, tmp_path
):
    workdir = tmp_path / "run"
    args = ("--noevaluate_at_end", "--classifier_epochs=2")
    assert train_run(data, workdir, *args) == 0
    done = {
        network: json.loads((workdir / network / "state.json").read_text())[
            "epochs_done"
        ]
        for network in ("proposal", "classifier")
    }
    assert done == {"proposal": 1, "classifier": 2}
    code = train_run(data, workdir, "--resume", "--classifier_epochs=1")
    assert_one_line_error(
        code, "classifier network has trained 2 epochs; --classifier_epochs=1"
    )


@pytest.mark.slow
def test_resume_with_more_epochs_trains_them_and_fewer_is_refused(data, tmp_path):
    workdir = tmp_path / "run"
    args = ("--networks=proposal", "--noevaluate_at_end")
    assert train_run(data, workdir, *args) == 0
    assert train_run(data, workdir, *args, "--resume", "--epochs=2") == 0
    state = json.loads((workdir / "proposal" / "state.json").read_text())
    assert state["epochs_done"] == 2 and state["finished"]
    assert [entry["epoch"] for entry in state["history"]] == [1, 2]
    config = json.loads((workdir / "config.json").read_text())
    assert config["train"]["epochs"] == 2
    code = train_run(data, workdir, *args, "--resume", "--epochs=1")
    assert_one_line_error(
        code, "proposal network has trained 2 epochs; --epochs=1 is fewer"
    )
    assert json.loads((workdir / "config.json").read_text())["train"]["epochs"] == 2

    # A moved (or copied) run folder resumes where it is now.
    moved = tmp_path / "moved"
    shutil.copytree(workdir, moved)
    assert train_run(data, moved, *args, "--resume", "--epochs=3") == 0
    assert (
        json.loads((moved / "proposal" / "state.json").read_text())["epochs_done"] == 3
    )
    assert json.loads((moved / "config.json").read_text())["workdir"] == str(moved)

    # A truncated state.json, and one naming a deleted checkpoint.
    state_path = moved / "proposal" / "state.json"
    text = state_path.read_text()
    state_path.write_text(text[: len(text) // 2])
    code = train_run(data, moved, *args, "--resume", "--epochs=4")
    assert_one_line_error(code, f"{state_path}: cannot read the training state")
    state_path.write_text(text)
    checkpoint = moved / "proposal" / "checkpoints" / "epoch_0003.keras"
    checkpoint.unlink()
    code = train_run(data, moved, *args, "--resume", "--epochs=4")
    assert_one_line_error(code, f"{state_path} continues from {checkpoint}")


@pytest.mark.slow
def test_leftovers_of_a_killed_run_are_removed_on_the_next_start(data, tmp_path):
    workdir = tmp_path / "run"
    args = ("--networks=proposal", "--noevaluate_at_end")
    assert train_run(data, workdir, *args) == 0
    leftovers = [
        workdir / "proposal" / ".saving-abc123.keras",
        workdir / "proposal" / "checkpoints" / ".saving-def456.keras",
        workdir / ".metrics.json.xyz.tmp",
        workdir / "proposal" / ".state.json.q1w2.tmp",
    ]
    for path in leftovers:
        path.write_bytes(b"half")
    build = workdir / "cache" / ".training-0123.abcd"
    build.mkdir()
    (build / ".building").write_text("")
    assert train_run(data, workdir, *args, "--resume", "--epochs=2") == 0
    assert not [path for path in leftovers if path.exists()]
    assert not build.exists()


# --- evaluation: inputs first, results as a set ----------------------------


def result_files(workdir):
    return {
        name: (workdir / name).read_bytes()
        for name in ("proposals.json", "detections.json", "metrics.json", "ar_an.png")
    }


def evaluate_run(data, workdir, *extra):
    return main(evaluate, [f"--workdir={workdir}", *data_flags(data), *extra])


def test_bad_show_and_video_labels_fail_before_results_are_rewritten(
    data, trained, tmp_path
):
    before = result_files(trained)
    code = evaluate_run(data, trained, "--show=no_such_video")
    assert_one_line_error(code, "--show no_such_video: not a usable video")
    labels = tmp_path / "labels.json"
    labels.write_text("{not json")
    code = evaluate_run(data, trained, f"--video_labels={labels}")
    assert_one_line_error(code, f"{labels}: cannot read the video labels")
    assert result_files(trained) == before


def test_disk_full_while_evaluating_leaves_the_old_result_set(
    data, trained, monkeypatch
):
    from tal_keras import plots

    before = result_files(trained)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(plots, "ar_an_curve", full)
    assert_one_line_error(
        evaluate_run(data, trained),
        f"{trained / 'ar_an.png'}: cannot write it: No space left on device.",
    )
    assert result_files(trained) == before
    assert not [name for name in os.listdir(trained) if name.endswith(".tmp")]


def test_truncated_best_model_is_named(data, trained, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(trained, copy)
    best = copy / "classifier" / "best.keras"
    best.write_bytes(best.read_bytes()[:500])
    code = evaluate_run(data, copy)
    assert_one_line_error(code, f"{best}: cannot load the network")


def test_run_folder_carries_its_class_names_and_files_follow_the_umask(data, trained):
    names = (trained / "classes.txt").read_text().splitlines()
    assert names == pathlib.Path(data.classes_path).read_text().splitlines()
    # Created under pytest's umask (022 unless set otherwise).
    mask = os.umask(0o022)
    os.umask(mask)
    for path in ("config.json", "metrics.json", "proposal/best.keras"):
        assert (trained / path).stat().st_mode & 0o777 == 0o666 & ~mask, path


def test_export_refuses_class_names_in_another_order(data, trained, tmp_path):
    from export import onnx_export
    from tal_keras import run

    run_config = run.trained_config(run.RunFolder(str(trained)).read_config())
    names = (trained / "classes.txt").read_text().splitlines()
    assert onnx_export.run_class_names(run_config) == names
    reordered = tmp_path / "classes.txt"
    reordered.write_text("\n".join(reversed(names)) + "\n")
    with pytest.raises(ValueError, match="classes.txt: the run was trained with other"):
        onnx_export.run_class_names(run_config, str(reordered))
    # And evaluate.py with that category file refuses too.
    code = evaluate_run(data, trained, f"--category_file={reordered}")
    assert_one_line_error(code, "classes.txt: the run was trained with other class")


# --- labels, classes and what the summary says -----------------------------


def relabelled(data, folder, label_of):
    """A copy of the data's annotations with each segment's label mapped by
    `label_of(subset, label)`; returns its path."""
    content = json.loads(pathlib.Path(data.annotations_path).read_text())
    for entry in content["database"].values():
        for annotation in entry["annotations"]:
            annotation["label"] = label_of(entry["subset"], annotation["label"])
    path = folder / "annotations.json"
    path.write_text(json.dumps(content))
    return path


def padded(subset, label):
    return f" {label}  "


def test_labels_with_spaces_evaluate_export_and_score(data, trained, tmp_path, capsys):
    # A run trained on labels with surrounding spaces, no category file: its
    # classes.txt keeps them, and evaluate.py, the export and scoring agree.
    copy = tmp_path / "copy"
    shutil.copytree(trained, copy)
    annotations = relabelled(data, tmp_path, padded)
    names = [
        padded(None, name)
        for name in (trained / "classes.txt").read_text().split("\n")[:-1]
    ]
    (copy / "classes.txt").write_text("".join(f"{name}\n" for name in names))
    flags = [
        f"--workdir={copy}",
        *data_flags(data, annotations=annotations, category_file=""),
    ]
    assert main(evaluate, flags) == 0
    labels = {
        entry["label"]
        for entries in json.loads((copy / "detections.json").read_text())[
            "results"
        ].values()
        for entry in entries
    }
    assert labels <= set(names) and labels
    from export import onnx_export
    from tal_keras import run

    saved = run.RunFolder(str(copy)).read_config()
    run_config = dataclasses.replace(saved, workdir=str(copy))
    assert onnx_export.run_class_names(run_config) == names
    # Scoring mode takes the labels of the subset's ground truth only (as the
    # official code): the detections of those classes.
    content = json.loads(annotations.read_text())["database"]
    known = {
        annotation["label"]
        for entry in content.values()
        if entry["subset"] == "validation"
        for annotation in entry["annotations"]
    }
    results = json.loads((copy / "detections.json").read_text())["results"]
    kept = {
        video: [entry for entry in entries if entry["label"] in known]
        for video, entries in results.items()
    }
    predictions = tmp_path / "kept.json"
    predictions.write_text(json.dumps({"results": kept}))
    capsys.readouterr()
    scored = main(
        evaluate, [f"--ground_truth={annotations}", f"--predictions={predictions}"]
    )
    assert scored == 0
    assert "avg mAP" in capsys.readouterr().out


@pytest.mark.slow
def test_labels_with_spaces_train_to_the_end(data, tmp_path):
    annotations = relabelled(data, tmp_path, padded)
    workdir = tmp_path / "run"
    assert train_run(data, workdir, annotations=annotations, category_file="") == 0
    names = (workdir / "classes.txt").read_text().split("\n")[:-1]
    assert names and all(name.startswith(" ") and name.endswith("  ") for name in names)
    assert json.loads((workdir / "metrics.json").read_text())["detection"]


def test_a_class_without_training_instances_is_named(
    data, tmp_path, monkeypatch, capsys
):
    from tal_keras import training

    # Action 002 is annotated in validation only.
    annotations = relabelled(
        data,
        tmp_path,
        lambda subset, label: (
            "Action 000" if subset == "training" and label == "Action 002" else label
        ),
    )
    monkeypatch.setattr(training, "train_network", lambda *args, **kwargs: None)
    code = train_run(
        data,
        tmp_path / "run",
        "--noevaluate_at_end",
        "--networks=proposal",
        annotations=annotations,
    )
    assert code == 0
    lines = [
        line for line in capsys.readouterr().err.splitlines() if "no instance" in line
    ]
    expected = (
        f"W {annotations}: 1 of the 3 classes have no instance in the 14 usable "
        "videos of subset training ('Action 002'); the classifier never learns "
        "them and they count in the detection mAP wherever they are annotated"
    )
    assert lines == [expected]


def test_results_line_lists_only_the_files_written(data, trained, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(trained, copy)
    (copy / "classifier" / "best.keras").unlink()
    assert evaluate_run(data, copy) == 0
    line = [
        line for line in capsys.readouterr().out.splitlines() if "results in" in line
    ]
    assert line == [f"results in {copy}: proposals.json, metrics.json, ar_an.png"]
    assert not (copy / "detections.json").exists()


# --- signals and the lock ----------------------------------------------------


def terminate(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)


def interrupt(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("stop", [interrupt, terminate], ids=["ctrl_c", "sigterm"])
def test_ctrl_c_and_sigterm_end_train_in_one_line_and_exit_130(
    data, tmp_path, monkeypatch, capsys, stop
):
    from tal_keras import training

    previous = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(training, "train_network", stop)
    assert train_run(data, tmp_path / "run") == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        "interrupted: the run folder holds the last finished epoch; continue with "
        "--resume."
    )
    assert "Traceback" not in "\n".join(err)
    assert signal.getsignal(signal.SIGTERM) == previous
    assert not [name for name in listing(tmp_path / "run") if name.endswith(".tmp")]


def swallowed(stop):
    """`stop` inside a bare `except:`, as TensorFlow's and Keras's own code
    has in places: the signal handler's raise lands there and is lost."""
    try:
        stop()
        for _ in range(1000):  # bytecodes for the pending handler to run on
            pass
    except BaseException:  # noqa: BLE001, S110  (a bare except: is what is tested)
        pass


@pytest.mark.parametrize(
    "number", [signal.SIGINT, signal.SIGTERM], ids=["ctrl_c", "sigterm"]
)
def test_a_stop_whose_raise_is_swallowed_still_ends_training_after_the_epoch(
    data, tmp_path, monkeypatch, capsys, number
):
    from tal_keras import training

    save = training.save_model_atomic

    def save_then_stop(model, path):
        save(model, path)
        swallowed(lambda: os.kill(os.getpid(), number))

    monkeypatch.setattr(training, "save_model_atomic", save_then_stop)
    workdir = tmp_path / "run"
    assert train_run(data, workdir, "--epochs=3") == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "interrupted: the run folder holds the last finished epoch; continue with "
        "--resume."
    )
    state = json.loads((workdir / "proposal" / "state.json").read_text())
    assert state["epochs_done"] == 1 and not state["finished"]
    assert not (workdir / "classifier").exists()


def test_raise_if_stop_requested_only_after_a_stop_in_the_block():
    from tal_keras.errors import raise_if_stop_requested, stop_signals_as_interrupt

    with stop_signals_as_interrupt():
        raise_if_stop_requested()
        swallowed(lambda: os.kill(os.getpid(), signal.SIGTERM))
        with pytest.raises(KeyboardInterrupt):
            raise_if_stop_requested()
    with stop_signals_as_interrupt():
        raise_if_stop_requested()  # a new block starts with no stop


class CallsWhenCollected:
    def __init__(self, action):
        self.action = action

    def __del__(self):
        self.action()


def test_a_stop_raised_in_a_finalizer_is_not_reported_and_is_raised_again(
    monkeypatch,
):
    from tal_keras.errors import raise_if_stop_requested, stop_signals_as_interrupt

    reported = []
    monkeypatch.setattr(sys, "unraisablehook", reported.append)
    with stop_signals_as_interrupt():
        CallsWhenCollected(lambda: 1 / 0)  # collected at once
        assert [type(item.exc_value) for item in reported] == [ZeroDivisionError]
        CallsWhenCollected(lambda: os.kill(os.getpid(), signal.SIGTERM))
        with pytest.raises(KeyboardInterrupt):
            raise_if_stop_requested()
    assert len(reported) == 1
    assert sys.unraisablehook == reported.append


def test_sigterm_ends_evaluate_leaving_the_old_results(
    data, trained, monkeypatch, capsys
):
    from tal_keras import experiment

    before = result_files(trained)
    monkeypatch.setattr(experiment, "infer", terminate)
    assert evaluate_run(data, trained) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "interrupted: the previous results are left as they were."
    assert result_files(trained) == before


def test_a_shared_holder_keeps_train_out(data, tmp_path):
    from tal_keras import run

    workdir = tmp_path / "run"
    workdir.mkdir()
    with (
        run.RunFolder(str(workdir)).lock(shared=True),
        run.RunFolder(str(workdir)).lock(shared=True),
    ):
        code = train_run(data, workdir)
        assert_one_line_error(
            code, f"{workdir} is in use by an export or serve writing into it"
        )
    assert listing(workdir) == [".lock"]


def test_taking_the_lock_keeps_live_temporaries_and_removes_dead_ones(
    data, trained, tmp_path
):
    from tal_keras.atomic import atomic_path

    copy = tmp_path / "copy"
    shutil.copytree(trained, copy)
    dead = copy / ".s2dtan.onnx.killed.tmp"
    dead.write_bytes(b"")  # what a killed export leaves
    with atomic_path(copy / "s2dtan.onnx") as live:
        assert not dead.exists()  # the writer of a path removes its dead ones
        dead.write_bytes(b"")
        assert evaluate_run(data, copy) == 0
        assert os.path.exists(live) and not dead.exists()
        pathlib.Path(live).write_bytes(b"model")
    assert (copy / "s2dtan.onnx").read_bytes() == b"model"
    assert not [name for name in listing(copy) if name.endswith(".tmp")]
