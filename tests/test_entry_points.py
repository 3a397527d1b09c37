"""train.py and evaluate.py as a user runs them: flags, the run folder,
resuming a killed run, and the scoring mode."""

import json
import re
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
from python_process import REPO, python_environment, run_python
from tiny_configs import (
    TINY_SUBMISSION_MAP_AT_50,
    tiny_run_flagfile,
    write_tiny_submission,
)

import tal_keras.layers  # registers the layers the saved models use
import tal_keras.losses  # noqa: F401  (the losses of their compile config)
from tal_keras import metrics


def run(args, check=True, timeout=600):
    """Runs a script on the TensorFlow backend, whatever this process uses."""
    return run_python(args, backend="tensorflow", timeout=timeout, check=check)


def start_training(flagfile, stderr=subprocess.DEVNULL):
    """train.py with `flagfile` in the background on the TensorFlow backend
    (stdout discarded, stderr as text)."""
    return subprocess.Popen(
        [sys.executable, "train.py", f"--flagfile={flagfile}"],
        cwd=REPO,
        env=python_environment(backend="tensorflow"),
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        text=True,
    )


def wait_until(condition, what, seconds=300):
    """Polls `condition()` until it holds; AssertionError naming `what` after
    `seconds`."""
    deadline = time.time() + seconds
    while not condition():
        if time.time() > deadline:
            raise AssertionError(f"{what}: not in {seconds} s")
        time.sleep(0.05)


def tiny_flags(tmp_path, workdir, epochs=2):
    return tiny_run_flagfile(
        tmp_path, workdir, "--num_conv_layers=1", f"--epochs={epochs}"
    )


@pytest.mark.slow
def test_train_writes_a_complete_run_folder_and_evaluate_reproduces_it(tmp_path):
    flagfile = tiny_flags(tmp_path, "run")
    result = run(["train.py", f"--flagfile={flagfile}"])
    workdir = tmp_path / "run"
    assert "baseline (content-blind)" in result.stdout
    # Not a terminal: one line per epoch, no progress-bar frames.
    log = result.stdout + result.stderr
    assert "\r" not in log and "\x1b" not in log
    for network in ("proposal", "classifier"):
        assert len(re.findall(rf"^I {network} epoch \d/2: ", log, re.MULTILINE)) == 2
    config = json.loads((workdir / "config.json").read_text())
    assert config["model"]["num_classes"] == 20  # resolved from the data
    assert config["model"]["scale_layers"] == [4, 2, 2]
    for network in ("proposal", "classifier"):
        state = json.loads((workdir / network / "state.json").read_text())
        assert state["finished"] and state["epochs_done"] == 2
        assert [entry["epoch"] for entry in state["history"]] == [1, 2]
        keras.saving.load_model(workdir / network / "best.keras", compile=False)
    saved = json.loads((workdir / "metrics.json").read_text())
    assert set(saved["detection"]["mAP"]) == {
        f"{t:.2f}" for t in np.linspace(0.5, 0.95, 10)
    }
    assert set(saved["proposals"]) == {"AR@1", "AR@5", "AR@10", "AR@100", "AUC"}
    # The files on disk score to the metrics written next to them.
    ground_truth = tmp_path / "data" / "annotations.json"
    rescored = metrics.evaluate_proposals(ground_truth, workdir / "proposals.json")
    assert rescored["AUC"] == pytest.approx(saved["proposals"]["AUC"], abs=1e-12)
    proposals = json.loads((workdir / "proposals.json").read_text())["results"]
    assert all(len(entries) <= 100 for entries in proposals.values())
    assert (workdir / "ar_an.png").stat().st_size > 0

    video_id = next(iter(proposals))
    again = run(["evaluate.py", f"--flagfile={flagfile}", f"--show={video_id}"])
    assert json.loads((workdir / "metrics.json").read_text()) == saved
    assert (workdir / f"show_{video_id}.png").stat().st_size > 0
    assert "AUC" in again.stdout

    refused = run(["train.py", f"--flagfile={flagfile}"], check=False)
    assert refused.returncode != 0
    assert "--resume" in refused.stderr + refused.stdout


