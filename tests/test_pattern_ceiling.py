"""bench/pattern_ceiling.py: its numpy scorers against direct computations,
and the whole table on a tiny noise-free benchmark dataset."""

import json
import os
import sys

import numpy as np
import pytest
from python_process import run_python

from tal_keras.data import benchmarks
from tal_keras.lattice import Lattice
from tests.test_benchmarks import timing_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import pattern_ceiling


def test_best_match_is_the_best_normalised_dot_product_minus_the_video_mean():
    rng = np.random.default_rng(0)
    features = rng.standard_normal((2, 7, 3))
    patterns = rng.standard_normal((4, 3))
    found = pattern_ceiling.centred_best_match(features, patterns)
    unit = patterns / np.linalg.norm(patterns, axis=1, keepdims=True)
    best = np.array(
        [[max(clip @ row for row in unit) for clip in video] for video in features]
    )
    np.testing.assert_allclose(found, best - best.mean(axis=1, keepdims=True))


def test_body_contrast_is_inside_mean_minus_outside_mean_of_the_best_class():
    lattice = Lattice(8, (2, 2))
    rng = np.random.default_rng(1)
    features = rng.standard_normal((2, 8, 3))
    bodies = rng.standard_normal((2, 3))
    found = pattern_ceiling.body_contrast(features, bodies, lattice)
    matches = features @ (bodies / np.linalg.norm(bodies, axis=1, keepdims=True)).T
    for cell, (start, end) in enumerate(zip(lattice.starts, lattice.ends)):
        inside = np.zeros(8, bool)
        inside[start : end + 1] = True
        outside = matches[:, ~inside].mean(axis=1) if (~inside).any() else 0.0
        expected = (matches[:, inside].mean(axis=1) - outside).max(axis=-1)
        np.testing.assert_allclose(found[:, cell], expected)


def test_flank_contrast_is_inside_mean_minus_the_flanks_mean_of_the_best_class():
    lattice = Lattice(8, (2, 2))
    rng = np.random.default_rng(2)
    features = rng.standard_normal((2, 8, 3))
    bodies = rng.standard_normal((2, 3))
    found = pattern_ceiling.body_contrast(features, bodies, lattice, 0.5)
    matches = features @ (bodies / np.linalg.norm(bodies, axis=1, keepdims=True)).T
    for cell, (start, end) in enumerate(zip(lattice.starts, lattice.ends)):
        width = int(np.ceil(0.5 * (end - start + 1)))
        flanks = [
            n
            for n in range(start - width, end + 1 + width)
            if 0 <= n < 8 and not start <= n <= end
        ]
        outside = matches[:, flanks].mean(axis=1) if flanks else 0.0
        expected = (matches[:, start : end + 1].mean(axis=1) - outside).max(axis=-1)
        np.testing.assert_allclose(found[:, cell], expected)


def tiny_boundary_run(tmp_path):
    """tmp_path/run: one epoch of the proposal network (N 16) on a tiny
    noise-free boundary benchmark dataset in tmp_path/tiny."""
    timing = timing_file(tmp_path / "timing.json")
    dataset = tmp_path / "tiny"
    benchmarks.generate(
        dataset, "boundary", noise=0.0, timing_path=timing, feature_dim=8
    )
    annotations, features, classes = benchmarks.dataset_paths(dataset)
    workdir = tmp_path / "run"
    run_python(
        [
            "train.py",
            f"--workdir={workdir}",
            f"--annotations={annotations}",
            f"--features={features}",
            f"--category_file={classes}",
            "--feature_dim=8",
            "--num_clips=16",
            "--scale_layers=4,2,2",
            "--hidden_size=8",
            "--kernel_size=3",
            "--num_conv_layers=1",
            "--batch_size=4",
            "--epochs=1",
            "--networks=proposal",
        ]
    )
    return workdir


@pytest.mark.slow
def test_table_on_a_tiny_noise_free_boundary_dataset(tmp_path):
    workdir = tiny_boundary_run(tmp_path)
    out = tmp_path / "ceiling.md"
    pattern_ceiling.main([str(workdir), "--out", str(out)])
    lines = out.read_text().splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header == [
        "run", "length prior", "true boundaries", "true bodies", "true both",
        "class-mean prototypes", "class-mean bodies", "true bodies (flanks)",
        "class-mean bodies (flanks)",
        "class means: min boundaries + bodies (flanks)", "true IoU",
    ]  # fmt: skip
    cells = [cell.strip() for cell in lines[2].strip("|").split("|")]
    values = {name: float(cell.split()[0]) for name, cell in zip(header[1:], cells[1:])}
    with open(workdir / "metrics.json") as stream:
        baseline = 100 * json.load(stream)["baseline"]["proposals"]["AUC"]
    # The prior alone is train.py's baseline; without noise the generator's
    # own onsets and offsets beat it, and nothing beats the true IoU.
    assert values["length prior"] == pytest.approx(baseline, abs=0.01)
    assert values["true boundaries"] > values["length prior"] + 5
    assert max(values.values()) == values["true IoU"]
