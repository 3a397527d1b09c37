"""bench/proposal_nms.py on a tiny trained run: its NMS column is what
train.py reported, its soft-NMS column what evaluate.py writes with
--proposal_soft_nms_sigma (the flag reaches the proposals and the baseline),
and nothing beats the oracle."""

import json
import os
import sys

import pytest
from python_process import run_python

from tal_keras.data import benchmarks
from tests.test_pattern_ceiling import tiny_boundary_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import proposal_nms


def table(path):
    """{(row name): [values]} of the printed table."""
    rows = {}
    for line in path.read_text().splitlines()[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[1]] = [float(cell) for cell in cells[2:]]
    return rows


def proposal_aucs(workdir):
    with open(workdir / "metrics.json") as stream:
        metrics = json.load(stream)
    return (
        100 * metrics["proposals"]["AUC"],
        100 * metrics["baseline"]["proposals"]["AUC"],
    )


@pytest.mark.slow
def test_sweep_matches_train_and_evaluate_on_a_tiny_run(tmp_path):
    workdir = tiny_boundary_run(tmp_path)
    out = tmp_path / "nms.md"
    proposal_nms.main(
        [str(workdir), "--sigmas", "0,0.3", "--oracle", "--out", str(out)]
    )
    assert out.read_text().splitlines()[0].split("|")[3:5] == [" NMS ", " sigma 0.3 "]
    rows = table(out)
    assert set(rows) == {"network", "content-blind baseline", "oracle"}
    network, baseline = proposal_aucs(workdir)
    assert rows["network"][0] == pytest.approx(network, abs=0.01)
    assert rows["content-blind baseline"][0] == pytest.approx(baseline, abs=0.01)
    for column in (0, 1):
        assert rows["oracle"][column] >= max(
            rows["network"][column], rows["content-blind baseline"][column]
        )
    annotations, features, classes = benchmarks.dataset_paths(tmp_path / "tiny")
    run_python(
        [
            "evaluate.py",
            f"--workdir={workdir}",
            f"--annotations={annotations}",
            f"--features={features}",
            f"--category_file={classes}",
            "--feature_dim=8",
            "--proposal_soft_nms_sigma=0.3",
        ]
    )
    network, baseline = proposal_aucs(workdir)
    assert rows["network"][1] == pytest.approx(network, abs=0.01)
    assert rows["content-blind baseline"][1] == pytest.approx(baseline, abs=0.01)
    # Soft-NMS lists other proposals than NMS, and the baseline changes too.
    assert rows["content-blind baseline"][0] != rows["content-blind baseline"][1]
    with pytest.raises(SystemExit):
        proposal_nms.main([str(workdir), "--sigmas", "-1"])
