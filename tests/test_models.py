"""The builders: names and shapes, parameter counts, one training step,
`.keras` round trip, and the paper config."""

import dataclasses
import resource

import keras
import numpy as np
import pytest
from python_process import run_python

from tal_keras.config import ModelConfig
from tal_keras.flops import model_cost
from tal_keras.losses import ProposalClassLoss, ScaledOverlapLoss
from tal_keras.models import (
    build_classifier_network,
    build_inference_model,
    build_proposal_network,
)


def random_clip_features(config, batch=2, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(batch, config.num_clips, config.feature_dim)).astype(
        "float32"
    )


@pytest.mark.parametrize("map_mode", ["s2dtan", "2dtan"])
@pytest.mark.parametrize("proposal_features", ["pool", "conv"])
def test_networks_shapes_names_and_parameter_counts(
    small_config, map_mode, proposal_features
):
    config = dataclasses.replace(
        small_config, map_mode=map_mode, proposal_features=proposal_features
    )
    proposals = config.lattice.num_proposals
    proposal_network = build_proposal_network(config)
    classifier_network = build_classifier_network(config)
    assert [tensor.name for tensor in proposal_network.inputs] == ["clip_features"]
    assert [tensor.name for tensor in classifier_network.inputs] == ["clip_features"]
    assert proposal_network.output_names == ["overlap_scores"]
    assert classifier_network.output_names == ["class_scores"]
    clip_features = random_clip_features(config)
    overlap_scores = keras.ops.convert_to_numpy(proposal_network(clip_features))
    class_scores = keras.ops.convert_to_numpy(classifier_network(clip_features))
    assert overlap_scores.shape == (2, proposals)
    assert ((overlap_scores > 0) & (overlap_scores < 1)).all()
    assert class_scores.shape == (2, proposals, config.num_classes)
    np.testing.assert_allclose(class_scores.sum(-1), 1.0, rtol=1e-5)
    cost = model_cost(config)
    assert proposal_network.count_params() == cost["proposal_params"]
    assert classifier_network.count_params() == cost["classifier_params"]


def test_inference_model_runs_both_networks(small_config, tmp_path):
    proposal_network = build_proposal_network(small_config)
    classifier_network = build_classifier_network(small_config)
    model = build_inference_model(proposal_network, classifier_network)
    assert sorted(model.output_names) == ["class_scores", "overlap_scores"]
    clip_features = random_clip_features(small_config)
    outputs = model(clip_features)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(outputs["overlap_scores"]),
        keras.ops.convert_to_numpy(proposal_network(clip_features)),
    )
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(outputs["class_scores"]),
        keras.ops.convert_to_numpy(classifier_network(clip_features)),
    )
    model.save(tmp_path / "inference.keras")
    loaded = keras.saving.load_model(tmp_path / "inference.keras")
    loaded_outputs = loaded(clip_features)
    for name in ("overlap_scores", "class_scores"):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(loaded_outputs[name]),
            keras.ops.convert_to_numpy(outputs[name]),
        )


def test_inference_model_rejects_mismatched_networks(small_config):
    other = dataclasses.replace(small_config, scale_layers=(16,))
    with pytest.raises(ValueError, match="scale_layers"):
        build_inference_model(
            build_proposal_network(small_config), build_classifier_network(other)
        )
    other = dataclasses.replace(small_config, feature_dim=7)
    with pytest.raises(ValueError, match="feature_dim"):
        build_inference_model(
            build_proposal_network(small_config), build_classifier_network(other)
        )


@pytest.mark.parametrize(
    "network, proposal_features",
    [("proposal", "pool"), ("proposal", "conv"), ("classifier", "conv")],
)
def test_one_training_step_lowers_the_loss_and_moves_every_weight(
    small_config, network, proposal_features
):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    config = dataclasses.replace(small_config, proposal_features=proposal_features)
    clip_features = random_clip_features(config, batch=4)
    proposals = config.lattice.num_proposals
    if network == "proposal":
        model, loss = build_proposal_network(config), ScaledOverlapLoss()
        targets = rng.uniform(0, 1, size=(4, proposals)).astype("float32")
    else:
        model, loss = build_classifier_network(config), ProposalClassLoss()
        targets = rng.integers(-1, config.num_classes, size=(4, proposals))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss)
    before = [keras.ops.convert_to_numpy(w).copy() for w in model.trainable_weights]
    loss_before = float(loss(targets, model(clip_features)))
    model.train_on_batch(clip_features, targets)
    loss_after = float(loss(targets, model(clip_features)))
    assert loss_after < loss_before
    for weight, old in zip(model.trainable_weights, before):
        assert not np.array_equal(keras.ops.convert_to_numpy(weight), old), weight.path


def test_proposal_network_keras_file_round_trip(small_config, tmp_path):
    config = dataclasses.replace(
        small_config, map_mode="2dtan", proposal_features="conv"
    )
    model = build_proposal_network(config)
    model.save(tmp_path / "proposal.keras")
    loaded = keras.saving.load_model(tmp_path / "proposal.keras")
    clip_features = random_clip_features(config)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(loaded(clip_features)),
        keras.ops.convert_to_numpy(model(clip_features)),
    )
    sub_maps = loaded.get_layer("sub_map_network").get_config()
    assert sub_maps["map_mode"] == "2dtan"
    assert sub_maps["kernel_size"] == 3
    assert sub_maps["conv_implementation"] == "whole"
    assert loaded.get_layer("proposal_features").get_config()["mode"] == "conv"


@pytest.mark.slow
def test_paper_config_builds_with_the_paper_parameter_count():
    # The full forward pass takes minutes on 2 CPU cores (12.9 TFLOP); it was
    # run by hand, see the commit message. This checks building and one small
    # forward of the classifier on the paper shapes.
    config = ModelConfig()
    proposal_network = build_proposal_network(config)
    classifier_network = build_classifier_network(config)
    cost = model_cost(config)
    assert proposal_network.count_params() == cost["proposal_params"] == 86_380_033
    assert classifier_network.count_params() == cost["classifier_params"] == 1_282_760
    class_scores = classifier_network(random_clip_features(config, batch=1))
    assert tuple(class_scores.shape) == (1, 17472, 200)
    peak_rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    assert peak_rss_gib < 8, f"peak RSS {peak_rss_gib:.1f} GiB"


@pytest.mark.slow
def test_paper_config_inference_on_one_video_fits_in_memory():
    # The paper config (N 256, H 512, K 9, L 4, D 2304, 200 classes) with the
    # default band-limited map conv, one video, in a fresh process so that
    # its peak RSS is the forward pass's own.
    code = """
import os, resource
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
import numpy as np
from tal_keras.config import ModelConfig
from tal_keras.models import build_classifier_network, build_inference_model, build_proposal_network
config = ModelConfig()
model = build_inference_model(build_proposal_network(config), build_classifier_network(config))
features = np.random.default_rng(0).standard_normal((1, 256, 2304)).astype("float32")
outputs = model(features)
overlap, classes = np.asarray(outputs["overlap_scores"]), np.asarray(outputs["class_scores"])
assert overlap.shape == (1, 17472) and classes.shape == (1, 17472, 200), (overlap.shape, classes.shape)
assert np.isfinite(overlap).all() and ((overlap > 0) & (overlap < 1)).all()
np.testing.assert_allclose(classes.sum(-1), 1.0, atol=1e-4)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
"""
    result = run_python(["-c", code], timeout=1200)
    peak_rss_gib = float(result.stdout.split()[-1])
    assert peak_rss_gib < 24, f"peak RSS {peak_rss_gib:.1f} GiB"
