"""bench/fit_diagnosis.py's numpy measures against direct computations."""

import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import fit_diagnosis


def test_length_prior_targets_is_the_mean_per_length():
    lengths = np.array([1, 1, 2, 3, 3, 3])
    targets = np.array([[0.0, 1.0, 0.5, 0.1, 0.2, 0.3], [1.0, 0.0, 0.7, 0.3, 0.2, 0.1]])
    prior = fit_diagnosis.length_prior_targets(targets, lengths)
    np.testing.assert_allclose(prior, [0.5, 0.5, 0.6, 0.2, 0.2, 0.2])


def test_overlap_bce_matches_the_formula():
    targets = np.array([[0.0, 0.25, 1.0]])
    scores = np.array([[0.1, 0.5, 0.8]])
    expected = -np.mean(
        [np.log(0.9), 0.25 * np.log(0.5) + 0.75 * np.log(0.5), np.log(0.8)]
    )
    np.testing.assert_allclose(fit_diagnosis.overlap_bce(targets, scores), expected)


def test_residual_correlation_ignores_the_length_prior():
    rng = np.random.default_rng(0)
    lengths = np.repeat(np.arange(4), 5)
    content = rng.normal(size=(30, 20))
    max_iou = lengths[None, :] * 0.2 + 0.05 * content
    # A pure length prior correlates with the IoU overall but not beyond it.
    prior_only = np.broadcast_to(lengths * 0.2, max_iou.shape)
    assert abs(fit_diagnosis.residual_correlation(prior_only, max_iou, lengths)) < 1e-9
    np.testing.assert_allclose(
        fit_diagnosis.residual_correlation(max_iou, max_iou, lengths), 1.0
    )
    noisy = max_iou + 0.05 * rng.normal(size=max_iou.shape)
    value = fit_diagnosis.residual_correlation(noisy, max_iou, lengths)
    assert 0.5 < value < 0.9  # equal signal and noise: about 1 / sqrt(2)
    short, middle, long = fit_diagnosis.length_thirds(lengths)
    assert short.sum() + middle.sum() + long.sum() == lengths.size
    assert lengths[short].max() < lengths[long].min()


def test_top1_iou_reads_the_iou_of_the_best_scored_proposal():
    max_iou = np.array([[0.1, 0.9, 0.5], [0.7, 0.2, 0.3]])
    scores = np.array([[0.2, 0.1, 0.3], [0.9, 0.0, 0.1]])
    np.testing.assert_allclose(fit_diagnosis.top1_iou(scores, max_iou), (0.5 + 0.7) / 2)
    np.testing.assert_allclose(
        fit_diagnosis.top1_iou(np.array([0.0, 1.0, 0.0]), max_iou), (0.9 + 0.2) / 2
    )