@pytest.mark.slow
def test_training_killed_mid_run_resumes_to_a_complete_folder(tmp_path):
    flagfile = tiny_flags(tmp_path, "killed", epochs=4)
    workdir = tmp_path / "killed"
    state_path = workdir / "proposal" / "state.json"
    process = start_training(flagfile)
    try:
        wait_until(
            lambda: (
                state_path.exists()
                and json.loads(state_path.read_text())["epochs_done"] >= 1
            ),
            "the first epoch",
        )
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    killed_state = json.loads(state_path.read_text())
    assert not killed_state["finished"]
    done = killed_state["epochs_done"]
    checkpoint = keras.saving.load_model(
        workdir / "proposal" / "checkpoints" / killed_state["checkpoint"]
    )
    steps_per_epoch = 7  # 28 training videos, batch 4
    assert int(checkpoint.optimizer.iterations.numpy()) == done * steps_per_epoch

    run(["train.py", f"--flagfile={flagfile}", "--resume"])
    state = json.loads(state_path.read_text())
    assert state["finished"] and state["epochs_done"] == 4
    # Each epoch once: the resumed run continued after the last saved epoch.
    assert [entry["epoch"] for entry in state["history"]] == [1, 2, 3, 4]
    final = keras.saving.load_model(
        workdir / "proposal" / "checkpoints" / state["checkpoint"]
    )
    assert int(final.optimizer.iterations.numpy()) == 4 * steps_per_epoch
    assert (workdir / "metrics.json").exists()
    assert not list((workdir / "proposal").rglob("*.tmp")) and not list(
        (workdir / "proposal").rglob(".saving-*")
    )


@pytest.mark.slow
def test_sigterm_ends_training_with_the_ctrl_c_line_and_a_consistent_folder(
    tmp_path,
):
    flagfile = tiny_flags(tmp_path, "stopped", epochs=50)
    workdir = tmp_path / "stopped"
    state_path = workdir / "proposal" / "state.json"
    process = start_training(flagfile, stderr=subprocess.PIPE)
    try:
        wait_until(state_path.exists, "the run's state.json")
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1] == (
        "interrupted: the run folder holds the last finished epoch; continue with "
        "--resume."
    )
    assert "Traceback" not in err
    state = json.loads(state_path.read_text())
    assert not state["finished"] and state["epochs_done"] >= 1
    left = [path.name for path in workdir.rglob("*") if path.name.startswith(".")]
    assert not [name for name in left if name.endswith(".tmp") or ".saving-" in name]


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("--scale_layers=4,2,3", "longer than num_clips"),
        ("--kernel_size=4", "odd"),
        ("--networks=proposal,detector", "networks"),
        ("--learning_rate=0", "learning_rate"),
        ("--scale_layers=4,x", "integers"),
    ],
)
def test_a_wrong_flag_fails_at_start_up_with_a_message(tmp_path, flag, message):
    flagfile = tiny_flags(tmp_path, "bad")
    result = run(["train.py", f"--flagfile={flagfile}", flag], check=False, timeout=120)
    assert result.returncode != 0
    assert message in result.stderr
    assert not (tmp_path / "bad").exists()


def write_json(path, payload):
    path.write_text(json.dumps(payload))
    return path


def test_scoring_mode_writes_the_official_metrics(tmp_path):
    ground_truth, predictions, _ = write_tiny_submission(tmp_path)
    out = tmp_path / "m.json"
    args = [
        "evaluate.py",
        f"--ground_truth={ground_truth}",
        f"--predictions={predictions}",
    ]
    run([*args, "--subset=validation", "--task=detection", f"--metrics_out={out}"])
    written = json.loads(out.read_text())
    expected = metrics.evaluate_detection(
        ground_truth, predictions, subset="validation"
    )
    assert set(written) == {"detection"}
    assert written["detection"]["mAP"] == pytest.approx(expected["mAP"], abs=1e-12)
    assert written["detection"]["mAP"]["0.50"] == pytest.approx(
        TINY_SUBMISSION_MAP_AT_50, abs=1e-12
    )

    run([*args, "--task=proposals", f"--metrics_out={out}"])
    written = json.loads(out.read_text())
    assert set(written["proposals"]) == {"AR@1", "AR@5", "AR@10", "AR@100", "AUC"}
    expected = metrics.evaluate_proposals(
        ground_truth, predictions, subset="validation"
    )
    assert written["proposals"]["AUC"] == pytest.approx(expected["AUC"], abs=1e-12)


def test_scoring_mode_rejects_a_label_unknown_to_the_ground_truth(tmp_path):
    ground_truth, _, results = write_tiny_submission(tmp_path)
    results["b"][0]["label"] = "Swim"
    predictions = write_json(tmp_path / "bad.json", {"results": results})
    result = run(
        [
            "evaluate.py",
            f"--ground_truth={ground_truth}",
            f"--predictions={predictions}",
        ],
        check=False,
    )
    assert result.returncode != 0
    assert "Swim" in result.stderr and "bad.json" in result.stderr
