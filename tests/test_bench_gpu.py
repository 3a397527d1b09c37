"""bench/bench_gpu.py at its tiny config on the CPU: the table it prints, its
groups in subprocesses without TensorFlow, and a stalled group cut off."""

import json

import pytest
from python_process import run_python


def run_bench(*args, timeout=900):
    # The script sets KERAS_BACKEND per group.
    return run_python(
        ["bench/bench_gpu.py", "--tiny", *args],
        changes={"KERAS_BACKEND": None},
        timeout=timeout,
        check=False,
    )


@pytest.mark.slow
def test_tiny_benchmark_times_every_row_without_tensorflow(tmp_path):
    out = tmp_path / "bench.json"
    result = run_bench(
        "--groups=keras-band-f32,keras-classifier-bf16", "--runs=1", f"--out={out}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads(out.read_text())
    assert [r["spec"]["name"] for r in saved["results"]] == [
        "keras-band-f32",
        "keras-classifier-bf16",
    ]
    for group in saved["results"]:
        assert group["problem"] is None, group["problem"]
        # Keras' own imports would pull TensorFlow in if it were needed.
        assert group["done"]["tensorflow_imported"] is False
        assert group["done"]["tflop_per_video"] > 0
        rows = group["rows"]
        assert [(row["run"], row["batch"]) for row in rows] == [
            ("forward", 1),
            ("forward", 4),
            ("train", 4),
        ]
        for row in rows:
            assert "error" not in row, row
            assert row["compile_s"] > 0 and row["ms_batch"] > 0
            assert row["xla_gib"] > 0
        assert len(rows[-1]["losses"]) == 2  # warm-up and one timed step
    table = result.stdout
    assert "| keras-band-f32 | proposal | band | f32 | train | 4 |" in table
    assert "| keras-classifier-bf16 | classifier | - | bf16 | forward | 1 |" in table
    assert "not run: " not in table  # no torch group asked for


def test_a_stalled_group_is_cut_off_and_the_rest_reported():
    result = run_bench(
        "--groups=keras-band-f32,torch-2dtan-f32", "--group_timeout_s=0.5", timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "3 row(s) missing" in result.stdout
    assert "killed after" in result.stdout
    assert "not run: torch-2dtan-f32: no --tan_lib" in result.stdout


def test_unknown_group_is_refused():
    result = run_bench("--groups=keras-band-f64", timeout=120)
    assert result.returncode != 0
    assert "unknown group 'keras-band-f64'" in result.stderr
