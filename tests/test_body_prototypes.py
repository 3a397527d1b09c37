"""The proposal network's optional body prototypes (--body_prototypes), a
departure from the report (docs/benchmarks.md): the layer's arithmetic,
the class means it starts from, and where training starts it."""

import dataclasses
import types

import keras
import numpy as np
import pytest
import tensorflow as tf
from tiny_configs import ONE_LAYER, tiny_model

from tal_keras import experiment, training
from tal_keras.config import RunConfig, TrainConfig
from tal_keras.flops import model_cost
from tal_keras.lattice import Lattice
from tal_keras.layers import BodyPrototypes
from tal_keras.layers.body_prototypes import class_mean_bodies
from tal_keras.layers.boundary_prototypes import class_mean_prototypes
from tal_keras.models import build_proposal_network


def standardized_matches(clips, prototypes):
    """[batch, N, K]: each clip, standardised over its video per channel as
    the layer does, dotted with each prototype."""
    standardized = (clips - clips.mean(axis=1, keepdims=True)) / (
        clips.std(axis=1, keepdims=True) + 1e-3
    )
    return standardized @ prototypes.T


def test_scores_each_proposal_by_its_best_inside_minus_outside_match(tmp_path):
    lattice = Lattice(16, (4, 2, 2))
    rng = np.random.default_rng(0)
    clips = rng.standard_normal((2, 16, 5)).astype("float32")
    layer = BodyPrototypes(16, (4, 2, 2), num_prototypes=3)
    layer(clips)
    layer.scale.assign(0.6)
    output = keras.ops.convert_to_numpy(layer(clips))
    prototypes = keras.ops.convert_to_numpy(layer.prototypes)
    matches = standardized_matches(clips, prototypes)  # [2, 16, 3]
    expected = np.zeros((2, lattice.num_proposals))
    for cell, (start, end) in enumerate(zip(lattice.starts, lattice.ends)):
        inside = np.zeros(16, bool)
        inside[start : end + 1] = True
        outside = (
            matches[:, ~inside].mean(axis=1) if (~inside).any() else np.zeros((2, 3))
        )
        expected[:, cell] = 0.6 * (matches[:, inside].mean(axis=1) - outside).max(-1)
    np.testing.assert_allclose(output, expected, atol=1e-4)
    model_input = keras.Input((16, 5))
    model = keras.Model(model_input, layer(model_input))
    model.save(tmp_path / "bodies.keras")
    loaded = keras.saving.load_model(tmp_path / "bodies.keras")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(clips)), output, atol=1e-6
    )
    assert [weight.name for weight in layer.trainable_weights] == ["scale"]


def test_class_means_point_at_each_class_body():
    rng = np.random.default_rng(1)
    num_clips, dim = 32, 6
    bodies = np.linalg.qr(rng.standard_normal((dim, dim)))[0].T[:3]
    clips, videos = [], []
    for _ in range(30):
        features = 0.5 * rng.standard_normal((num_clips, dim))
        label = int(rng.integers(2))  # class 2 never occurs
        start = int(rng.integers(0, 12))
        end = int(rng.integers(start + 4, num_clips))
        features[start:end] += 2 * bodies[label]
        clips.append(features)
        # 1 s clips: clip centres start + 0.5 .. end - 0.5 lie inside.
        videos.append((np.array([[start, end]], float), np.array([label])))
    found = class_mean_bodies(np.stack(clips), np.full(30, 32.0), videos, 3)
    assert found.shape == (3, dim) and not found[2].any()
    np.testing.assert_allclose(np.linalg.norm(found[:2], axis=1), 1.0, atol=1e-6)
    cosines = found[:2] @ bodies[:2].T
    assert np.diag(cosines).min() > 0.8
    assert np.abs(cosines[[0, 1], [1, 0]]).max() < 0.5


def test_network_uses_them_and_flops_count_them():
    config = tiny_model(**ONE_LAYER, body_prototypes=True)
    network = build_proposal_network(config)
    assert network.get_layer("body_prototypes") is not None
    assert network.count_params() == model_cost(config)["proposal_params"]
    plain = model_cost(dataclasses.replace(config, body_prototypes=False))
    assert (
        model_cost(config)["proposal_params"] - plain["proposal_params"]
        == config.num_classes * config.feature_dim + 1
    )


def test_classes_without_instances_take_no_part_in_the_best_match():
    rng = np.random.default_rng(4)
    clips = rng.standard_normal((2, 16, 4)).astype("float32")
    bodies = rng.standard_normal((3, 4)).astype("float32")
    bodies[1] = 0.0  # class 1 has no instances; its contrast would be 0
    full = BodyPrototypes(16, (4, 2, 2), num_prototypes=3)
    full(clips)
    full.prototypes.assign(bodies)
    without = BodyPrototypes(16, (4, 2, 2), num_prototypes=2)
    without(clips)
    without.prototypes.assign(bodies[[0, 2]])
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(full(clips)),
        keras.ops.convert_to_numpy(without(clips)),
        atol=1e-5,
    )


