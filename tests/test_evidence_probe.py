"""bench/evidence_probe.py: the whole table on a tiny noise-free benchmark
dataset."""

import json
import os
import sys

import pytest

from tests.test_pattern_ceiling import tiny_boundary_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import evidence_probe


@pytest.mark.slow
def test_table_on_a_tiny_noise_free_boundary_dataset(tmp_path):
    workdir = tiny_boundary_run(tmp_path)
    out = tmp_path / "probe.md"
    evidence_probe.main(
        [str(workdir), "--out", str(out), "--epochs", "100", "--hidden", "16"]
    )
    lines = out.read_text().splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header == [
        "run", "length prior", "class means: linear", "class means: MLP",
        "generator: linear", "generator: MLP",
    ]  # fmt: skip
    cells = [cell.strip() for cell in lines[2].strip("|").split("|")]
    values = dict(zip(header[1:], map(float, cells[1:])))
    with open(workdir / "metrics.json") as stream:
        baseline = 100 * json.load(stream)["baseline"]["proposals"]["AUC"]
    # The prior alone is train.py's baseline; without noise the generator's
    # own onsets and offsets, fitted on the training videos, beat it.
    assert values["length prior"] == pytest.approx(baseline, abs=0.01)
    assert values["generator: MLP"] > values["length prior"] + 5
