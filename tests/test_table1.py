import json
import os
import sys

import pytest

from tal_keras.data import benchmarks
from tests.test_benchmarks import timing_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import table1


def test_row_geometry_scales_the_report_rows():
    assert table1.row_geometry(1) == [
        ("1", "S-2D-TAN", 256, (64, 32, 32), 9, 4),
        ("2", "2D-TAN", 128, (128,), 9, 4),
        ("3", "2D-TAN", 64, (64,), 9, 4),
        ("4", "2D-TAN", 64, (64,), 1, 1),
    ]
    assert table1.row_geometry(4, kernel_size=5, num_conv_layers=2) == [
        ("1", "S-2D-TAN", 64, (16, 8, 8), 5, 2),
        ("2", "2D-TAN", 32, (32,), 5, 2),
        ("3", "2D-TAN", 16, (16,), 5, 2),
        ("4", "2D-TAN", 16, (16,), 1, 1),
    ]
    with pytest.raises(ValueError, match="does not divide"):
        table1.row_geometry(3)


@pytest.mark.slow
def test_harness_on_a_tiny_dataset(tmp_path):
    timing = timing_file(tmp_path / "timing.json")
    dataset = tmp_path / "tiny"
    benchmarks.generate(dataset, "boundary", timing_path=timing, feature_dim=8)
    out = tmp_path / "table1.md"
    argv = ["--dataset", str(dataset), "--out", str(out), "--clips_divisor", "16"]
    argv += ["--kernel_size", "3", "--num_conv_layers", "1"]
    argv += ["--workdir_root", str(tmp_path / "runs")]
    argv += ["--", "--epochs=1", "--hidden_size=8", "--batch_size=4"]
    assert table1.main(argv) == 0
    lines = out.read_text().splitlines()
    header = [cell.strip() for cell in lines[2].strip("|").split("|")]
    assert header == [
        "row", "model", "N", "scales", "K", "L", "P",
        "AR@1", "AR@10", "AR@100", "AUC", "avg mAP",
        "params", "GFLOP/video", "time",
    ]  # fmt: skip
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[4:]]
    assert [row[:7] for row in rows] == [
        ["1", "S-2D-TAN", "16", "4,2,2", "3", "1", "72"],
        ["2", "2D-TAN", "8", "8", "3", "1", "36"],
        ["3", "2D-TAN", "4", "4", "3", "1", "10"],
        ["4", "2D-TAN", "4", "4", "1", "1", "10"],
        ["-", "content-blind baseline", "16", "4,2,2", "-", "-", "72"],
        ["-", "oracle (P_over = true max IoU)", "16", "4,2,2", "-", "-", "72"],
    ]
    for row in rows[:4]:
        values = [float(cell) for cell in row[7:12]]  # mAP too: both networks trained
        assert all(0 <= value <= 100 for value in values)
    # Each row trained in its own folder with its own geometry, and the AUC
    # in the table is the one its metrics.json holds.
    config = json.loads((tmp_path / "runs" / "row2" / "config.json").read_text())
    assert config["model"]["num_clips"] == 8 and config["model"]["map_mode"] == "2dtan"
    metrics = json.loads((tmp_path / "runs" / "row1" / "metrics.json").read_text())
    assert rows[0][10] == f"{100 * metrics['proposals']['AUC']:.2f}"
    assert rows[4][10] == f"{100 * metrics['baseline']['proposals']['AUC']:.2f}"
    # The oracle knows the ground truth: it beats the baseline.
    assert float(rows[5][10]) > float(rows[4][10])
    # Rows whose results exist are not trained again.
    (tmp_path / "runs" / "row1" / "train.log").unlink()
    assert table1.main(argv) == 0
    assert not (tmp_path / "runs" / "row1" / "train.log").exists()
    # --table_only re-renders rows trained by another command.
    assert table1.main([*argv[:-4], "--table_only", "--", "--epochs=2"]) == 0
    again = out.read_text().splitlines()
    assert again[4:9] == lines[4:9]  # the trained rows and the baseline
    assert again[9].split("|")[:13] == lines[9].split("|")[:13]  # oracle metrics
    assert not (tmp_path / "runs" / "row1" / "train.log").exists()
