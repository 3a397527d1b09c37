"""bench/bench_compile.py, bench/bench_train_step.py and bench/xla_memory.py at
their tiny configs: the tables they print, every row timed and every loss
finite."""

import json
import math

import pytest
from python_process import run_python


@pytest.mark.slow
def test_compile_table_has_every_component_on_both_backends(tmp_path):
    out = tmp_path / "compile.json"
    result = run_python(
        ["bench/bench_compile.py", "--config=tiny", "--runs=1", f"--out={out}"],
        changes={"KERAS_BACKEND": None},
        timeout=900,
    )
    rows = json.loads(out.read_text())["rows"]
    components = ["encoder", "pool", "band_conv", "heads", "proposal", "classifier"]
    assert [(row["backend"], row["component"]) for row in rows] == [
        (backend, name) for backend in ("tensorflow", "jax") for name in components
    ]
    for row in rows:
        assert row["compile_s"] > 0 and row["step_s"] > 0
        # XLA's own compile time: TensorFlow's log line, JAX's Lowered.compile.
        assert row["xla_s"] > 0
        assert all(math.isfinite(loss) for loss in row["losses"])
    assert "| compile s | XLA s |" in result.stdout
    assert "| TF-XLA | band_conv |" in result.stdout
    assert "| JAX | proposal |" in result.stdout


@pytest.mark.slow
def test_train_step_table_times_the_keras_engines(tmp_path):
    out = tmp_path / "train_step.json"
    result = run_python(
        [
            "bench/bench_train_step.py",
            "--config=tiny",
            "--runs=2",
            "--engines=tensorflow,jax-frequency,tensorflow-taps",
            f"--out={out}",
        ],
        changes={"KERAS_BACKEND": None},
        timeout=900,
    )
    rows = json.loads(out.read_text())["rows"]
    assert [row["engine"] for row in rows] == [
        "tensorflow",
        "jax-frequency",
        "tensorflow-taps",
    ]
    for row in rows:
        assert row["step_s"] > 0 and row["peak_rss_gib"] >= row["rss_before_gib"] > 0
        assert len(row["losses"]) == 3  # the first step and two timed ones
        assert row["losses"][-1] < row["losses"][0]  # Adam lowers the loss
    assert "| tensorflow |" in result.stdout and "step / 2D-TAN's" in result.stdout


@pytest.mark.parametrize(
    "engines, messages",
    [
        ("torch-2dtan", ["torch-2dtan needs --tan_lib or --tan_git_dir"]),
        ("jax-blocks", ["unknown engine 'jax-blocks'", "-taps or -frequency"]),
    ],
)
def test_train_step_refuses_what_it_cannot_run(engines, messages):
    result = run_python(
        ["bench/bench_train_step.py", "--config=tiny", f"--engines={engines}"],
        check=False,
        timeout=120,
    )
    assert result.returncode != 0
    for message in messages:
        assert message in result.stderr


def test_xla_memory_counts_each_form_and_batch(tmp_path):
    out = tmp_path / "xla_memory.json"
    result = run_python(
        ["bench/xla_memory.py", "--config=tiny", "--batch_sizes=1,8", f"--out={out}"],
        changes={"KERAS_BACKEND": None},
        timeout=600,
    )
    rows = json.loads(out.read_text())["rows"]
    assert [(row["form"], row["batch"]) for row in rows] == [
        ("taps", 1),
        ("taps", 8),
        ("frequency", 1),
        ("frequency", 8),
    ]
    for small, large in (rows[:2], rows[2:]):
        assert 0 < small["temp_gib"] < large["temp_gib"]  # grows with the batch
        assert large["total_gib"] > large["temp_gib"]  # weights and batch added
    assert "| frequency | 8 |" in result.stdout