def test_training_starts_both_prototype_layers_at_the_class_means(tmp_path):
    config = tiny_model(**ONE_LAYER, body_prototypes=True, boundary_prototypes=True)
    rng = np.random.default_rng(2)
    num_videos = 6
    clips = rng.standard_normal(
        (num_videos, config.num_clips, config.feature_dim), "float32"
    )
    max_iou = rng.uniform(size=(num_videos, config.lattice.num_proposals))
    videos = {
        f"v{index}": types.SimpleNamespace(
            segments=np.array([[1.0, 5.0]]), labels=np.array([index % 2])
        )
        for index in range(num_videos)
    }
    cache = types.SimpleNamespace(
        video_ids=list(videos), clips=clips, durations=np.full(num_videos, 8.0)
    )
    run_config = RunConfig(
        workdir=str(tmp_path),
        model=config,
        train=TrainConfig(epochs=1, batch_size=3, learning_rate=1e-2),
    )
    prototypes = experiment.initial_prototypes(
        run_config, types.SimpleNamespace(videos=videos), cache
    )
    pairs = [(video.segments, video.labels) for video in videos.values()]
    expected = {
        "body_prototypes": {
            "prototypes": class_mean_bodies(
                clips, cache.durations, pairs, config.num_classes
            )
        },
        "boundary_prototypes": dict(
            zip(
                ("start_prototypes", "end_prototypes"),
                class_mean_prototypes(
                    clips, cache.durations, pairs, config.num_classes
                ),
            )
        ),
    }
    assert sorted(prototypes) == sorted(expected)
    dataset = tf.data.Dataset.from_tensor_slices(
        (clips, max_iou.astype("float32"))
    ).batch(3)
    path = training.train_network(
        "proposal", run_config, dataset, verbose=0, prototypes=prototypes
    )
    network = keras.saving.load_model(path, compile=False)
    # The saved prototypes are where training started (they do not train);
    # only the scales do.
    for layer_name, weights in expected.items():
        layer = network.get_layer(layer_name)
        for weight_name, value in weights.items():
            np.testing.assert_array_equal(
                keras.ops.convert_to_numpy(getattr(layer, weight_name)), value
            )
            np.testing.assert_array_equal(prototypes[layer_name][weight_name], value)
    assert [w.name for w in network.get_layer("body_prototypes").trainable_weights] == [
        "scale"
    ]
    assert [
        w.name for w in network.get_layer("boundary_prototypes").trainable_weights
    ] == ["scales"]


def test_flanks_compare_each_proposal_with_its_surroundings_only():
    lattice = Lattice(16, (4, 2, 2))
    rng = np.random.default_rng(5)
    clips = rng.standard_normal((2, 16, 5)).astype("float32")
    layer = BodyPrototypes(16, (4, 2, 2), num_prototypes=3, flank_fraction=0.25)
    layer(clips)
    layer.scale.assign(0.7)
    output = keras.ops.convert_to_numpy(layer(clips))
    prototypes = keras.ops.convert_to_numpy(layer.prototypes)
    matches = standardized_matches(clips, prototypes)
    expected = np.zeros((2, lattice.num_proposals))
    for cell, (start, end) in enumerate(zip(lattice.starts, lattice.ends)):
        width = int(np.ceil(0.25 * (end - start + 1)))
        flanks = [
            n
            for n in range(start - width, end + 1 + width)
            if 0 <= n < 16 and not start <= n <= end
        ]
        outside = matches[:, flanks].mean(axis=1) if flanks else np.zeros((2, 3))
        inside = matches[:, start : end + 1].mean(axis=1)
        expected[:, cell] = 0.7 * (inside - outside).max(-1)
    np.testing.assert_allclose(output, expected, atol=1e-4)
    # A change far from a short proposal (clips 2-3, flanks 1 and 4) moves
    # its whole-video contrast, not its flank contrast.
    cell = int(np.flatnonzero((lattice.starts == 2) & (lattice.ends == 3))[0])
    shifted = matches.copy()
    shifted[:, 12:] += 1.0
    for contrast, moves in (
        (layer.inside_minus_flanks, False),
        (layer.inside_minus_outside, True),
    ):
        before, after = (
            keras.ops.convert_to_numpy(contrast(keras.ops.convert_to_tensor(m)))
            for m in (matches, shifted)
        )
        assert np.allclose(before[:, cell], after[:, cell], atol=1e-5) != moves
    config = layer.get_config()
    assert config["flank_fraction"] == 0.25
    assert BodyPrototypes.from_config(config).flank_fraction == 0.25


def test_flank_fraction_must_be_a_finite_number_at_least_zero():
    for bad in (-0.1, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="flank"):
            BodyPrototypes(16, (4, 2, 2), num_prototypes=3, flank_fraction=bad)
        with pytest.raises(ValueError, match="body_prototype_flank"):
            tiny_model(**ONE_LAYER, body_prototypes=True, body_prototype_flank=bad)


def test_network_builds_flanks_from_the_config_and_flops_count_them():
    config = tiny_model(**ONE_LAYER, body_prototypes=True, body_prototype_flank=0.25)
    layer = build_proposal_network(config).get_layer("body_prototypes")
    assert layer.flank_fraction == 0.25
    whole = model_cost(dataclasses.replace(config, body_prototype_flank=0.0))
    lattice = Lattice(config.num_clips, config.scale_layers)
    assert (
        model_cost(config)["proposal_flops_band"] - whole["proposal_flops_band"]
        == 3 * lattice.num_proposals * config.num_classes
    )
    assert model_cost(config)["proposal_params"] == whole["proposal_params"]
