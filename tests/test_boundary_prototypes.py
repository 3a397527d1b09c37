"""The proposal network's optional boundary prototypes (--boundary_prototypes),
a departure from the report (docs/benchmarks.md): the layer's arithmetic,
where training starts its prototypes, and a round trip."""

import dataclasses

import keras
import numpy as np
from tiny_configs import ONE_LAYER, tiny_model

from tal_keras.flops import model_cost
from tal_keras.lattice import Lattice
from tal_keras.layers import BoundaryPrototypes
from tal_keras.layers.boundary_prototypes import (
    boundary_clips,
    class_mean_prototypes,
    clip_windows,
)
from tal_keras.layers.clip_encoder import standardize_per_video
from tal_keras.models import build_proposal_network


def _windows(features, context):
    """Reference: per-video standardised clips with `context` neighbours each
    side, edges repeated, written out clip by clip."""
    standardized = (features - features.mean(axis=1, keepdims=True)) / (
        features.std(axis=1, keepdims=True) + 1e-3
    )
    num_clips = features.shape[1]
    rows = []
    for clip in range(num_clips):
        parts = [
            standardized[:, min(max(clip + shift, 0), num_clips - 1)]
            for shift in range(-context, context + 1)
        ]
        rows.append(np.concatenate(parts, axis=-1))
    return np.stack(rows, axis=1)


def test_scores_each_proposal_by_the_best_prototype_at_its_first_and_last_clip(
    tmp_path,
):
    lattice = Lattice(16, (4, 2, 2))
    rng = np.random.default_rng(0)
    clips = rng.standard_normal((2, 16, 5)).astype("float32")
    layer = BoundaryPrototypes(16, (4, 2, 2), num_prototypes=3)
    layer(clips)
    layer.scales.assign(np.array([0.7, -0.4, 0.3], "float32"))
    output = keras.ops.convert_to_numpy(layer(clips))
    windows = _windows(clips.astype(np.float64), 1)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(clip_windows(standardize_per_video(clips), 1)),
        windows,
        atol=1e-5,
    )
    scores = []
    for prototypes, cells in (
        (layer.start_prototypes, lattice.starts),
        (layer.end_prototypes, lattice.ends),
    ):
        best = (windows @ keras.ops.convert_to_numpy(prototypes).T).max(axis=-1)
        best -= best.mean(axis=1, keepdims=True)
        scores.append(best[:, cells])
    starts, ends = scores
    expected = 0.7 * starts - 0.4 * ends + 0.3 * np.minimum(starts, ends)
    assert output.shape == (2, lattice.num_proposals)
    np.testing.assert_allclose(output, expected, atol=1e-4)
    model_input = keras.Input((16, 5))
    model = keras.Model(model_input, layer(model_input))
    model.save(tmp_path / "prototypes.keras")
    loaded = keras.saving.load_model(tmp_path / "prototypes.keras")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(clips)), output, atol=1e-6
    )
    assert loaded.layers[-1].get_config()["num_prototypes"] == 3


def test_boundary_clips_are_the_clips_holding_the_first_and_last_instant():
    starts, ends = boundary_clips(10.0, [[0.0, 10.0], [2.5, 5.0], [3.1, 3.2]], 4)
    # Clips of 2.5 s: [0, 2.5), [2.5, 5), [5, 7.5), [7.5, 10].
    np.testing.assert_array_equal(starts, [0, 1, 1])
    np.testing.assert_array_equal(ends, [3, 1, 1])


def test_class_means_find_each_class_pattern_at_its_starts_and_ends():
    rng = np.random.default_rng(1)
    num_clips, dim = 32, 6
    # Six orthonormal patterns: three start, three end.
    orthonormal = np.linalg.qr(rng.standard_normal((dim, dim)))[0].T
    start_patterns, end_patterns = orthonormal[:3], orthonormal[3:]
    clips, videos = [], []
    for _ in range(40):
        features = 0.3 * rng.standard_normal((num_clips, dim))
        label = int(rng.integers(2))  # class 2 never occurs
        start = int(rng.integers(1, 12))
        end = int(rng.integers(start + 4, num_clips - 1))
        features[start] += 4 * start_patterns[label]
        features[end] += 4 * end_patterns[label]
        clips.append(features)
        # 1 s clips: the segment covers clips start .. end.
        videos.append((np.array([[start + 0.2, end + 0.9]]), np.array([label])))
    start, end = class_mean_prototypes(
        np.stack(clips).astype("float32"), np.full(40, 32.0), videos, 3
    )
    assert start.shape == end.shape == (3, 3 * dim)
    np.testing.assert_allclose(np.linalg.norm(start[:2], axis=1), 1.0, atol=1e-6)
    assert not start[2].any() and not end[2].any()
    # The middle third of a window is the clip itself: it points at its own
    # class's pattern (per-video standardisation bends it a little), not at
    # the other class's.
    for prototypes, patterns in ((start, start_patterns), (end, end_patterns)):
        centres = prototypes[:2, dim : 2 * dim]
        cosines = (centres / np.linalg.norm(centres, axis=1, keepdims=True)) @ (
            patterns[:2] / np.linalg.norm(patterns[:2], axis=1, keepdims=True)
        ).T
        assert np.diag(cosines).min() > 0.8
        assert np.abs(cosines[[0, 1], [1, 0]]).max() < np.diag(cosines).min() - 0.3


def test_network_uses_them_and_flops_count_them():
    config = tiny_model(**ONE_LAYER, boundary_prototypes=True)
    network = build_proposal_network(config)
    assert network.get_layer("boundary_prototypes") is not None
    assert network.count_params() == model_cost(config)["proposal_params"]
    plain = model_cost(dataclasses.replace(config, boundary_prototypes=False))
    assert (
        model_cost(config)["proposal_params"] - plain["proposal_params"]
        == 2 * config.num_classes * 3 * config.feature_dim + 3
    )


def test_starts_scoring_only_proposals_whose_start_and_end_both_match():
    layer = BoundaryPrototypes(16, (4, 2, 2), num_prototypes=2)
    clips = np.random.default_rng(2).standard_normal((1, 16, 4)).astype("float32")
    layer(clips)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.scales), [0, 0, 1])
    # --boundary_prototype_scales sets where the network's scales start.
    config = tiny_model(
        **ONE_LAYER, boundary_prototypes=True, boundary_prototype_scales=(0.5, 0.5, 0)
    )
    scales = build_proposal_network(config).get_layer("boundary_prototypes").scales
    np.testing.assert_allclose(keras.ops.convert_to_numpy(scales), [0.5, 0.5, 0])


def test_classes_without_instances_take_no_part_in_the_best_match():
    rng = np.random.default_rng(3)
    clips = rng.standard_normal((2, 16, 4)).astype("float32")
    full = BoundaryPrototypes(16, (4, 2, 2), num_prototypes=3)
    full(clips)
    start, end = (rng.standard_normal((3, 12)).astype("float32") for _ in range(2))
    # Class 1 has no instances: its prototypes are zeros. With every window
    # matching the others negatively, a zero prototype would win the max.
    start[1] = end[1] = 0.0
    full.start_prototypes.assign(start)
    full.end_prototypes.assign(end)
    without = BoundaryPrototypes(16, (4, 2, 2), num_prototypes=2)
    without(clips)
    without.start_prototypes.assign(start[[0, 2]])
    without.end_prototypes.assign(end[[0, 2]])
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(full(clips)),
        keras.ops.convert_to_numpy(without(clips)),
        atol=1e-5,
    )
