"""The clip encoder's optional departures from the report: per-video
standardisation and temporal context (docs/benchmarks.md)."""

import keras
import numpy as np
import pytest
from layer_testing import run_layer_test
from tiny_configs import ONE_LAYER, tiny_model

from tal_keras.config import ModelConfig
from tal_keras.flops import model_cost
from tal_keras.layers import ClipEncoder
from tal_keras.models import build_classifier_network, build_proposal_network


def relu(values):
    return np.maximum(values, 0.0)


def features(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


def test_video_normalization_matches_numpy_and_removes_offsets_and_gains():
    encoder = ClipEncoder(hidden_size=5, normalization="video")
    clips = features(2, 16, 7)
    output = keras.ops.convert_to_numpy(encoder(clips))
    kernel, bias = (keras.ops.convert_to_numpy(w) for w in encoder.weights)
    standard = (clips - clips.mean(axis=1, keepdims=True)) / (
        clips.std(axis=1, keepdims=True) + 1e-3
    )
    np.testing.assert_allclose(output, relu(standard @ kernel + bias), atol=1e-5)
    # A per-video, per-channel offset and gain change nothing (up to the 1e-3).
    shifted = 4.0 * clips + features(2, 1, 7, seed=1) * 10
    moved = keras.ops.convert_to_numpy(encoder(shifted))
    np.testing.assert_allclose(moved, output, atol=2e-2)
    plain = ClipEncoder(hidden_size=5)
    plain(clips)
    plain.set_weights(encoder.get_weights())
    assert np.abs(keras.ops.convert_to_numpy(plain(shifted)) - output).max() > 1


def test_context_matches_numpy_and_sees_the_neighbours():
    # Seeded: with some random weights a ReLU can zero a changed clip's output.
    keras.utils.set_random_seed(0)
    encoder = ClipEncoder(hidden_size=4, context_kernel=3)
    clips = features(2, 10, 6)
    output = keras.ops.convert_to_numpy(encoder(clips))
    kernel, bias, conv_kernel, conv_bias = (
        keras.ops.convert_to_numpy(w) for w in encoder.weights
    )
    assert conv_kernel.shape == (3, 4, 4)
    sequence = relu(clips @ kernel + bias)
    padded = np.pad(sequence, ((0, 0), (1, 1), (0, 0)))
    conv = sum(padded[:, tap : tap + 10] @ conv_kernel[tap] for tap in range(3))
    np.testing.assert_allclose(output, sequence + relu(conv + conv_bias), atol=1e-5)
    # Changing clip 5 changes clips 4 to 6 only.
    changed = clips.copy()
    changed[:, 5] += 3.0
    difference = np.abs(keras.ops.convert_to_numpy(encoder(changed)) - output).max(-1)
    assert (difference[:, 4:7] > 0).all() and (
        difference[:, [0, 1, 2, 3, 7, 8, 9]] == 0
    ).all()


def test_round_trip_and_bad_arguments(tmp_path):
    run_layer_test(
        ClipEncoder,
        {"hidden_size": 4, "normalization": "video", "context_kernel": 5},
        features(2, 12, 3),
        tmp_path,
        expected_shapes=(2, 12, 4),
    )
    with pytest.raises(ValueError, match="normalization"):
        ClipEncoder(4, normalization="batch")
    with pytest.raises(ValueError, match="context_kernel"):
        ClipEncoder(4, context_kernel=2)
    with pytest.raises(ValueError, match="clip_context"):
        ModelConfig(clip_context=4)
    with pytest.raises(ValueError, match="clip_normalization"):
        ModelConfig(clip_normalization="layer")


def test_both_networks_use_the_options_and_flops_count_them():
    config = tiny_model(**ONE_LAYER, clip_normalization="video", clip_context=3)
    cost = model_cost(config)
    proposal = build_proposal_network(config)
    classifier = build_classifier_network(config)
    assert proposal.count_params() == cost["proposal_params"]
    assert classifier.count_params() == cost["classifier_params"]
    for network in (proposal, classifier):
        encoder = network.get_layer("clip_encoder")
        assert (encoder.normalization, encoder.context_kernel) == ("video", 3)
    plain = model_cost(ModelConfig(**{**config.__dict__, "clip_context": 0}))
    assert (
        cost["clip_encoder_flops"] - plain["clip_encoder_flops"] == 2 * 16 * 3 * 8 * 8
    )
