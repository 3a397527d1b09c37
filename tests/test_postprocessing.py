"""Postprocessing settings: defined once (config.Postprocessing), held by
EvalConfig, carried by the ONNX metadata, each settable in train.py /
evaluate.py flags and in export.serve's arguments, and applied by one
function on both sides (detections.detections_with)."""

import dataclasses
import types

import numpy as np
import pytest

from export import serve
from tal_keras import detections, evaluation
from tal_keras.config import EvalConfig, Postprocessing
from tal_keras.flags import FLAGS
from tal_keras.lattice import Lattice

SETTINGS = [field.name for field in dataclasses.fields(Postprocessing)]


def test_eval_config_is_the_postprocessing_settings_plus_its_batch():
    names = [field.name for field in dataclasses.fields(EvalConfig)]
    assert names == [*SETTINGS, "batch_size"]
    changed = EvalConfig(top_pairs=7, soft_nms=True, soft_nms_sigma=0.3, batch_size=2)
    assert Postprocessing.from_eval_config(changed) == Postprocessing(
        top_pairs=7, soft_nms=True, soft_nms_sigma=0.3
    )


def test_every_setting_is_a_flag_of_both_sides():
    base = ["--model", "m.onnx", "--features", "f", "--durations", "d.csv"]
    for name in SETTINGS:
        assert name in FLAGS
        default = getattr(Postprocessing(), name)
        if isinstance(default, bool):
            args = serve.parse_args([*base, "--out", "o.json", f"--{name}"])
            assert getattr(args, name) is True
        else:
            value = type(default)(3)
            args = serve.parse_args([*base, "--out", "o.json", f"--{name}={value}"])
            assert getattr(args, name) == value
    args = serve.parse_args([*base, "--out", "o.json"])
    assert all(getattr(args, name) is None for name in SETTINGS)


def test_detections_with_applies_every_setting_soft_nms_sigma_included():
    lattice = Lattice(16, (4, 2, 2))
    rng = np.random.default_rng(0)
    overlap = rng.uniform(size=lattice.num_proposals)
    classes = rng.dirichlet(np.ones(3), size=lattice.num_proposals)
    names = ["a", "b", "c"]
    results = {}
    for sigma in (0.1, 0.9):
        settings = Postprocessing(
            nms_threshold=0.1,
            soft_nms=True,
            soft_nms_sigma=sigma,
            top_pairs=40,
            detections_per_video=30,
        )
        found = detections.detections_with(
            settings, lattice, 30.0, overlap, classes, names
        )
        expected = detections.video_detections(
            lattice,
            30.0,
            overlap,
            classes,
            names,
            top_m=40,
            nms_threshold=0.1,
            soft_nms=True,
            soft_nms_sigma=sigma,
            top_k=30,
        )
        assert found == expected and len(found) == 30
        results[sigma] = [entry["score"] for entry in found]
    assert results[0.1] != results[0.9]


def test_proposals_and_baseline_follow_proposal_soft_nms_sigma():
    lattice = Lattice(16, (4, 2, 2))
    overlap = np.random.default_rng(0).uniform(size=lattice.num_proposals)
    prior = np.where(lattice.lengths == 3, 0.9, 0.2)
    found = {}
    for sigma in (0.0, 0.5, 2.0):
        settings = EvalConfig(proposals_per_video=20, proposal_soft_nms_sigma=sigma)
        found[sigma] = detections.proposals_with(settings, lattice, 30.0, overlap)
        assert found[sigma] == detections.video_proposals(
            lattice, 30.0, overlap, top_k=20, soft_nms_sigma=sigma
        )
        run_config = types.SimpleNamespace(eval=settings)
        cache = types.SimpleNamespace(video_ids=["v"], durations=[30.0])
        baseline = evaluation.baseline_results(run_config, lattice, cache, prior)
        assert baseline["v"] == detections.sliding_window_proposals(
            lattice, 30.0, prior, top_k=20, soft_nms_sigma=sigma
        )
    assert len({str(entries) for entries in found.values()}) == 3


@pytest.mark.parametrize("sigma", [-0.1, float("inf"), float("nan")])
def test_proposal_soft_nms_sigma_must_be_finite_and_not_negative(sigma):
    with pytest.raises(ValueError, match="proposal_soft_nms_sigma"):
        Postprocessing(proposal_soft_nms_sigma=sigma)
